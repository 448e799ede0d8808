"""Holders approve or deny jobs on their datasets before anything is computed."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from xdp_compute.contract import api as A
from xdp_compute.gateway import approvals
from xdp_compute.gateway.deps import Holder, Svc, body_openapi, json_body, optional_json_body
from xdp_compute.gateway.openapi import operation_id, problems

router = APIRouter(prefix="/v1/approvals", tags=["approvals"], generate_unique_id_function=operation_id)


class DenyBody(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"reason": "not for marketing"}]})
    reason: str = Field(..., min_length=1, max_length=2000)


class ApproveBody(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"reason": "within our research agreement"}]})
    reason: str | None = Field(None, min_length=1, max_length=2000)


@router.get("", response_model=list[A.Approval])
def list_approvals(svc: Svc, who: Holder) -> list[dict[str, Any]]:
    """Jobs on your datasets with their plan, principal, cost and policy decisions (never data)."""
    return approvals.pending_for(svc, who)


@router.post("/{job_id}/approve", openapi_extra=body_openapi(ApproveBody, required=False),
             response_model=A.ApprovalDecision, responses=problems(404, 409, 413, 503))
async def approve(job_id: str, who: Holder, svc: Svc,
                  body: Annotated[ApproveBody, Depends(optional_json_body(ApproveBody))]) -> dict[str, Any]:
    """Approve a job on your datasets, optionally with a reason kept with your decision."""
    return await approvals.approve(svc, who, job_id, reason=body.reason)


@router.post("/{job_id}/deny", openapi_extra=body_openapi(DenyBody), response_model=A.ApprovalDecision,
             responses=problems(404, 409, 413, 503))
async def deny(job_id: str, who: Holder, svc: Svc, body: Annotated[DenyBody, Depends(json_body(DenyBody))]
               ) -> dict[str, Any]:
    return await approvals.deny(svc, who, job_id, body.reason)
