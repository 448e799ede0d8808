"""Request bodies are bounded in size and in time while they stream (issue #12 item 6).

Authentication happens before any body byte is read (``deps.json_body``); this middleware then
bounds what the body may cost: more than ``limit`` bytes — announced by Content-Length or
counted while a chunked body streams — answers 413; a body that has not fully arrived
``timeout`` seconds after the request began answers 408, so a client that trickles bytes holds
no request (and no worker) open for longer than that.
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from xdp_compute.errors import PROBLEM_BASE


class _TooLarge(Exception):
    pass


class _TooSlow(Exception):
    pass


async def _empty_receive() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


class BodyLimit:
    """Refuse request bodies above ``limit`` bytes (413) or slower than ``timeout`` seconds (408)."""

    def __init__(self, app: ASGIApp, limit: int, timeout: float | None = None) -> None:
        self.app, self.limit, self.timeout = app, limit, timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for k, v in scope.get("headers", []):
            if k == b"content-length" and v.isdigit() and int(v) > self.limit:
                await self._reject(scope, send, 413)
                return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout if self.timeout else None
        seen, done = 0, False
        failed: int | None = None

        async def limited() -> Message:
            nonlocal seen, done, failed
            if done or deadline is None:
                msg = await receive()
            else:
                try:
                    msg = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0.0))
                except TimeoutError:
                    failed = 408
                    raise _TooSlow() from None
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.limit:
                    failed = 413
                    raise _TooLarge()
                if not msg.get("more_body", False):
                    done = True
            else:
                done = True  # http.disconnect: nothing more will arrive
            return msg

        started = False

        async def tracking_send(msg: Message) -> None:
            nonlocal started
            if msg["type"] == "http.response.start":
                started = True
            await send(msg)

        try:
            await self.app(scope, limited, tracking_send)
        except (_TooLarge, _TooSlow):
            if not started and failed is not None:
                await self._reject(scope, send, failed)
        except Exception:
            # Something between here and the body read wrapped our signal: the flag still tells.
            if failed is not None and not started:
                await self._reject(scope, send, failed)
            else:
                raise

    async def _reject(self, scope: Scope, send: Send, status: int) -> None:
        if status == 413:
            slug, title = "payload-too-large", "Payload too large"
            detail = f"request body exceeds the limit of {self.limit} bytes"
        else:
            slug, title = "request-timeout", "Request timeout"
            detail = f"the request body did not arrive in full within {self.timeout:g} s"
        body: dict[str, Any] = {"type": PROBLEM_BASE + slug, "title": title, "status": status, "detail": detail,
                                "instance": scope.get("path")}
        # The rest of the body is not wanted: close the connection after the answer.
        resp = JSONResponse(body, status_code=status, media_type="application/problem+json",
                            headers={"connection": "close"})
        await resp(scope, _empty_receive, send)
