"""Analyst pages: the catalog with mock previews, budgets, jobs and released results with intervals.

Each page calls the function its REST route calls, as the signed-in analyst.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from xdp_compute.errors import BadRequest, NotFound
from xdp_compute.gateway.console.render import pages
from xdp_compute.gateway.console.session import AnalystUser, ConsoleSvc
from xdp_compute.gateway.routers import catalog, jobs

router = APIRouter(prefix="/analyst")

# Operations whose released answer is encrypted to the analyst's key: the gateway hands the
# ciphertext over once (GET /v1/jobs/{id}); the console must not take it from the SDK.
ENCRYPTED = ("he_query",)


@router.get("/catalog")
async def catalog_page(request: Request, user: AnalystUser, svc: ConsoleSvc) -> Response:
    datasets = await asyncio.to_thread(catalog.list_datasets, svc, user.principal)
    return pages(request).render(request, "analyst_catalog.html", user, title="Catalog", datasets=datasets)


@router.get("/catalog/{name}")
async def dataset_page(name: str, request: Request, user: AnalystUser, svc: ConsoleSvc,
                       rows: int = Query(10, ge=1, le=catalog.MAX_MOCK_ROWS)) -> Response:
    ds = await asyncio.to_thread(catalog.get_dataset, name, svc, user.principal)
    mock = await asyncio.to_thread(catalog.mock_dataset, name, svc, user.principal, rows)
    columns = list(mock["rows"][0]) if mock["rows"] else []
    return pages(request).render(request, "analyst_dataset.html", user, title=f"Dataset {ds['name']}",
                                 ds=ds, mock=mock, columns=columns)


@router.get("/budgets")
async def budgets_page(request: Request, user: AnalystUser, svc: ConsoleSvc) -> Response:
    names = [d["name"] for d in await asyncio.to_thread(catalog.list_datasets, svc, user.principal)]
    budgets = []
    for n in names:
        with contextlib.suppress(NotFound):
            budgets.append(await jobs.budget(n, svc, user.principal))
    own = await asyncio.to_thread(svc.store.analyst_budget, user.principal.id)
    return pages(request).render(request, "analyst_budgets.html", user, title="Budgets", budgets=budgets, own=own)


@router.get("/jobs")
async def jobs_page(request: Request, user: AnalystUser, svc: ConsoleSvc,
                    before: str | None = Query(None, max_length=64)) -> Response:
    page = await asyncio.to_thread(jobs.list_jobs, svc, user.principal, None, None, 50, before)
    return pages(request).render(request, "analyst_jobs.html", user, title="Jobs", page=page)


def result_table(job: dict[str, Any]) -> dict[str, Any] | None:
    """Released rows with their intervals as the SDK's QueryResult shows them: (value, low, high)."""
    res = job.get("result")
    rows = res.get("rows") if isinstance(res, dict) else None
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        return None
    intervals = res.get("intervals") or [{}] * len(rows)
    columns = list(res.get("columns") or (list(rows[0]) if rows else []))
    table = []
    for row, iv in zip(rows, intervals, strict=False):
        cells = []
        for c in columns:
            bounds = (iv or {}).get(c)
            cells.append({"value": row.get(c), "low": bounds[0] if bounds else None,
                          "high": bounds[1] if bounds else None})
        table.append(cells)
    return {"columns": columns, "rows": table, "level": res.get("level")}


METRICS = ("accuracy", "loss", "mse")


def model_card(job: dict[str, Any]) -> dict[str, Any] | None:
    """A released model's card as the page shows it: features, label, classes, nodes, ε per node,
    δ, rounds, and the held-out metrics (already clamped to their range) with their intervals."""
    res = job.get("result")
    card = res.get("card") if isinstance(res, dict) else None
    if not isinstance(card, dict):
        return None
    metrics = card.get("metrics") or res.get("metrics") or {}
    shown = []
    for name in METRICS:
        if metrics.get(name) is not None:
            iv = metrics.get(f"{name}_interval")
            shown.append({"name": name, "value": metrics[name], "low": iv[0] if iv else None,
                          "high": iv[1] if iv else None})
    return {"dataset": card.get("dataset"), "features": card.get("features") or [], "label": card.get("label"),
            "classes": card.get("classes"), "nodes": card.get("nodes") or [],
            "epsilon_per_node": card.get("epsilon_per_node") or {}, "delta": card.get("delta"),
            "rounds_done": card.get("rounds_done"), "rounds_planned": card.get("rounds_planned"),
            "metrics": shown, "level": metrics.get("confidence_level", 0.95)}


@router.get("/jobs/{job_id}")
async def job_page(job_id: str, request: Request, user: AnalystUser, svc: ConsoleSvc) -> Response:
    if len(job_id) > 64:
        raise BadRequest("job id too long")
    summary = await asyncio.to_thread(_summary, svc, user, job_id)
    if summary["operation"] in ENCRYPTED and summary["status"] == "released":
        job, table = summary, None
    else:
        job = await asyncio.to_thread(jobs.get_job, job_id, svc, user.principal)
        table = result_table(job)
    return pages(request).render(request, "analyst_job.html", user, title=f"Job {job_id}", job=job, table=table,
                                 card=model_card(job), encrypted=summary["operation"] in ENCRYPTED)


def _summary(svc: Any, user: Any, job_id: str) -> dict[str, Any]:
    from xdp_compute.gateway import models as m

    with svc.store.read() as s:
        j = s.get(m.Job, job_id)
        if j is None or j.principal_id != user.principal.id:
            raise NotFound(f"no job {job_id!r}")
        return {"job_id": j.id, "status": j.status, "operation": j.kind, "created_at": j.created_at, "cost": {}}
