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


METERED_KINDS = ("released", "denied", "budget_exhausted", "failed", "approval_refused")


def _metered(svc: Svc, who: CurrentPrincipal) -> tuple[list[tuple[dict[str, Any], list[str], float]],
                                                         dict[str, m.Job]]:
    """The metered log entries in log order, each with the datasets the caller may see and its ε.

    Auditors see everything; holders see their own datasets only. ε counts for released entries.
    """
    if who.role not in ("auditor", "holder"):
        raise Forbidden("metering is for auditors and holders")
    mine = set(svc.store.dataset_names(who.id)) if who.role == "holder" else None
    with svc.store.read() as s:
        entries = [json.loads(x) for x in s.scalars(select(m.LogEntry.entry_json).order_by(m.LogEntry.idx)).all()]
        jobs = {j.id: j for j in s.scalars(select(m.Job)).all()}
    out = []
    for e in entries:
        if e.get("kind") not in METERED_KINDS:
            continue
        datasets = [d for d in e.get("datasets") or [] if mine is None or d in mine]
        if not datasets:
            continue
        eps = float((e.get("privacy_cost") or {}).get("epsilon", 0.0)) if e["kind"] == "released" else 0.0
        out.append((e, datasets, eps))
    return out, jobs


@router.get("/metering", response_model=A.Metering, responses=problems(403))
def metering(svc: Svc, who: CurrentPrincipal) -> dict[str, Any]:
    """Auditors see everything; holders see their own datasets only."""
    metered, jobs = _metered(svc, who)
    by_analyst: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    by_dataset: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for e, datasets, eps in metered:
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


@router.get("/metering/series", response_model=A.MeteringSeries, responses=problems(403))
def metering_series(svc: Svc, who: CurrentPrincipal) -> dict[str, Any]:
    """Per analyst and per dataset: cumulative ε at each released entry, and entries by kind.

    The same entries and visibility as ``/v1/metering``; the console draws its charts from this.
    """
    metered, _ = _metered(svc, who)
    tracks: dict[str, dict[str, dict[str, Any]]] = {"per_analyst": {}, "per_dataset": {}}
    for e, datasets, eps in metered:
        keys = [("per_analyst", e.get("principal") or "?")] + [("per_dataset", d) for d in datasets]
        for side, key in keys:
            track = tracks[side].setdefault(key, {"epsilon_over_time": [], "jobs_by_kind": {}, "_eps": 0.0})
            track["jobs_by_kind"][e["kind"]] = track["jobs_by_kind"].get(e["kind"], 0) + 1
            if e["kind"] == "released":
                track["_eps"] += eps
                track["epsilon_over_time"].append({"time": float(e.get("time", 0.0)), "index": e["index"],
                                                   "epsilon": track["_eps"]})
    return {side: {k: {"epsilon_over_time": t["epsilon_over_time"], "jobs_by_kind": t["jobs_by_kind"]}
                   for k, t in sorted(tracks[side].items())} for side in tracks}
