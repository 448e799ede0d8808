"""Holders approve or deny jobs on their datasets before anything is computed."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from xdp_compute.gateway import approvals
from xdp_compute.gateway.deps import Holder, Svc, body_openapi, json_body

router = APIRouter(prefix="/v1/approvals", tags=["approvals"])


class DenyBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field(..., min_length=1, max_length=2000)


@router.get("")
def list_approvals(svc: Svc, who: Holder) -> list[dict[str, Any]]:
    """Jobs on your datasets with their plan, principal, cost and policy decisions (never data)."""
    return approvals.pending_for(svc, who)


@router.post("/{job_id}/approve")
async def approve(job_id: str, svc: Svc, who: Holder) -> dict[str, Any]:
    return await approvals.approve(svc, who, job_id)


@router.post("/{job_id}/deny", openapi_extra=body_openapi(DenyBody))
async def deny(job_id: str, who: Holder, svc: Svc, body: Annotated[DenyBody, Depends(json_body(DenyBody))]
               ) -> dict[str, Any]:
    return await approvals.deny(svc, who, job_id, body.reason)
