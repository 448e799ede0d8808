"""Metering (可控可计量): per analyst and per dataset — jobs, epsilon spent, cells released, compute time."""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

from fastapi import APIRouter
from sqlalchemy import select

from xdp_compute.contract import api as A
from xdp_compute.errors import Forbidden
from xdp_compute.gateway import models as m
from xdp_compute.gateway.deps import CurrentPrincipal, Svc
from xdp_compute.gateway.openapi import operation_id, problems

router = APIRouter(prefix="/v1", tags=["metering"], generate_unique_id_function=operation_id)


@router.get("/metering", response_model=A.Metering, responses=problems(403))
def metering(svc: Svc, who: CurrentPrincipal) -> dict[str, Any]:
    """Auditors see everything; holders see their own datasets only."""
    if who.role not in ("auditor", "holder"):
        raise Forbidden("metering is for auditors and holders")
    mine = set(svc.store.dataset_names(who.id)) if who.role == "holder" else None
    with svc.store.read() as s:
        entries = [json.loads(x) for x in s.scalars(select(m.LogEntry.entry_json)).all()]
        jobs = {j.id: j for j in s.scalars(select(m.Job)).all()}
    by_analyst: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    by_dataset: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for e in entries:
        if e.get("kind") not in ("released", "denied", "budget_exhausted", "failed", "approval_refused"):
            continue
        datasets = [d for d in e.get("datasets") or [] if mine is None or d in mine]
        if not datasets:
            continue
        eps = float((e.get("privacy_cost") or {}).get("epsilon", 0.0)) if e["kind"] == "released" else 0.0
        job = jobs.get(e.get("job_id") or "")
        secs = job.compute_seconds if job is not None and e["kind"] == "released" else 0.0
        for bucket in [by_analyst[e.get("principal") or "?"]] + [by_dataset[d] for d in datasets]:
            bucket["jobs"] += 1
            bucket["released"] += e["kind"] == "released"
            bucket["refused"] += e["kind"] != "released"
            bucket["epsilon_spent"] += eps
            bucket["cells_released"] += int(e.get("cells_released") or 0)
            bucket["compute_seconds"] += secs
    return {"per_analyst": {k: dict(v) for k, v in sorted(by_analyst.items())},
            "per_dataset": {k: dict(v) for k, v in sorted(by_dataset.items())}}
