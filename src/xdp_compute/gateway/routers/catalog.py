"""Catalog routes: what exists, under which policy, and mock previews — never a row."""

from __future__ import annotations

import contextlib
from typing import Any

from fastapi import APIRouter, Query

from xdp_compute.contract import api as A
from xdp_compute.domain.manifest import DatasetSpec
from xdp_compute.errors import NotFound
from xdp_compute.gateway.catalog import MAX_MOCK_ROWS, dataset_view, mock_rows, visible_parts
from xdp_compute.gateway.deps import CatalogReader, NodeReader, Svc
from xdp_compute.gateway.openapi import operation_id, problems

router = APIRouter(prefix="/v1", tags=["catalog"], generate_unique_id_function=operation_id)


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


@router.get("/nodes", response_model=list[A.Node])
def list_nodes(svc: Svc, who: NodeReader) -> list[dict[str, Any]]:
    return svc.store.list_nodes(who.id if who.role == "holder" else None)


@router.get("/nodes/{node_id}", response_model=A.Node, responses=problems(404))
def get_node(node_id: str, svc: Svc, who: NodeReader) -> dict[str, Any]:
    return svc.store.get_node(node_id, who.id if who.role == "holder" else None)
