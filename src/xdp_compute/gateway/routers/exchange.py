"""The data exchange's routes (issue #17): assets, products, subscriptions, statements.

Thin: parse, call ``gateway.assets.AssetRegistry`` / ``gateway.exchange.ExchangeService``, answer
the records of ``contract.api``. Who may do what:

| route                                   | who                                          |
|-----------------------------------------|----------------------------------------------|
| POST /v1/assets                         | the dataset's owner (a holder)               |
| GET /v1/assets, /v1/assets/{d}/history  | any principal                                |
| POST /v1/products                       | the dataset's owner                          |
| GET /v1/products, /v1/products/{id}     | any principal                                |
| POST /v1/products/{id}/subscribe        | analysts                                     |
| GET /v1/subscriptions                   | analysts: their own; holders: to their       |
|                                         | products; auditors and admins: all           |
| POST /v1/subscriptions/{id}/approve     | the product's owner                          |
| POST /v1/subscriptions/{id}/reject      | the product's owner                          |
| GET /v1/statements?period=YYYY-MM       | each party its own; auditors and admins all  |
| POST /v1/statements                     | admins (the operator settles a period)       |
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field

from xdp_compute.contract import api as A
from xdp_compute.gateway.assets import AssetRegistry
from xdp_compute.gateway.deps import (
    Analyst,
    CurrentPrincipal,
    Holder,
    Svc,
    body_openapi,
    json_body,
    optional_json_body,
    require_role,
)
from xdp_compute.gateway.exchange import ExchangeService
from xdp_compute.gateway.openapi import operation_id, problems
from xdp_compute.gateway.store import PrincipalView

router = APIRouter(prefix="/v1", tags=["exchange"], generate_unique_id_function=operation_id)
Admin = Annotated[PrincipalView, Depends(require_role("admin"))]
NAME = r"^[A-Za-z0-9_.-]+$"


class AssetBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"examples": [
        {"dataset": "patients", "description": "Outpatient visits 2026, Siming district", "grade": "L3",
         "licence": "Use through DP queries only; no re-identification; CC-BY for released aggregates"}]})
    dataset: str = Field(..., min_length=1, max_length=64, pattern=NAME)
    description: str = Field(..., min_length=1, max_length=4000)
    licence: str = Field(..., min_length=1, max_length=4000, description="Licence terms of use")
    grade: str | None = Field(None, min_length=1, max_length=64,
                              description="The holder's grading (分级), e.g. L1..L4; classification comes from "
                                          "the manifest")


class QueryShapes(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    aggregates: list[Literal["count", "sum", "avg", "variance", "stddev"]] | None = Field(None, max_length=5)
    group_by: list[str] | None = Field(None, max_length=64)
    filters: list[str] | None = Field(None, max_length=64)
    columns: list[str] | None = Field(None, max_length=256)


class ProductBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"examples": [
        {"dataset": "patients", "kind": "query", "title": "Visits by district", "unit_price": 200.0,
         "allowance": 2.0, "shapes": {"aggregates": ["count", "avg"], "group_by": ["district"]}},
        {"dataset": "patients", "kind": "lookup", "title": "Age by id", "unit_price": 1.5, "allowance": 100,
         "columns": ["age"]}]})
    dataset: str = Field(..., min_length=1, max_length=64, pattern=NAME)
    kind: Literal["query", "scoring", "model", "lookup"]
    title: str = Field(..., min_length=1, max_length=200)
    description: str | None = Field(None, max_length=4000)
    unit_price: float = Field(..., ge=0, le=1e12, description="Per epsilon (query), per call (lookup, model), "
                                                             "per row scored (scoring)")
    allowance: float = Field(..., gt=0, le=1e9, description="Units per subscriber")
    shapes: QueryShapes | None = Field(None, description="query: the SQL shapes allowed (absent: any the "
                                                         "dataset's policy allows)")
    columns: list[str] | None = Field(None, max_length=256, description="lookup: the columns released "
                                                                          "(default: every opted-in column)")


class DecisionBody(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"reason": "research use agreed"}]})
    reason: str | None = Field(None, min_length=1, max_length=2000)


class RejectBody(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"reason": "not for marketing"}]})
    reason: str = Field(..., min_length=1, max_length=2000)


class SettleBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"examples": [{"period": "2026-12"}]})
    period: str = Field(..., min_length=7, max_length=7, pattern=r"^\d{4}-\d{2}$")


def exchange(svc: Svc) -> ExchangeService:
    return ExchangeService(svc)


# ---------------------------------------------------------------- assets
@router.post("/assets", status_code=201, openapi_extra=body_openapi(AssetBody), response_model=A.AssetVersion,
             responses=problems(400, 404, 409, 413, 503))
async def register_asset(who: Holder, svc: Svc, body: Annotated[AssetBody, Depends(json_body(AssetBody))]
                         ) -> dict[str, Any]:
    """Register the caller's dataset as an asset (again: a new version naming the previous one).
    Each of the owner's nodes commits to its rows; the entry is appended to the release log."""
    return await AssetRegistry(svc).register(who, body.model_dump())


@router.get("/assets", response_model=list[A.AssetVersion])
async def list_assets(svc: Svc, who: CurrentPrincipal) -> list[dict[str, Any]]:
    """The newest version of every registered asset."""
    return await asyncio.to_thread(AssetRegistry(svc).latest)


@router.get("/assets/{dataset}/history", response_model=list[A.AssetVersion], responses=problems(404))
async def asset_history(dataset: str, svc: Svc, who: CurrentPrincipal) -> list[dict[str, Any]]:
    """Every version of a dataset's asset, oldest first: its release-log entries."""
    return await asyncio.to_thread(AssetRegistry(svc).history, dataset)


# ---------------------------------------------------------------- products
@router.get("/products", response_model=list[A.Product])
async def list_products(svc: Svc, who: CurrentPrincipal,
                        dataset: Annotated[str | None, Query(max_length=64)] = None,
                        kind: Annotated[Literal["query", "scoring", "model", "lookup"] | None, Query()] = None
                        ) -> list[dict[str, Any]]:
    """The product catalog, newest first, each with the caller's own subscription if any."""
    return await asyncio.to_thread(exchange(svc).products, who, dataset, kind)


@router.post("/products", status_code=201, openapi_extra=body_openapi(ProductBody), response_model=A.Product,
             responses=problems(400, 404, 413, 503))
async def create_product(who: Holder, svc: Svc, body: Annotated[ProductBody, Depends(json_body(ProductBody))]
                         ) -> dict[str, Any]:
    """List a product on one of the caller's datasets (its terms become a release-log entry)."""
    data = body.model_dump()
    data["shapes"] = body.shapes.model_dump(exclude_none=True) if body.shapes is not None else None
    return await asyncio.to_thread(exchange(svc).create_product, who, data)


@router.get("/products/{product_id}", response_model=A.Product, responses=problems(404))
async def get_product(product_id: str, svc: Svc, who: CurrentPrincipal) -> dict[str, Any]:
    return await asyncio.to_thread(exchange(svc).product, product_id, who)


@router.post("/products/{product_id}/subscribe", status_code=201, response_model=A.SubscriptionRecord,
             responses=problems(404, 409))
async def subscribe(product_id: str, who: Analyst, svc: Svc) -> dict[str, Any]:
    """Ask for a subscription; it waits for the owner's approval (asking again returns it)."""
    return await asyncio.to_thread(exchange(svc).subscribe, who, product_id)


# ---------------------------------------------------------------- subscriptions
@router.get("/subscriptions", response_model=list[A.SubscriptionRecord])
async def list_subscriptions(svc: Svc, who: CurrentPrincipal) -> list[dict[str, Any]]:
    """Analysts: their own; holders: those to their products; auditors and admins: all."""
    return await asyncio.to_thread(exchange(svc).subscriptions, who)


@router.post("/subscriptions/{subscription_id}/approve", openapi_extra=body_openapi(DecisionBody, required=False),
             response_model=A.SubscriptionRecord, responses=problems(404, 409, 413, 503))
async def approve_subscription(subscription_id: str, who: Holder, svc: Svc,
                               body: Annotated[DecisionBody, Depends(optional_json_body(DecisionBody))]
                               ) -> dict[str, Any]:
    """The product's owner approves a pending subscription (a release-log entry)."""
    return await asyncio.to_thread(exchange(svc).decide, who, subscription_id, True, body.reason)


@router.post("/subscriptions/{subscription_id}/reject", openapi_extra=body_openapi(RejectBody),
             response_model=A.SubscriptionRecord, responses=problems(404, 409, 413, 503))
async def reject_subscription(subscription_id: str, who: Holder, svc: Svc,
                              body: Annotated[RejectBody, Depends(json_body(RejectBody))]) -> dict[str, Any]:
    """The product's owner rejects a pending subscription, with a reason (a release-log entry)."""
    return await asyncio.to_thread(exchange(svc).decide, who, subscription_id, False, body.reason)


# ---------------------------------------------------------------- statements
@router.get("/statements", response_model=list[A.Statement], responses=problems(400))
async def list_statements(svc: Svc, who: CurrentPrincipal,
                          period: Annotated[str, Query(min_length=7, max_length=7, pattern=r"^\d{4}-\d{2}$",
                                                       description="Billing period, YYYY-MM")]
                          ) -> list[dict[str, Any]]:
    """The period's statements the caller may see: settled ones (log entries), else computed now."""
    return await asyncio.to_thread(exchange(svc).statements, who, period)


@router.post("/statements", status_code=201, openapi_extra=body_openapi(SettleBody),
             response_model=list[A.Statement], responses=problems(400, 409, 413, 503))
async def settle_period(who: Admin, svc: Svc, body: Annotated[SettleBody, Depends(json_body(SettleBody))]
                        ) -> list[dict[str, Any]]:
    """Settle a billing period: one statement per subscriber and per holder, each a log entry."""
    return await asyncio.to_thread(exchange(svc).issue, who, body.period)
