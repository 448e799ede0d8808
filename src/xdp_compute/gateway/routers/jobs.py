"""Analysts' job routes: federated DP SQL (plain or encrypted delivery), job status, budgets."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from xdp_compute.errors import NotFound
from xdp_compute.gateway import models as m
from xdp_compute.gateway.deps import Analyst, CurrentPrincipal, Svc, body_openapi, json_body
from xdp_compute.gateway.query_service import QueryService

router = APIRouter(prefix="/v1", tags=["jobs"])


class QueryBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)  # "1" and true are not numbers
    sql: str = Field(..., max_length=20000)
    epsilon: float
    delta: float | None = None
    dry_run: bool = False
    idempotency_key: str | None = Field(None, min_length=1, max_length=200)
    level: float = 0.95
    public_key: dict[str, Any] | None = Field(None, description="Paillier public key {scheme, n, bits}: encrypted delivery")


def service(svc: Svc) -> QueryService:
    return QueryService(svc)


@router.post("/queries", openapi_extra=body_openapi(QueryBody))
async def submit_query(who: Analyst, svc: Svc, body: Annotated[QueryBody, Depends(json_body(QueryBody))]
                       ) -> JSONResponse:
    """Run a federated DP SQL query; waits for the answer (or 202 when approval is required)."""
    status, out = await service(svc).submit(who, body.model_dump())
    return JSONResponse(out, status_code=status)


class ScoreBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)  # "1" and true are not numbers
    dataset: str = Field(..., max_length=64)
    features: list[str] = Field(..., min_length=1, max_length=64)
    where: str | None = Field(None, max_length=10000)
    group_by: list[str] | None = Field(None, max_length=4)
    epsilon: float
    delta: float | None = None
    level: float = 0.95
    dry_run: bool = False
    idempotency_key: str | None = Field(None, min_length=1, max_length=200)
    # The first version's secret-weights fields: accepted only to be refused with the reason.
    score_bound: float | None = Field(None, description="not offered: refused (see POST /v1/scores)")
    context: str | None = Field(None, description="not offered: refused")
    weights: str | None = Field(None, description="not offered: refused")


@router.post("/scores", openapi_extra=body_openapi(ScoreBody))
async def submit_score(who: Analyst, svc: Svc, body: Annotated[ScoreBody, Depends(json_body(ScoreBody))]
                       ) -> JSONResponse:
    """DP per-group feature sums for a linear score the analyst applies itself (the weights never
    leave the analyst); one federated query through the same release gate as POST /v1/queries."""
    from xdp_compute.gateway.score_service import submit_score as run

    status, out = await run(service(svc), who, body.model_dump())
    return JSONResponse(out, status_code=status)


class TrainBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)  # "1" and true are not numbers
    dataset: str = Field(..., max_length=64)
    model: str = "logreg"
    features: list[str] = Field(..., max_length=256)
    label: str
    rounds: int = 10
    local_epochs: int = 1
    batch_size: int = 64
    lr: float | None = None
    target_epsilon: float = 3.0
    delta: float | None = None
    max_grad_norm: float | None = None
    where: str | None = None
    hidden: list[int] | None = None
    idempotency_key: str | None = Field(None, min_length=1, max_length=200)


@router.post("/trainings", openapi_extra=body_openapi(TrainBody))
async def submit_training(who: Analyst, svc: Svc, body: Annotated[TrainBody, Depends(json_body(TrainBody))]
                          ) -> JSONResponse:
    """Start DP federated training; poll GET /v1/jobs/{id} for progress and, once released, the model."""
    from xdp_compute.gateway.training_service import submit_training as run

    status, out = await run(svc, service(svc), who, body.model_dump())
    return JSONResponse(out, status_code=status)


@router.get("/jobs/{job_id}")
def get_job(job_id: str, svc: Svc, who: CurrentPrincipal) -> dict[str, Any]:
    """A job's status and, once released, its delivery with a fresh receipt (owner only)."""
    with svc.store.read() as s:
        job = s.get(m.Job, job_id)
    if job is None or job.principal_id != who.id:
        raise NotFound(f"no job {job_id!r}")
    out: dict[str, Any] = {"job_id": job.id, "status": job.status, "operation": job.kind,
                           "created_at": job.created_at, "cost": json.loads(job.cost_json)}
    if job.status == "released" and job.result_json:
        # An encrypted answer not yet fetched (e.g. after approval) is handed over once, then only
        # its digest remains at the gateway.
        full = svc.undelivered.pop(job.id, None)
        out.update(full or json.loads(job.result_json))
        out["receipt"] = svc.release_log.receipt(out["log_index"])
    if job.error_json:
        out["error"] = json.loads(job.error_json)
    progress = svc.progress.get(job.id)
    if progress is not None:
        out["progress"] = dict(progress)
    return out


@router.get("/budget/{dataset}")
async def budget(dataset: str, svc: Svc, who: Analyst) -> dict[str, Any]:
    """Budget left on each node holding ``dataset``, and the analyst's own budget."""
    parts = await asyncio.to_thread(service(svc).lookup, dataset)
    return {"dataset": parts[0]["spec"]["name"],
            "nodes": [{"node": p["node"], "epsilon_budget": p["eps_budget"],
                       "epsilon_spent": p["eps_spent"], "epsilon_reserved": p["eps_reserved"],
                       "epsilon_left": p["eps_budget"] - p["eps_spent"] - p["eps_reserved"],
                       "delta_budget": p["delta_budget"], "delta_spent": p["delta_spent"]} for p in parts],
            "analyst": svc.store.analyst_budget(who.id)}
