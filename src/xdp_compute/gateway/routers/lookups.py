"""Hidden lookups (issue #17): the table of a lookup product, and one evaluation per lookup.

Thin: parse, call ``gateway.lookup``, answer. The protocol is docs/hidden-lookup.md.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from xdp_compute.contract import api as A
from xdp_compute.gateway.deps import Analyst, Svc, body_openapi, json_body
from xdp_compute.gateway.lookup import LookupService, TableCache
from xdp_compute.gateway.openapi import operation_id, problems

router = APIRouter(prefix="/v1/lookups", tags=["lookups"], generate_unique_id_function=operation_id)

Version = Annotated[str, Path(pattern="^[0-9a-f]{32}$", description="A table version (32 hex digits)")]
ProductId = Annotated[str, Path(min_length=1, max_length=200, description="A lookup product's id")]
# 409 covers a used-up allowance (allowance-used-up), a stale table version (lookup-version-stale),
# an offline node, and a dataset held by several nodes.
_REFUSALS = problems(400, 403, 404, 409, 503)


def lookup_service(request: Request, svc: Svc) -> LookupService:
    """The request's LookupService, with the app's table cache (made at first use)."""
    cache = getattr(request.app.state, "lookup_tables", None)
    if cache is None:
        cache = request.app.state.lookup_tables = TableCache()
    return LookupService(svc, cache)


Lookups = Annotated[LookupService, Depends(lookup_service)]


class EvaluateBody(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "version": "0123456789abcdef0123456789abcdef", "point": "5866666666666666666666666666666666666666666="}]})
    version: str = Field(..., pattern="^[0-9a-f]{32}$", description="The table version the SDK holds")
    point: str = Field(..., min_length=44, max_length=44,
                       description="The blinded key r·H(key), 32 bytes base64 (RFC 9497 Blind)")


@router.post("/{product}/table-info", response_model=A.LookupTableInfo, responses=_REFUSALS)
async def table_info(product: ProductId, who: Analyst, lookups: Lookups) -> dict[str, Any]:
    """The product's current table: version, key type, columns, capacity, sizes. Counts no call.

    The node builds the table if it has none for the current data (minutes for 10^6 entries)."""
    return await lookups.table_info(who, product)


@router.get("/{product}/tables/{version}/parts/{part}", response_class=Response,
            responses={200: {"description": "Part of the encoded table (application/octet-stream)",
                             "content": {"application/octet-stream": {"schema": {"type": "string",
                                                                                 "format": "binary"}}}},
                       **_REFUSALS})
async def table_part(product: ProductId, version: Version, who: Analyst, lookups: Lookups,
                     part: Annotated[int, Path(ge=0, le=100_000)]) -> Response:
    """Part ``part`` of a table version (parts of 4 MiB; the last may be shorter). Counts no call."""
    data = await lookups.table_part(who, product, version, part)
    return Response(data, media_type="application/octet-stream")


@router.post("/{product}/evaluate", response_model=A.LookupEvaluation, openapi_extra=body_openapi(EvaluateBody),
             responses={**_REFUSALS, **problems(413)})
async def evaluate(product: ProductId, who: Analyst, lookups: Lookups,
                   body: Annotated[EvaluateBody, Depends(json_body(EvaluateBody))]) -> dict[str, Any]:
    """One hidden lookup: the node's evaluation of the blinded point. Counts one call under the
    caller's subscription and writes one release-log entry (never the key, never whether it matched)."""
    return await lookups.evaluate(who, product, body.version, body.point)
