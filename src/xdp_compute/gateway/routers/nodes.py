"""Holder routes: their own nodes, validation of their sources; and who-am-I for everyone."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter

from xdp_compute.errors import Conflict
from xdp_compute.gateway.deps import CurrentPrincipal, Holder, Svc
from xdp_compute.gateway.hub import NodeDropped, Task

router = APIRouter(prefix="/v1", tags=["nodes"])


@router.get("/me")
def me(who: CurrentPrincipal) -> dict[str, Any]:
    return {"id": who.id, "name": who.name, "role": who.role, "region": who.region}


@router.post("/nodes/{node_id}/validate")
async def validate_node(node_id: str, svc: Svc, who: Holder) -> dict[str, Any]:
    """Ask the holder's own node to check its sources against its manifest (counts only)."""
    node = await asyncio.to_thread(svc.store.get_node, node_id, who.id)
    if not node["online"]:
        raise Conflict(f"node {node['name']!r} is offline")
    try:
        reply = await svc.hub.call(node["id"], Task(kind="validate", job_id=""), svc.settings.round_timeout_seconds)
    except NodeDropped as e:
        raise Conflict(str(e)) from None
    if not reply.ok:
        raise Conflict(f"node {node['name']!r} could not validate: {reply.error}")
    return {"node": node["name"], **reply.header}
