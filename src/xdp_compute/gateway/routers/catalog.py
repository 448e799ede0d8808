"""Catalog routes: what exists, under which policy, and mock previews — never a row."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query

from xdp_compute.domain.manifest import DatasetSpec
from xdp_compute.gateway.catalog import MAX_MOCK_ROWS, dataset_view, mock_rows, visible_parts
from xdp_compute.gateway.deps import CatalogReader, NodeReader, Svc

router = APIRouter(prefix="/v1", tags=["catalog"])


@router.get("/datasets")
def list_datasets(svc: Svc, who: CatalogReader) -> list[dict[str, Any]]:
    names = svc.store.dataset_names(who.id if who.role == "holder" else None)
    return [dataset_view(visible_parts(svc.store, n, who)) for n in names]


@router.get("/datasets/{name}")
def get_dataset(name: str, svc: Svc, who: CatalogReader) -> dict[str, Any]:
    return dataset_view(visible_parts(svc.store, name, who))


@router.get("/datasets/{name}/mock")
def mock_dataset(name: str, svc: Svc, who: CatalogReader,
                 rows: int = Query(10, ge=1, le=MAX_MOCK_ROWS)) -> dict[str, Any]:
    parts = visible_parts(svc.store, name, who)
    spec = DatasetSpec.from_dict(parts[0]["spec"])
    return {"dataset": name, "synthetic": True, "note": "drawn from declared metadata only, not from data",
            "rows": mock_rows(spec, rows)}


@router.get("/nodes")
def list_nodes(svc: Svc, who: NodeReader) -> list[dict[str, Any]]:
    return svc.store.list_nodes(who.id if who.role == "holder" else None)


@router.get("/nodes/{node_id}")
def get_node(node_id: str, svc: Svc, who: NodeReader) -> dict[str, Any]:
    return svc.store.get_node(node_id, who.id if who.role == "holder" else None)
