"""Node-side handlers of job tasks: the secure-aggregation client rounds and their inputs.

A job's round-0 task (``query_begin``, ``train_begin``...) computes this node's input vector —
already carrying its DP noise share — and starts a ``SecAggClient``; the ``secagg_*`` tasks then
run Bonawitz et al. 2017 rounds 1, 2 and 4. Only masked vectors and encrypted shares leave.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from xdp_compute.crypto.secagg import SecAggClient, SecAggConfig
from xdp_compute.errors import BadRequest

# A round-0 input provider: (executor, job id, header, blobs) -> (uint64 vector, reply header extras)
InputProvider = Callable[[Any, str, dict[str, Any], dict[str, bytes]], tuple[np.ndarray, dict[str, Any]]]
PROVIDERS: dict[str, InputProvider] = {}


SESSION_TTL_SECONDS = 900.0


@dataclass
class _Session:
    client: SecAggClient
    vector: np.ndarray | None
    started: float


class SecAggSessions:
    def __init__(self) -> None:
        self._by_id: dict[str, _Session] = {}
        self._lock = threading.Lock()

    def start(self, node_id: str, conf: dict[str, Any], vector: np.ndarray) -> bytes:
        config = SecAggConfig(session_id=conf["session_id"], participants=list(conf["participants"]),
                              vector_length=int(conf["vector_length"]), threshold=int(conf["threshold"]),
                              neighbours=conf.get("neighbours"))
        if vector.dtype != np.uint64 or vector.shape != (config.vector_length,):
            raise BadRequest("input vector does not match the session's vector length")
        client = SecAggClient(node_id, config)
        msg = client.advertise_keys().encode()
        now = time.time()
        with self._lock:
            # Sessions the gateway abandoned (aborts, drop-outs) do not keep inputs or keys around.
            for sid in [k for k, v in self._by_id.items() if now - v.started > SESSION_TTL_SECONDS]:
                del self._by_id[sid]
            self._by_id[str(conf["session_id"])] = _Session(client, vector, now)
        return msg

    def get(self, session_id: str) -> _Session:
        with self._lock:
            s = self._by_id.get(session_id)
        if s is None:
            raise BadRequest(f"no secure-aggregation session {session_id!r} on this node")
        return s

    def end(self, session_id: str) -> None:
        with self._lock:
            self._by_id.pop(session_id, None)


def install(executor: Any) -> None:
    """Register the secure-aggregation handlers and every job kind's round-0 handler."""
    from xdp_compute.node.executors import TaskOutcome

    sessions = SecAggSessions()
    executor.state["secagg"] = sessions

    def begin_handler(kind: str) -> Callable[[str, dict[str, Any], dict[str, bytes]], TaskOutcome]:
        def run(job_id: str, header: dict[str, Any], blobs: dict[str, bytes]) -> TaskOutcome:
            conf = header.get("secagg")
            if not isinstance(conf, dict):
                raise BadRequest("round-0 task without a secure-aggregation configuration")
            vector, extra = PROVIDERS[kind](executor, job_id, header, blobs)
            msg = sessions.start(executor.node_id, conf, vector)
            return TaskOutcome(ok=True, header=extra, blobs={"secagg": msg})
        return run

    def share_keys(job_id: str, header: dict[str, Any], blobs: dict[str, bytes]) -> TaskOutcome:
        s = sessions.get(str(header.get("session_id")))
        return TaskOutcome(ok=True, blobs={"secagg": s.client.share_keys(_blob(blobs)).encode()})

    def masked_input(job_id: str, header: dict[str, Any], blobs: dict[str, bytes]) -> TaskOutcome:
        s = sessions.get(str(header.get("session_id")))
        if s.vector is None:
            raise BadRequest("masked input already sent for this session")
        msg = s.client.masked_input(s.vector, _blob(blobs)).encode()
        s.vector = None  # the unmasked input is no longer needed; do not keep it around
        return TaskOutcome(ok=True, blobs={"secagg": msg})

    def unmask(job_id: str, header: dict[str, Any], blobs: dict[str, bytes]) -> TaskOutcome:
        sid = str(header.get("session_id"))
        s = sessions.get(sid)
        msg = s.client.unmask(_blob(blobs)).encode()
        sessions.end(sid)
        return TaskOutcome(ok=True, blobs={"secagg": msg})

    executor.handlers.update({"secagg_share_keys": share_keys, "secagg_masked_input": masked_input,
                              "secagg_unmask": unmask})
    for kind in PROVIDERS:
        executor.handlers[kind] = begin_handler(kind)


def _blob(blobs: dict[str, bytes]) -> bytes:
    b = blobs.get("secagg")
    if not isinstance(b, bytes | bytearray):
        raise BadRequest("task carries no secure-aggregation message")
    return bytes(b)


def provider(kind: str) -> Callable[[InputProvider], InputProvider]:
    """Decorator: register the round-0 input provider of a job kind."""

    def deco(fn: InputProvider) -> InputProvider:
        PROVIDERS[kind] = fn
        return fn

    return deco
