"""Sign-in and sign-out: the token is pasted into a form and POSTed, never put in a URL."""

from __future__ import annotations

import asyncio
import hmac
import secrets

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from xdp_compute.errors import Unauthorized
from xdp_compute.gateway.console.render import NAV, pages
from xdp_compute.gateway.console.session import (
    COOKIE,
    COOKIE_PATH,
    SIGNIN_COOKIE,
    ConsoleUser,
    CsrfRejected,
    Form,
    read_form,
    services,
    sessions,
)

router = APIRouter()

ENDED = {"ended": "Your session ended: the token was revoked or expired. Sign in again.",
         "expired": "Your session expired. Sign in again.", "out": "You are signed out."}


def _secure(request: Request) -> bool:
    """Secure cookies when the gateway serves HTTPS (its own TLS or a TLS-terminating URL)."""
    return request.url.scheme == "https" or bool(services(request).settings.tls_cert)


def _home(request: Request, role: str) -> str:
    root = request.scope.get("root_path", "").rstrip("/")
    first = NAV.get(role) or [("/", "")]
    return root + first[0][0] if NAV.get(role) else root + "/"


@router.get("/sign-in")
def sign_in_form(request: Request, ended: str = "") -> Response:
    nonce = secrets.token_urlsafe(32)
    r = pages(request).render(request, "sign_in.html", signin_csrf=nonce, notice=ENDED.get(ended, ""), error="")
    r.set_cookie(SIGNIN_COOKIE, nonce, httponly=True, samesite="strict", path=COOKIE_PATH, secure=_secure(request))
    return r


@router.post("/sign-in")
async def sign_in(request: Request) -> Response:
    form = await read_form(request)
    # No session yet: the form's token must equal the one set in this browser's cookie (double submit).
    nonce = request.cookies.get(SIGNIN_COOKIE, "")
    if not nonce or not hmac.compare_digest(form.get("csrf", "").encode(), nonce.encode()):
        raise CsrfRejected()
    token = form.get("token", "").strip()
    svc = services(request)
    try:
        if not token:
            raise Unauthorized("paste your token")
        principal = await asyncio.to_thread(svc.store.authenticate_cached, token)
    except Unauthorized as e:
        fresh = secrets.token_urlsafe(32)
        r = pages(request).render(request, "sign_in.html", status=401, signin_csrf=fresh, notice="",
                                  error=f"Not signed in: {e.detail}.")
        r.set_cookie(SIGNIN_COOKIE, fresh, httponly=True, samesite="strict", path=COOKIE_PATH,
                     secure=_secure(request))
        return r
    table = sessions(request)
    table.close(request.cookies.get(COOKIE))  # signing in again replaces this browser's old session
    sid = table.open(principal, token)
    r = RedirectResponse(_home(request, principal.role), status_code=303)
    r.set_cookie(COOKIE, sid, httponly=True, samesite="strict", path=COOKIE_PATH, secure=_secure(request))
    r.delete_cookie(SIGNIN_COOKIE, path=COOKIE_PATH)
    return r


@router.post("/sign-out")
def sign_out(request: Request, user: ConsoleUser, form: Form) -> Response:
    sessions(request).close(request.cookies.get(COOKIE))
    root = request.scope.get("root_path", "").rstrip("/")
    r = RedirectResponse(f"{root}/sign-in?ended=out", status_code=303)
    r.delete_cookie(COOKIE, path=COOKIE_PATH)
    return r


@router.get("/")
def home(request: Request, user: ConsoleUser) -> Response:
    """The role's first page (a role without pages gets a short home page)."""
    if NAV.get(user.role):
        return RedirectResponse(_home(request, user.role), status_code=303)
    return pages(request).render(request, "home.html", user)
