"""The gateway's HTTP contract as scripts rely on it: the OpenAPI document and the 401 challenge.

``install(app)`` (one line in ``create_app``) gives every operation a stable ``{tag}-{name}``
id, declares the bearer scheme on authenticated routes and every error status a route can
answer with the RFC 9457 ``Problem`` schema, and answers 401 with ``WWW-Authenticate: Bearer``
(RFC 6750 §3) so that generic HTTP clients know how to authenticate.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from xdp_compute.errors import Unauthorized

PROBLEM = "application/problem+json"
# RFC 6750 §3: a 401 names the scheme and the realm; ``invalid_token`` when one was sent.
REALM = "xdp-compute"


def bearer_challenge(request: Request) -> str:
    """The ``WWW-Authenticate`` value for a 401 on ``request``."""
    if request.headers.get("authorization"):
        return f'Bearer realm="{REALM}", error="invalid_token"'
    return f'Bearer realm="{REALM}"'


def install(app: FastAPI) -> None:
    """Install the 401 challenge and the OpenAPI document on the gateway app."""

    @app.exception_handler(Unauthorized)
    async def _unauthorized(request: Request, exc: Unauthorized) -> JSONResponse:
        return JSONResponse(exc.problem(instance=request.url.path), status_code=401, media_type=PROBLEM,
                            headers={"WWW-Authenticate": bearer_challenge(request)})
