"""Analysts' job routes: federated DP SQL (plain or encrypted delivery), job status, budgets."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import and_, or_, select

from xdp_compute.contract import api as A
from xdp_compute.errors import BadRequest, NotFound
from xdp_compute.gateway import models as m
from xdp_compute.gateway.deps import Analyst, CurrentPrincipal, Svc, body_openapi, json_body
from xdp_compute.gateway.openapi import operation_id, problems
from xdp_compute.gateway.query_service import QueryService

router = APIRouter(prefix="/v1", tags=["jobs"], generate_unique_id_function=operation_id)


# Answers of the three submission routes: released (200), a dry run's plan (200) or waiting (202).
SUBMIT_ANSWERS: dict[int | str, dict[str, Any]] = {
    200: {"model": A.Delivery | A.DryRun, "description": "Released (with its receipt), or a dry run's plan"},
    202: {"model": A.Accepted, "description": "Accepted: waits for the holders' approval or runs in the background"},
    **problems(400, 403, 404, 409, 413, 503),
}


class QueryBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"examples": [
        {"sql": "SELECT district, COUNT(*), AVG(age) FROM patients GROUP BY district", "epsilon": 1.0},
        {"sql": "SELECT COUNT(*) FROM patients WHERE age >= 65", "epsilon": 0.5, "delta": 1e-6, "dry_run": True,
         "idempotency_key": "report-2026-q4"}]})  # "1" and true are not numbers (strict)
    sql: str = Field(..., max_length=20000)
    epsilon: float
    delta: float | None = None
    dry_run: bool = False
    idempotency_key: str | None = Field(None, min_length=1, max_length=200)
    level: float = 0.95
    public_key: dict[str, Any] | None = Field(None, description="Paillier public key {scheme, n, bits}: encrypted delivery")
    subscription: str | None = Field(None, min_length=1, max_length=64,
                                     description="Run under this approved subscription to a query product: "
                                                 "refused past its allowance, metered at release (issue #17)")


def service(svc: Svc) -> QueryService:
    return QueryService(svc)


@router.post("/queries", openapi_extra=body_openapi(QueryBody), response_model=None, responses=SUBMIT_ANSWERS)
async def submit_query(who: Analyst, svc: Svc, body: Annotated[QueryBody, Depends(json_body(QueryBody))]
                       ) -> JSONResponse:
    """Run a federated DP SQL query; waits for the answer (or 202 when approval is required)."""
    status, out = await service(svc).submit(who, body.model_dump())
    return JSONResponse(out, status_code=status)


class ScoreBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"examples": [
        {"dataset": "patients", "features": ["age", "income"], "group_by": ["district"], "epsilon": 1.0}]})
    dataset: str = Field(..., max_length=64)
    features: list[str] = Field(..., min_length=1, max_length=64)
    where: str | None = Field(None, max_length=10000)
    group_by: list[str] | None = Field(None, max_length=4)
    epsilon: float
    delta: float | None = None
    level: float = 0.95
    dry_run: bool = False
    idempotency_key: str | None = Field(None, min_length=1, max_length=200)
    subscription: str | None = Field(None, min_length=1, max_length=64,
                                     description="Run under this approved subscription to a scoring product: "
                                                 "metered per row of the plan's declared size (issue #17)")
    # The first version's secret-weights fields: accepted only to be refused with the reason.
    score_bound: float | None = Field(None, description="not offered: refused (see POST /v1/scores)")
    context: str | None = Field(None, description="not offered: refused")
    weights: str | None = Field(None, description="not offered: refused")


@router.post("/scores", openapi_extra=body_openapi(ScoreBody), response_model=None, responses=SUBMIT_ANSWERS)
async def submit_score(who: Analyst, svc: Svc, body: Annotated[ScoreBody, Depends(json_body(ScoreBody))]
                       ) -> JSONResponse:
    """DP per-group feature sums for a linear score the analyst applies itself (the weights never
    leave the analyst); one federated query through the same release gate as POST /v1/queries."""
    from xdp_compute.gateway.score_service import submit_score as run

    status, out = await run(service(svc), who, body.model_dump())
    return JSONResponse(out, status_code=status)


class TrainBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"examples": [
        {"dataset": "patients", "model": "logreg", "features": ["age", "income"], "label": "readmitted",
         "rounds": 10, "target_epsilon": 3.0}]})
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
    subscription: str | None = Field(None, min_length=1, max_length=64,
                                     description="Run under this approved subscription to a model product: "
                                                 "one training is one unit, metered at release (issue #17)")


@router.post("/trainings", openapi_extra=body_openapi(TrainBody), response_model=None, responses=SUBMIT_ANSWERS)
async def submit_training(who: Analyst, svc: Svc, body: Annotated[TrainBody, Depends(json_body(TrainBody))]
                          ) -> JSONResponse:
    """Start DP federated training; poll GET /v1/jobs/{id} for progress and, once released, the model."""
    from xdp_compute.gateway.training_service import submit_training as run

    status, out = await run(svc, service(svc), who, body.model_dump())
    return JSONResponse(out, status_code=status)


MAX_JOBS_PAGE = 500


@router.get("/jobs", response_model=A.JobPage, responses=problems(400))
def list_jobs(svc: Svc, who: CurrentPrincipal,
              status: Annotated[str | None, Query(description="Only jobs in this status",
                                                  pattern="^(" + "|".join(A.JOB_STATUSES) + ")$")] = None,
              kind: Annotated[str | None, Query(max_length=32, description="Only jobs of this operation "
                                                "(e.g. query, he_query, training)")] = None,
              limit: Annotated[int, Query(ge=1, le=MAX_JOBS_PAGE)] = 50,
              before: Annotated[str | None, Query(max_length=64, description="Cursor: the `next_before` of "
                                                  "the previous page (a job id)")] = None) -> dict[str, Any]:
    """The caller's own jobs, newest first: status, operation, cost and times (never a result).

    Every role sees only the jobs it submitted: jobs are submitted by analysts; holders see jobs
    on their datasets under ``/v1/approvals`` and auditors every decision under ``/v1/audit/entries``.
    """
    with svc.store.read() as s:
        q = select(m.Job).where(m.Job.principal_id == who.id)
        if before is not None:
            cursor = s.get(m.Job, before)
            if cursor is None or cursor.principal_id != who.id:
                raise BadRequest(f"before: no job {before!r} of yours to page from")
            q = q.where(or_(m.Job.created_at < cursor.created_at,
                            and_(m.Job.created_at == cursor.created_at, m.Job.id < cursor.id)))
        if status is not None:
            q = q.where(m.Job.status == status)
        if kind is not None:
            q = q.where(m.Job.kind == kind)
        rows = s.scalars(q.order_by(m.Job.created_at.desc(), m.Job.id.desc()).limit(limit + 1)).all()
    page = [{"job_id": j.id, "status": j.status, "operation": j.kind, "created_at": j.created_at,
             "updated_at": j.updated_at, "cost": json.loads(j.cost_json)} for j in rows[:limit]]
    return {"jobs": page, "next_before": page[-1]["job_id"] if len(rows) > limit else None}


@router.get("/jobs/{job_id}", response_model=A.Job, responses=problems(404, 503))
def get_job(job_id: str, svc: Svc, who: CurrentPrincipal) -> dict[str, Any]:
    """A job's status and, once released, its delivery with a fresh receipt (owner only)."""
    with svc.store.read() as s:
        job = s.get(m.Job, job_id)
        if job is None or job.principal_id != who.id:
            raise NotFound(f"no job {job_id!r}")
        # Who must still decide (the dataset's owner, whom the catalog names anyway).
        awaiting = list(s.scalars(select(m.Principal.name).join(m.Approval, m.Approval.holder_id == m.Principal.id)
                                  .where(m.Approval.job_id == job.id, m.Approval.decision == "pending")
                                  .order_by(m.Principal.name))) if job.status == "awaiting_approval" else []
    out: dict[str, Any] = {"job_id": job.id, "status": job.status, "operation": job.kind,
                           "created_at": job.created_at, "cost": json.loads(job.cost_json)}
    if awaiting:
        out["awaiting"] = awaiting
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


@router.get("/budget/{dataset}", response_model=A.Budget, responses=problems(404))
async def budget(dataset: str, svc: Svc, who: Analyst) -> dict[str, Any]:
    """Budget left on each node holding ``dataset``, and the analyst's own budget."""
    parts = await asyncio.to_thread(service(svc).lookup, dataset)
    return {"dataset": parts[0]["spec"]["name"],
            "nodes": [{"node": p["node"], "epsilon_budget": p["eps_budget"],
                       "epsilon_spent": p["eps_spent"], "epsilon_reserved": p["eps_reserved"],
                       "epsilon_left": p["eps_budget"] - p["eps_spent"] - p["eps_reserved"],
                       "delta_budget": p["delta_budget"], "delta_spent": p["delta_spent"]} for p in parts],
            # Before its first job the analyst has the gateway's default budget, nothing spent.
            "analyst": svc.store.analyst_budget(who.id) or {
                "epsilon_budget": svc.settings.analyst_epsilon_budget, "epsilon_spent": 0.0, "epsilon_reserved": 0.0,
                "delta_budget": svc.settings.analyst_delta_budget, "delta_spent": 0.0}}
