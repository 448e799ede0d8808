"""Catalog routes: what exists, under which policy, and mock previews — never a row."""

from __future__ import annotations

import contextlib
import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from sqlalchemy import select

from xdp_compute.contract import api as A
from xdp_compute.domain.manifest import DatasetSpec
from xdp_compute.errors import NotFound
from xdp_compute.gateway import models as m
from xdp_compute.gateway.catalog import MAX_MOCK_ROWS, dataset_view, mock_rows, visible_parts
from xdp_compute.gateway.deps import CatalogReader, NodeReader, Svc, require_role
from xdp_compute.gateway.openapi import operation_id, problems
from xdp_compute.gateway.store import PrincipalView

router = APIRouter(prefix="/v1", tags=["catalog"], generate_unique_id_function=operation_id)
SpendReader = Annotated[PrincipalView, Depends(require_role("holder", "auditor"))]


@router.get("/datasets", response_model=list[A.Dataset])
def list_datasets(svc: Svc, who: CatalogReader) -> list[dict[str, Any]]:
    out = []
    for n in svc.store.dataset_names(who.id if who.role == "holder" else None):
        with contextlib.suppress(NotFound):  # e.g. a former member's node still declaring it
            out.append(dataset_view(visible_parts(svc.store, n, who), svc.store.dataset_membership(n)))
    return out


@router.get("/datasets/{name}", response_model=A.Dataset, responses=problems(404))
def get_dataset(name: str, svc: Svc, who: CatalogReader) -> dict[str, Any]:
    parts = visible_parts(svc.store, name, who)
    return dataset_view(parts, svc.store.dataset_membership(parts[0]["spec"]["name"]))


@router.get("/datasets/{name}/mock", response_model=A.MockPreview, responses=problems(400, 404))
def mock_dataset(name: str, svc: Svc, who: CatalogReader,
                 rows: int = Query(10, ge=1, le=MAX_MOCK_ROWS)) -> dict[str, Any]:
    parts = visible_parts(svc.store, name, who)
    spec = DatasetSpec.from_dict(parts[0]["spec"])
    return {"dataset": name, "synthetic": True, "note": "drawn from declared metadata only, not from data",
            "rows": mock_rows(spec, rows)}


def _as_seen_by(node: dict[str, Any], who: PrincipalView) -> dict[str, Any]:
    # A node's software version and certificate are for its holder and the operator: to anyone
    # else a version says which known flaw to try.
    return node if who.role in ("holder", "admin") else {**node, "version": None, "certificate": None}


@router.get("/nodes", response_model=list[A.Node])
def list_nodes(svc: Svc, who: NodeReader) -> list[dict[str, Any]]:
    return [_as_seen_by(n, who) for n in svc.store.list_nodes(who.id if who.role == "holder" else None)]


@router.get("/nodes/{node_id}", response_model=A.Node, responses=problems(404))
def get_node(node_id: str, svc: Svc, who: NodeReader) -> dict[str, Any]:
    return _as_seen_by(svc.store.get_node(node_id, who.id if who.role == "holder" else None), who)


SPEND_OUTCOMES = ("released", "denied", "budget_exhausted", "failed", "approval_refused")


@router.get("/datasets/{name}/spend", response_model=A.DatasetSpend, responses=problems(403, 404))
def dataset_spend(name: str, svc: Svc, who: SpendReader) -> dict[str, Any]:
    """The dataset's budget per node (spent, reserved, left) and ε/δ spent on it per analyst.

    For its owner and members (a member sees its own nodes' ledgers) and auditors. The per-analyst
    figures are the release log's released entries on the dataset, as ``/v1/metering`` counts them.
    """
    parts = visible_parts(svc.store, name, who)
    dataset = parts[0]["spec"]["name"]
    with svc.store.read() as s:
        rows = s.scalars(select(m.LogEntry.entry_json).order_by(m.LogEntry.idx)).all()
    analysts: dict[str, dict[str, float]] = {}
    for raw in rows:
        e = json.loads(raw)
        if e.get("kind") not in SPEND_OUTCOMES or dataset not in (e.get("datasets") or []):
            continue
        a = analysts.setdefault(e.get("principal") or "?",
                                {"epsilon_spent": 0.0, "delta_spent": 0.0, "released": 0, "refused": 0})
        if e["kind"] == "released":
            cost = e.get("privacy_cost") or {}
            a["epsilon_spent"] += float(cost.get("epsilon") or 0.0)
            a["delta_spent"] += float(cost.get("delta") or 0.0)
            a["released"] += 1
        else:
            a["refused"] += 1
    return {"dataset": dataset,
            "nodes": [{"node": p["node"], "epsilon_budget": p["eps_budget"], "epsilon_spent": p["eps_spent"],
                       "epsilon_reserved": p["eps_reserved"],
                       "epsilon_left": p["eps_budget"] - p["eps_spent"] - p["eps_reserved"],
                       "delta_budget": p["delta_budget"], "delta_spent": p["delta_spent"]} for p in parts],
            "analysts": dict(sorted(analysts.items()))}
