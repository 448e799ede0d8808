"""FastAPI dependencies: services, the current principal and role checks."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect

from xdp_compute.errors import BadRequest, Forbidden
from xdp_compute.gateway.services import Services
from xdp_compute.gateway.store import PrincipalView


def get_services(request: Request) -> Services:
    return request.app.state.services  # type: ignore[no-any-return]


Svc = Annotated[Services, Depends(get_services)]


def current_principal(request: Request, svc: Svc) -> PrincipalView:
    auth = request.headers.get("authorization", "")
    token = auth[7:].strip() if auth[:7].lower() == "bearer " else None
    # Cached per token until it expires or any token is revoked or rotated (Store.cached_principal).
    principal = svc.store.authenticate_cached(token)
    # For the access log (gateway/observability.py), which runs outside the route.
    request.state.principal = principal
    return principal


CurrentPrincipal = Annotated[PrincipalView, Depends(current_principal)]


def require_role(*roles: str) -> Callable[[PrincipalView], PrincipalView]:
    def check(p: CurrentPrincipal) -> PrincipalView:
        if p.role not in roles:
            raise Forbidden(f"role {p.role!r} may not use this route (allowed: {', '.join(roles)})")
        return p

    return check


Analyst = Annotated[PrincipalView, Depends(require_role("analyst"))]
Holder = Annotated[PrincipalView, Depends(require_role("holder"))]
Auditor = Annotated[PrincipalView, Depends(require_role("auditor"))]
CatalogReader = Annotated[PrincipalView, Depends(require_role("analyst", "holder", "admin"))]
NodeReader = Annotated[PrincipalView, Depends(require_role("analyst", "holder", "admin"))]


M = TypeVar("M", bound=BaseModel)


def json_body(model: type[M]) -> Callable[[Request], Awaitable[M]]:
    """A dependency that reads the request body as ``model`` — list it after the principal.

    FastAPI decodes declared body parameters before any dependency runs, that is before the
    token is checked, and on the event loop: large unauthenticated bodies stalled every other
    request (issue #9). Read through this dependency, the body is not touched until the
    principal and its role passed, and it is parsed and validated in a worker thread.
    """

    return _body_parser(model, optional=False)


def optional_json_body(model: type[M]) -> Callable[[Request], Awaitable[M]]:
    """As ``json_body``, for a body that may be left out: no body reads as ``model()``."""
    return _body_parser(model, optional=True)


def _body_parser(model: type[M], optional: bool) -> Callable[[Request], Awaitable[M]]:
    async def parse(request: Request) -> M:
        try:
            raw = await request.body()
        except ClientDisconnect:
            raise BadRequest("the client went away before the request body arrived") from None
        if optional and not raw.strip():
            return model()
        try:
            return await asyncio.to_thread(model.model_validate_json, raw)
        except ValidationError as e:
            raise RequestValidationError(
                [{**err, "loc": ("body", *err["loc"])} for err in e.errors(include_url=False)]) from None

    return parse


def body_openapi(model: type[BaseModel], required: bool = True) -> dict[str, Any]:
    """``openapi_extra`` documenting a body read through ``json_body`` (or ``optional_json_body``)."""
    return {"requestBody": {"required": required,
                            "content": {"application/json": {"schema": model.model_json_schema()}}}}
