"""Console sessions: a random id in an HttpOnly, SameSite=Strict cookie, mapped server-side to the
principal's token; a per-session CSRF token checked on every POST.

The token never reaches the cookie or a page. It stays in this process's memory so that every
request re-authenticates through ``Store.authenticate_cached``: a revoked or expired token ends
the session on the very next request. Sessions expire after ``IDLE_SECONDS`` without a request
and ``MAX_SECONDS`` after sign-in; sign-out deletes them. A gateway restart signs everyone out.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Annotated, Any
from urllib.parse import parse_qs

from fastapi import Depends, Request

from xdp_compute.errors import BadRequest, Forbidden, Unauthorized
from xdp_compute.gateway.services import Services
from xdp_compute.gateway.store import PrincipalView

COOKIE = "xdp_console"
SIGNIN_COOKIE = "xdp_console_signin"  # double-submit CSRF token of the sign-in form (no session yet)
COOKIE_PATH = "/console"
IDLE_SECONDS = 30 * 60
MAX_SECONDS = 12 * 3600
MAX_SESSIONS = 10_000
MAX_FORM_BYTES = 64 * 1024


class SignInRequired(Exception):
    """No live session: the console answers with a redirect to the sign-in page."""

    def __init__(self, reason: str = "") -> None:
        super().__init__(reason)
        self.reason = reason


class CsrfRejected(Exception):
    """A POST without this session's CSRF token: 403, nothing done."""


@dataclass
class ConsoleSession:
    principal: PrincipalView
    token: str = field(repr=False)  # server-side only; never rendered, never in a cookie
    csrf: str = field(repr=False)
    created: float
    seen: float
    flash: list[tuple[str, str]] = field(default_factory=list)  # (kind, message) shown once

    @property
    def role(self) -> str:
        return self.principal.role

    @property
    def name(self) -> str:
        return self.principal.name

    def say(self, message: str, kind: str = "ok") -> None:
        """A message for the next page this session renders (the outcome of a POST)."""
        self.flash.append((kind, message))

    def take_flash(self) -> list[tuple[str, str]]:
        out, self.flash = self.flash, []
        return out


def _key(session_id: str) -> str:
    # Keyed by digest: a memory dump of the table does not hand out live cookies.
    return hashlib.sha256(session_id.encode()).hexdigest()


class ConsoleSessions:
    """The console's session table of one gateway process."""

    def __init__(self) -> None:
        self._by_key: dict[str, ConsoleSession] = {}
        self._lock = threading.Lock()

    def open(self, principal: PrincipalView, token: str) -> str:
        """A new session for ``principal``; returns the id for the cookie."""
        sid = secrets.token_urlsafe(32)
        now = time.time()
        with self._lock:
            self._expire(now)
            if len(self._by_key) >= MAX_SESSIONS:
                oldest = min(self._by_key, key=lambda k: self._by_key[k].seen)
                del self._by_key[oldest]
            self._by_key[_key(sid)] = ConsoleSession(principal, token, secrets.token_urlsafe(32), now, now)
        return sid

    def get(self, session_id: str | None) -> ConsoleSession | None:
        if not session_id or len(session_id) > 200:
            return None
        now = time.time()
        with self._lock:
            s = self._by_key.get(_key(session_id))
            if s is None:
                return None
            if now - s.seen > IDLE_SECONDS or now - s.created > MAX_SECONDS:
                del self._by_key[_key(session_id)]
                return None
            s.seen = now
            return s

    def close(self, session_id: str | None) -> None:
        if session_id:
            with self._lock:
                self._by_key.pop(_key(session_id), None)

    def __len__(self) -> int:
        return len(self._by_key)

    def _expire(self, now: float) -> None:
        dead = [k for k, s in self._by_key.items() if now - s.seen > IDLE_SECONDS or now - s.created > MAX_SECONDS]
        for k in dead:
            del self._by_key[k]


def services(request: Request) -> Services:
    """The gateway's services (the console app is mounted on the gateway app)."""
    return request.app.state.gateway.state.services  # type: ignore[no-any-return]


def sessions(request: Request) -> ConsoleSessions:
    return request.app.state.sessions  # type: ignore[no-any-return]


ConsoleSvc = Annotated[Services, Depends(services)]


async def console_user(request: Request, svc: ConsoleSvc) -> ConsoleSession:
    """The signed-in session, its token re-checked now (a revocation ends it at once)."""
    table = sessions(request)
    sid = request.cookies.get(COOKIE)
    s = table.get(sid)
    if s is None:
        raise SignInRequired("expired" if sid else "")
    try:
        principal = await asyncio.to_thread(svc.store.authenticate_cached, s.token)
    except Unauthorized:
        table.close(sid)
        raise SignInRequired("ended") from None
    if principal.id != s.principal.id:  # cannot happen with hashed unique tokens; refuse anyway
        table.close(sid)
        raise SignInRequired("ended")
    request.state.principal = principal  # for the gateway's access log
    return s


ConsoleUser = Annotated[ConsoleSession, Depends(console_user)]


def require_console_role(*roles: str) -> Any:
    """A dependency: the session, if its role is one of ``roles`` (403 otherwise)."""

    def check(user: ConsoleUser) -> ConsoleSession:
        if user.role not in roles:
            raise Forbidden(f"this page is for {' or '.join(roles)}s; you are signed in as {user.role}")
        return user

    return Depends(check)


HolderUser = Annotated[ConsoleSession, require_console_role("holder")]
AnalystUser = Annotated[ConsoleSession, require_console_role("analyst")]
AuditorUser = Annotated[ConsoleSession, require_console_role("auditor")]


async def read_form(request: Request) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body as {name: first value} (size-capped)."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/x-www-form-urlencoded":
        raise BadRequest("the console accepts form posts only (application/x-www-form-urlencoded)")
    raw = await request.body()
    if len(raw) > MAX_FORM_BYTES:
        raise BadRequest(f"form too large (over {MAX_FORM_BYTES} bytes)")
    try:
        fields = parse_qs(raw.decode("utf-8"), keep_blank_values=True, strict_parsing=False, max_num_fields=50)
    except (UnicodeDecodeError, ValueError):
        raise BadRequest("the form could not be read") from None
    return {k: v[0] for k, v in fields.items()}


async def checked_form(request: Request, user: ConsoleUser) -> dict[str, str]:
    """The posted form, once its ``csrf`` field matched this session's token (403 otherwise)."""
    try:
        form = await read_form(request)
    except BadRequest:
        raise CsrfRejected() from None  # no readable form, so no CSRF token either
    if not hmac.compare_digest(form.get("csrf", "").encode(), user.csrf.encode()):
        raise CsrfRejected()
    return form


Form = Annotated[dict[str, str], Depends(checked_form)]
