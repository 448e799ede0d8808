"""FastAPI app factory of the gateway. The lifespan owns the store, the gRPC server and background tasks."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from xdp_compute.config import Settings
from xdp_compute.errors import PROBLEM_BASE, XdpError
from xdp_compute.gateway import health
from xdp_compute.gateway.console import create_console
from xdp_compute.gateway.deps import Svc, require_role
from xdp_compute.gateway.docs import install_docs
from xdp_compute.gateway.limits import BodyLimit
from xdp_compute.gateway.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from xdp_compute.gateway.observability import AccessLog
from xdp_compute.gateway.services import Services
from xdp_compute.gateway.store import Store

log = logging.getLogger("xdp.gateway")
PROBLEM = "application/problem+json"


def problem_response(status: int, slug: str, title: str, detail: str, instance: str | None = None,
                     **extra: Any) -> JSONResponse:
    body: dict[str, Any] = {"type": PROBLEM_BASE + slug, "title": title, "status": status, "detail": detail}
    if instance:
        body["instance"] = instance
    body.update(extra)
    return JSONResponse(body, status_code=status, media_type=PROBLEM)


def create_app(settings: Settings, services: Services | None = None) -> FastAPI:
    """Build the gateway app. With ``services`` given (tests), the lifespan starts nothing."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if services is not None:
            app.state.services = services
            yield
            return
        store = await asyncio.to_thread(Store.open, settings.db_url)
        svc = Services(settings=settings, store=store)
        app.state.services = svc
        from xdp_compute.gateway.runtime import start_runtime

        stop = await start_runtime(svc)
        scheme = "https" if settings.tls_cert else "http"
        log.info("REST API on %s://%s:%d (docs at /docs)", scheme, settings.http_host, settings.http_port,
                 extra={"rest_address": f"{scheme}://{settings.http_host}:{settings.http_port}"})
        try:
            yield
        finally:
            await stop()
            store.close()

    app = FastAPI(title="xdp-compute gateway", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Data usable but not visible: catalog, joint statistics, HE queries, DP "
                              "training and a verifiable release log.")
    if services is not None:
        app.state.services = services

    @app.exception_handler(XdpError)
    async def _xdp_error(request: Request, exc: XdpError) -> JSONResponse:
        return JSONResponse(exc.problem(instance=request.url.path), status_code=exc.status, media_type=PROBLEM)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"loc": [str(x) for x in e.get("loc", ())], "msg": e.get("msg", ""), "type": e.get("type", "")}
                  for e in exc.errors()]
        first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
        detail = f"{'.'.join(first['loc'])}: {first['msg']}" if first["loc"] else first["msg"]
        return problem_response(422, "validation-error", "Request validation failed", detail,
                                instance=request.url.path, errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        slug = {404: "not-found", 405: "method-not-allowed"}.get(exc.status_code, "http-error")
        return problem_response(exc.status_code, slug, str(exc.detail), str(exc.detail), instance=request.url.path)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s", request.url.path)
        return problem_response(500, "internal", "Internal error", "unexpected error; see gateway log",
                                instance=request.url.path)

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, Any]:
        """Liveness: the process answers. Checks nothing else (that is ``/readyz``)."""
        return {"status": "ok", "time": time.time()}

    @app.get("/readyz", tags=["health"], responses={200: {"model": health.Readiness}})
    async def readyz(svc: Svc) -> JSONResponse:
        """Readiness: the database answers, the gRPC port accepts connections, the release log in
        memory matches the store's last signed head, and at least one node is online. 503 with
        the failing checks otherwise. No token needed; it names no principal and reads no data."""
        checks = await health.readiness(svc)
        body = {name: c.to_dict() for name, c in checks.items()}
        failing = [name for name, c in checks.items() if not c.ok]
        if not failing:
            return JSONResponse({"status": "ready", "checks": body})
        return problem_response(503, "not-ready", "Gateway not ready", f"failing checks: {', '.join(failing)}",
                                instance="/readyz", checks=body)

    @app.get("/metrics", tags=["health"], response_class=Response,
             responses={200: {"description": "Prometheus text exposition format 0.0.4",
                              "content": {"text/plain": {"schema": {"type": "string"}}}}},
             dependencies=[Depends(require_role("auditor", "admin"))])
    def metrics(svc: Svc) -> Response:
        """Prometheus text format; needs an auditor or admin token (``bearer_token_file`` in the
        scrape config). Labels are kinds, outcomes, phases and dataset names — never a principal."""
        return Response(svc.metrics.exposition(), media_type=METRICS_CONTENT_TYPE)

    install_docs(app)

    from xdp_compute.gateway.routers import approvals, audit, catalog, jobs, members, metering, nodes

    app.include_router(approvals.router)
    app.include_router(audit.router)
    app.include_router(nodes.router)
    app.include_router(catalog.router)
    app.include_router(members.router)
    app.include_router(jobs.router)
    app.include_router(metering.router)
    from xdp_compute.gateway.routers import lookups as lookup_routes  # hidden lookups (issue #17)

    app.include_router(lookup_routes.router)
    from xdp_compute.gateway.routers import exchange as exchange_routes  # data exchange (issue #17)

    app.include_router(exchange_routes.router)
    app.mount("/console", create_console(app))  # the web console (issue #15): HTML, outside the OpenAPI document
    from xdp_compute.gateway import openapi  # operation ids, bearer scheme, problem responses, 401 challenge

    openapi.install(app)
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes,  # type: ignore[arg-type]
                       timeout=settings.body_timeout_seconds)
    # Outermost: every answer, BodyLimit's 413/408 included, gets a request id and an access line.
    app.add_middleware(AccessLog, metrics_of=lambda: getattr(_services(app), "metrics", None))
    return app


def _services(app: FastAPI) -> Services | None:
    return getattr(app.state, "services", None)
