"""The gateway's HTTP contract as scripts rely on it: the OpenAPI document and the 401 challenge.

``install(app)`` (one line in ``create_app``) makes the document say what the gateway does:
- every operation has a stable id ``{tag}-{name}`` (``jobs-submit-query``), not FastAPI's
  path-derived one, so generated clients keep their method names across releases;
- routes that need a token declare the ``bearer`` security scheme and answer 401 with
  ``WWW-Authenticate: Bearer`` (RFC 6750 §3);
- every error status a route can answer (routers list theirs with ``problems(...)``; 401, 403
  and 422 are added where authentication, a role or parameters make them possible) is declared
  with the RFC 9457 ``Problem`` schema as ``application/problem+json``, which is what the
  exception handlers in ``app.py`` send.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.dependencies.models import Dependant
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute

from xdp_compute.contract.api import Problem
from xdp_compute.errors import Unauthorized
from xdp_compute.gateway.deps import current_principal

PROBLEM = "application/problem+json"
PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
# RFC 6750 §3: a 401 names the scheme and the realm; ``invalid_token`` when one was sent.
REALM = "xdp-compute"
SCHEME = "bearer"
WHY = {
    400: "Bad request: the request is well-formed but cannot be served as asked (the detail says why)",
    401: "No token, or an unknown, expired or revoked one (WWW-Authenticate: Bearer)",
    403: "The caller's role may not use this route, or policy or the privacy budget refuses the job",
    404: "No such object, or not one the caller may see",
    409: "Conflicts with the object's state (e.g. already decided, node offline, idempotency key reused)",
    413: "The request body is larger than the gateway accepts",
    422: "A parameter or body member is missing, of the wrong type or out of range",
    503: "A multi-party protocol could not finish, or the release log failed its integrity check",
}


# Error statuses of the app's own routes (app.py), which take no ``responses=`` from here.
APP_ROUTE_PROBLEMS = {"/readyz": (503,)}


def problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route: each status answered with the ``Problem`` schema."""
    return {s: {"description": WHY[s], "content": {PROBLEM: {"schema": PROBLEM_REF}}} for s in statuses}


def bearer_challenge(request: Request) -> str:
    """The ``WWW-Authenticate`` value for a 401 on ``request``."""
    if request.headers.get("authorization"):
        return f'Bearer realm="{REALM}", error="invalid_token"'
    return f'Bearer realm="{REALM}"'


def operation_id(route: APIRoute) -> str:
    """``{tag}-{name}``: the router's tag and the route function's name, dashed."""
    tag = str(route.tags[0]) if route.tags else "gateway"
    return re.sub(r"[^a-z0-9]+", "-", f"{tag}-{route.name}".lower()).strip("-")


def _api_routes(routes: list[Any]) -> list[APIRoute]:
    """Every APIRoute, those of included routers too (FastAPI includes routers lazily)."""
    out: list[APIRoute] = []
    for r in routes:
        if isinstance(r, APIRoute):
            out.append(r)
        elif hasattr(r, "original_router"):
            out += _api_routes(r.original_router.routes)
    return out


def _calls(dep: Dependant) -> list[Callable[..., Any]]:
    out = [dep.call] if dep.call is not None else []
    for sub in dep.dependencies:
        out += _calls(sub)
    return out


def _needs_token(route: APIRoute) -> bool:
    return current_principal in _calls(route.dependant)


def _checks_role(route: APIRoute) -> bool:
    return any(getattr(c, "__qualname__", "").startswith("require_role") for c in _calls(route.dependant))


def _document(app: FastAPI) -> dict[str, Any]:
    routes = _api_routes(app.routes)
    for r in routes:  # routers set theirs with generate_unique_id_function=operation_id; the app's own here
        r.operation_id = operation_id(r)
    doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes,
                      tags=app.openapi_tags, servers=app.servers)
    components = doc.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemas["Problem"] = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    components.setdefault("securitySchemes", {})[SCHEME] = {
        "type": "http", "scheme": "bearer",
        "description": "An access token from `xdp admin create-token`: `Authorization: Bearer xdp_...`"}
    for r in routes:
        for method in r.methods or ():
            op = doc["paths"].get(r.path_format, {}).get(method.lower())
            if op is None:
                continue
            declared = op.setdefault("responses", {})
            extra: list[int] = list(APP_ROUTE_PROBLEMS.get(r.path_format, ()))
            if _needs_token(r):
                op["security"] = [{SCHEME: []}]
                extra.append(401)
                if _checks_role(r):
                    extra.append(403)
            if "422" in declared or op.get("parameters") or op.get("requestBody"):
                extra.append(422)  # our validation handler answers problem+json, not FastAPI's default
            declared.update({str(k): v for k, v in problems(*extra).items()})
    return doc


def install(app: FastAPI) -> None:
    """Install the 401 challenge and the OpenAPI document on the gateway app."""

    @app.exception_handler(Unauthorized)
    async def _unauthorized(request: Request, exc: Unauthorized) -> JSONResponse:
        return JSONResponse(exc.problem(instance=request.url.path), status_code=401, media_type=PROBLEM,
                            headers={"WWW-Authenticate": bearer_challenge(request)})

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _document(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
