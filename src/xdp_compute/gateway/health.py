"""Readiness of a running gateway: what ``GET /readyz`` checks.

Each check answers "can this gateway serve a job now?" with operational facts only: whether
the database answers, whether the gRPC port accepts connections, whether the release log in
memory is the one the store's last signed head commits to, and how many nodes are online. None
of them reads a row of anyone's data or names a principal, so the answer is safe to show to an
unauthenticated load balancer.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict
from sqlalchemy import select, text

from xdp_compute.audit import SignedTreeHead, verify_tree_head
from xdp_compute.errors import ProofError
from xdp_compute.gateway import models as m
from xdp_compute.gateway.release import ReleaseLog
from xdp_compute.gateway.services import Services

# A check that has not answered in this many seconds has failed (a stalled database must make
# the gateway unready, not hang the probe).
CHECK_TIMEOUT_SECONDS = 3.0


@dataclass
class Check:
    ok: bool
    detail: str
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "detail": self.detail, **self.extra}


class CheckResult(BaseModel):
    """One readiness check as ``/readyz`` shows it."""

    model_config = ConfigDict(extra="allow")
    ok: bool
    detail: str


class Readiness(BaseModel):
    """``/readyz`` when every check passed (503 problem+json with the same ``checks`` otherwise)."""

    status: str = "ready"
    checks: dict[str, CheckResult]


def database(svc: Services) -> Check:
    """A real round trip: ``SELECT 1`` through the store's pool."""
    with svc.store.read() as s:
        s.execute(text("SELECT 1"))
    return Check(True, f"{svc.store.engine.dialect.name} answers")


def release_log(log: ReleaseLog) -> Check:
    """The store's newest signed tree head verifies under the log's key and is a head of the tree
    in memory (RFC 9162 §2.1.1: same size, same root). The head is read first: an append commits
    and updates memory under ``log.lock``, so the head read is never ahead of memory."""
    if log.integrity_problem:
        return Check(False, "release log integrity check failed at start; releases are refused")
    with log.store.read() as s:
        last = s.scalar(select(m.TreeHead).order_by(m.TreeHead.tree_size.desc()).limit(1))
    with log.lock:
        size = log.committed_size
        root = log.tree.root(last.tree_size).hex() if last is not None and last.tree_size <= size else None
    if last is None:
        return Check(size == 0, "empty log" if size == 0 else "the store holds no signed head")
    if root is None or root != last.root_hash:
        return Check(False, "the store's last signed head is not a head of the log in memory")
    try:
        verify_tree_head(SignedTreeHead(last.tree_size, bytes.fromhex(last.root_hash), last.timestamp_ms,
                                        bytes.fromhex(last.signature), last.key_id), log.signer.public_key_bytes())
    except (ProofError, ValueError):
        return Check(False, "the store's last signed head does not verify under the log's key")
    # No tree size here: how many decisions the log holds is the auditors' to see (/v1/audit/head).
    return Check(True, "last signed head verifies")


async def grpc_server(address: tuple[str, int] | None) -> Check:
    """The node port accepts a TCP connection (the server was bound and started)."""
    if address is None:
        return Check(False, "the gRPC server was not started")
    host, port = address
    if host in ("0.0.0.0", "::", "[::]", ""):
        host = "127.0.0.1"
    try:
        _, writer = await asyncio.open_connection(host.strip("[]"), port)
    except OSError:
        return Check(False, f"nothing accepts connections on gRPC port {port}")
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return Check(True, f"listening on port {port}")


def nodes(svc: Services) -> Check:
    online = svc.hub.online_count()
    return Check(online > 0, f"{online} node(s) online" if online else "no node is online", {"online": online})


async def _timed(name: str, work: Any) -> tuple[str, Check]:
    try:
        return name, await asyncio.wait_for(work, CHECK_TIMEOUT_SECONDS)
    except TimeoutError:
        return name, Check(False, f"no answer within {CHECK_TIMEOUT_SECONDS:g}s")
    except Exception as e:  # noqa: BLE001 - a probe reports any failure as unready
        # The exception's type only: its message may carry a database URL with a password.
        return name, Check(False, f"failed ({type(e).__name__})")


async def readiness(svc: Services) -> dict[str, Check]:
    """Run every check concurrently; each one fails on its own without hiding the others."""
    results = await asyncio.gather(
        _timed("database", asyncio.to_thread(database, svc)),
        _timed("grpc", grpc_server(svc.grpc_address)),
        _timed("release_log", asyncio.to_thread(release_log, svc.release_log)),
    )
    return {**dict(results), "nodes": nodes(svc)}
