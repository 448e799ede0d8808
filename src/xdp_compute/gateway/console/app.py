"""The console's app, mounted by the gateway under ``/console``.

A sub-application so that its answers are HTML (a redirect to sign-in, an error page) while the
gateway's stay problem+json, and so that its routes stay out of the REST API's OpenAPI document.
The gateway's middleware (body limit, access log) wraps it like every other route.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from xdp_compute.errors import XdpError
from xdp_compute.gateway.console.render import HERE, Pages, pages
from xdp_compute.gateway.console.session import ConsoleSessions, CsrfRejected, SignInRequired, console_user

log = logging.getLogger("xdp.gateway.console")

# Everything the console loads comes from this package: no CDN, no web fonts, no inline script.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
HEADERS = {"content-security-policy": CSP, "x-content-type-options": "nosniff", "referrer-policy": "no-referrer",
           "x-frame-options": "DENY", "cache-control": "no-store"}


def create_console(gateway: FastAPI) -> FastAPI:
    """The console app; ``gateway`` is the app it is mounted on (its services, its settings)."""
    console = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    console.state.gateway = gateway
    console.state.sessions = ConsoleSessions()
    console.state.pages = Pages()

    @console.middleware("http")
    async def _headers(request: Request, call_next):  # type: ignore[no-untyped-def]
        response: Response = await call_next(request)
        for k, v in HEADERS.items():
            response.headers.setdefault(k, v)
        return response

    async def _page_user(request: Request) -> object:
        try:
            return await console_user(request, request.app.state.gateway.state.services)
        except (SignInRequired, XdpError):
            return None

    @console.exception_handler(SignInRequired)
    async def _sign_in(request: Request, exc: SignInRequired) -> Response:
        root = request.scope.get("root_path", "").rstrip("/")
        where = f"{root}/sign-in" + (f"?ended={exc.reason}" if exc.reason else "")
        return RedirectResponse(where, status_code=303)

    @console.exception_handler(CsrfRejected)
    async def _csrf(request: Request, exc: CsrfRejected) -> Response:
        return pages(request).render(request, "error.html", await _page_user(request), status=403,  # type: ignore[arg-type]
                                     title="Form refused", detail="The form's CSRF token is missing or does not "
                                     "match your session; nothing was done. Reload the page and try again.")

    @console.exception_handler(XdpError)
    async def _xdp(request: Request, exc: XdpError) -> Response:
        return pages(request).render(request, "error.html", await _page_user(request), status=exc.status,  # type: ignore[arg-type]
                                     title=exc.title, detail=exc.detail)

    @console.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()))
        return pages(request).render(request, "error.html", await _page_user(request), status=422,  # type: ignore[arg-type]
                                     title="Invalid request", detail=f"{where}: {first.get('msg', 'invalid')}")

    @console.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        return pages(request).render(request, "error.html", await _page_user(request),  # type: ignore[arg-type]
                                     status=exc.status_code, title=str(exc.detail), detail=str(exc.detail))

    console.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

    from xdp_compute.gateway.console import analyst, audit, holder, signin

    console.include_router(signin.router)
    console.include_router(holder.router)
    console.include_router(analyst.router)
    console.include_router(audit.router)  # auditor pages (console/audit.py)
    return console
