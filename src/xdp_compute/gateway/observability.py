"""Structured logs of the gateway: one JSON object per line, a request id on each, an access log.

What a log line may hold is the operator's business, never the data's: the access log has the
method, the route *template* (``/v1/jobs/{job_id}``, not the path), the status, the duration
and who called (principal name and role) — never a header, a query string, a body or a result.
``Redactor`` is the second line of defence: whatever a message says, a bearer token, an
``Authorization`` value or a long base64/hex run (a ciphertext, a key, a mask) is replaced before
the line is written.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import json
import logging
import re
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUEST_ID_HEADER = "x-request-id"
# An incoming X-Request-ID is kept only when it is this harmless: it is echoed and logged.
_REQUEST_ID_OK = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("xdp_request_id", default=None)

access_log = logging.getLogger("xdp.access")
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

# LogRecord attributes that are the record's own, not fields passed with ``extra=``.
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class Redactor:
    """Masks secrets and bulk binary in a log string (a last line of defence, not the first)."""

    _PATTERNS = (
        # Bearer tokens as this gateway issues them (``xdp_`` + 43 url-safe characters).
        (re.compile(r"xdp_[A-Za-z0-9_-]{20,}"), "xdp_[redacted]"),
        # Any Authorization value that slipped into a message.
        (re.compile(r"(?i)(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}"), r"\1 [redacted]"),
        # Ciphertexts, keys, masks: a long base64 or hex run is never operational information.
        (re.compile(r"[A-Za-z0-9+/_-]{200,}={0,2}"), "[redacted blob]"),
    )

    def __call__(self, text: str) -> str:
        for pattern, replacement in self._PATTERNS:
            text = pattern.sub(replacement, text)
        return text


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, request_id and ``extra`` fields."""

    def __init__(self) -> None:
        super().__init__()
        self.redact = Redactor()

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": self.redact(record.getMessage()),
            "request_id": getattr(record, "request_id", None) or request_id_var.get(),
        }
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRS and key not in out:
                out[key] = value
        if record.exc_info:
            out["exception"] = self.redact(self.formatException(record.exc_info))
        return self.redact(json.dumps(out, default=str, ensure_ascii=False))


class TextFormatter(logging.Formatter):
    """The human format, with the request id when there is one, and the same redaction."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.redact = Redactor()

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        rid = getattr(record, "request_id", None) or request_id_var.get()
        return self.redact(f"{line} [request_id={rid}]" if rid else line)


def configure_logging(fmt: str = "json", level: int = logging.INFO) -> None:
    """Send every logger (``xdp.*``, uvicorn's) to stderr in ``fmt`` ('json' or 'text').

    Replaces the root handlers; uvicorn must be started with ``log_config=None`` so that its
    loggers propagate here. Uvicorn's own access log is silenced: ``AccessLog`` writes one that
    knows the route template and the principal.
    """
    if fmt not in ("json", "text"):
        raise ValueError(f"log format must be 'json' or 'text', got {fmt!r}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error"):
        lg = logging.getLogger(name)
        lg.handlers.clear()
        lg.propagate = True
    logging.getLogger("uvicorn.access").disabled = True
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)  # one line per plugin at start


def incoming_request_id(value: str | None) -> str:
    """The caller's X-Request-ID when well-formed, else a fresh one."""
    if value and _REQUEST_ID_OK.match(value):
        return value
    return uuid.uuid4().hex


def _header(scope: Scope, name: bytes) -> str | None:
    for k, v in scope.get("headers") or ():
        if k.lower() == name:
            return str(v.decode("latin-1"))
    return None


class AccessLog:
    """ASGI middleware: request id in (X-Request-ID) and out, one access-log line per request,
    and the request counter of ``metrics`` (if given).

    The caller's name comes from what the route's authentication stored in the request state.
    ``metrics_of()`` returns the gateway's ``GatewayMetrics`` (built by the lifespan, after this).
    """

    def __init__(self, app: ASGIApp, metrics_of: Callable[[], Any] | None = None) -> None:
        self.app, self.metrics_of = app, metrics_of

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = incoming_request_id(_header(scope, REQUEST_ID_HEADER.encode()))
        # Not reset on the way out: the server runs each request in its own task (its own copy of
        # the context), and the app's handler of unexpected errors logs *after* this returns, from
        # the middleware outside this one — its line must still carry the id.
        request_id_var.set(rid)
        started = time.perf_counter()
        status = 500  # what the client gets if the app raises before answering

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            self._log(scope, status, time.perf_counter() - started, rid)

    def _log(self, scope: Scope, status: int, seconds: float, rid: str) -> None:
        route = scope.get("route")
        template = getattr(route, "path", None) or "(unmatched)"
        fields: dict[str, Any] = {"method": scope.get("method", ""), "route": template, "status": status,
                                  "duration_ms": round(seconds * 1000, 2), "request_id": rid}
        who = self._principal(scope)
        if who is not None:
            fields["principal"], fields["role"] = who.name, who.role
        client = scope.get("client")
        if client:
            fields["client"] = client[0]
        metrics = self.metrics_of() if self.metrics_of is not None else None
        if metrics is not None:
            # Label values stay a bounded set whatever clients send: a method outside the standard
            # ones, like a path no route matches, is one series, not one per spelling.
            method = fields["method"] if fields["method"] in _METHODS else "OTHER"
            metrics.request(method, template, status)
        access_log.info("%s %s %d", fields["method"], template, status, extra=fields)

    @staticmethod
    def _principal(scope: Scope) -> Any:
        # What the route's authentication dependency stored in the request's state (deps.py);
        # None when the request never authenticated (health, docs, a refused token).
        state = scope.get("state")
        return state.get("principal") if isinstance(state, dict) else None
