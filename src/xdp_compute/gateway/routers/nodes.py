"""Holder routes: their own nodes, validation of their sources; and who-am-I for everyone."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Query

from xdp_compute.contract import Validate, Validated
from xdp_compute.contract import api as A
from xdp_compute.errors import Conflict, XdpError
from xdp_compute.gateway.deps import CurrentPrincipal, Holder, Svc
from xdp_compute.gateway.hub import NodeDropped, NodeFailed
from xdp_compute.gateway.openapi import operation_id, problems

router = APIRouter(prefix="/v1", tags=["nodes"], generate_unique_id_function=operation_id)


@router.get("/me", response_model=A.Me)
def me(who: CurrentPrincipal) -> dict[str, Any]:
    return {"id": who.id, "name": who.name, "role": who.role, "region": who.region}


@router.post("/nodes/{node_id}/validate", response_model=A.NodeValidation, responses=problems(404, 409))
async def validate_node(node_id: str, svc: Svc, who: Holder) -> dict[str, Any]:
    """Ask the holder's own node to check its sources against its manifest (counts only)."""
    node = await asyncio.to_thread(svc.store.get_node, node_id, who.id)
    if not node["online"]:
        raise Conflict(f"node {node['name']!r} is offline")
    try:
        reply = await svc.hub.ask(node["id"], "", Validate(), svc.settings.round_timeout_seconds)
    except NodeDropped as e:
        raise Conflict(str(e)) from None
    except NodeFailed as e:
        raise Conflict(f"node {node['name']!r} could not validate: {e.error}") from None
    except XdpError as e:
        raise Conflict(f"node {node['name']!r} answered outside the task contract: {e.detail}") from None
    assert isinstance(reply, Validated)
    return {"node": node["name"], "datasets": reply.datasets, "ok": reply.ok}


@router.get("/nodes/log-entries", response_model=list[A.LogEntry])
def holder_log_entries(svc: Svc, who: Holder, start: int = Query(0, ge=0, le=2**62),
                       limit: int = Query(1000, ge=1, le=100_000)) -> list[dict[str, Any]]:
    """The release log's entries about the calling holder's own datasets (as ``/v1/audit/entries``
    shows them: digests, costs and decisions, no values), so a holder's node can check that every
    task its journal records was logged (``xdp node audit``)."""
    from xdp_compute.gateway.routers.audit import _entries

    mine = set(svc.store.dataset_names(who.id))
    out = [e for e in _entries(svc, start, 100_000) if mine & set(e.get("datasets") or [])]
    return out[:limit]
