"""Dataset members: the owner invites, lists and revokes the holders who may add rows to its dataset."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from xdp_compute.contract import api as A
from xdp_compute.errors import Forbidden
from xdp_compute.gateway.deps import CurrentPrincipal, Svc, body_openapi, json_body, require_role
from xdp_compute.gateway.openapi import operation_id, problems
from xdp_compute.gateway.store import PrincipalView

router = APIRouter(prefix="/v1/datasets", tags=["members"], generate_unique_id_function=operation_id)
Manager = Annotated[PrincipalView, Depends(require_role("holder", "admin"))]


class InviteBody(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"holder": "east-clinic"}]})
    holder: str = Field(..., min_length=1, max_length=200, description="The invited holder's principal name")


@router.get("/{name}/members", response_model=A.Membership, responses=problems(403, 404))
async def list_members(name: str, svc: Svc, who: CurrentPrincipal) -> dict[str, Any]:
    """Owner and members of a dataset (who may add rows to it). Any holder of the dataset, an
    admin or an auditor may read it; an analyst sees the same names in the catalog."""
    info = await asyncio.to_thread(svc.store.dataset_membership, name)
    if who.role == "holder" and who.id != info["owner_id"] and who.id not in info["member_ids"]:
        raise Forbidden(f"only the owner and members of dataset {info['dataset']!r} see its members")
    return {k: v for k, v in info.items() if k not in ("owner_id", "member_ids")}


@router.post("/{name}/members", status_code=201, openapi_extra=body_openapi(InviteBody),
             response_model=A.MemberChange, responses=problems(400, 404, 409, 413))
async def invite(name: str, who: Manager, svc: Svc,
                 body: Annotated[InviteBody, Depends(json_body(InviteBody))]) -> dict[str, Any]:
    """The owner (or an admin) invites a holder; its nodes may then declare this dataset."""
    return await asyncio.to_thread(svc.store.invite_member, who, name, body.holder)


@router.delete("/{name}/members/{holder}", response_model=A.MemberChange, responses=problems(400, 404, 409))
async def revoke(name: str, holder: str, who: Manager, svc: Svc) -> dict[str, Any]:
    """The owner (or an admin) removes a member: its nodes take part in no further job here."""
    return await asyncio.to_thread(svc.store.revoke_member, who, name, holder)
