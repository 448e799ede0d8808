"""The task channel's gateway side: per-node queues that nodes long-poll, and replies matched to callers.

Nodes never accept connections; the gateway reaches a node only by leaving a task in its queue
and waiting for the node's ``SubmitResult``. A node that does not answer in time counts as
dropped for that call (secure aggregation tolerates it).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from xdp_compute.contract import Record, decode_reply, encode


@dataclass
class Task:
    kind: str
    job_id: str
    header: dict[str, Any] = field(default_factory=dict)
    blobs: dict[str, bytes] = field(default_factory=dict)
    task_id: str = field(default_factory=lambda: uuid.uuid4().hex)


@dataclass
class Reply:
    ok: bool
    header: dict[str, Any]
    blobs: dict[str, bytes]
    error: str = ""


class NodeDropped(Exception):
    """The node did not answer the task in time (or disconnected)."""


class NodeFailed(Exception):
    """The node answered the task with an error (its message is for people; never data)."""

    def __init__(self, error: str) -> None:
        super().__init__(error)
        self.error = error


# How often a node that keeps heartbeating has its last_seen written to the store: liveness is
# decided in memory, so the database sees a write per node per transition and per this interval,
# not one per heartbeat (a busy database must not make nodes look dead).
PERSIST_LAST_SEEN_SECONDS = 15.0


class TaskHub:
    def __init__(self) -> None:
        self._queues: dict[str, asyncio.Queue[Task]] = {}
        self._waiting: dict[str, tuple[str, asyncio.Future[Reply]]] = {}
        self.sessions: dict[str, str] = {}  # node_id -> current session id
        self._heard: dict[str, float] = {}  # node_id -> monotonic time of its last RPC
        self._persisted: dict[str, float] = {}  # node_id -> monotonic time last_seen was stored
        self._offline: set[str] = set()

    def _queue(self, node_id: str) -> asyncio.Queue[Task]:
        q = self._queues.get(node_id)
        if q is None:
            q = self._queues[node_id] = asyncio.Queue()
        return q

    def new_session(self, node_id: str) -> str:
        sid = uuid.uuid4().hex
        self.sessions[node_id] = sid
        return sid

    def session_ok(self, node_id: str, session_id: str) -> bool:
        return bool(session_id) and self.sessions.get(node_id) == session_id

    # ------------------------------------------------------------------ liveness
    def registered(self, node_id: str) -> None:
        """A node (re-)registered: the store already marked it online."""
        now = time.monotonic()
        self._heard[node_id] = self._persisted[node_id] = now
        self._offline.discard(node_id)

    def heard_from(self, node_id: str) -> bool:
        """Any RPC of a node's current session is a sign of life; True if the store should be told
        (the node was offline, or its stored last_seen is older than PERSIST_LAST_SEEN_SECONDS)."""
        now = time.monotonic()
        self._heard[node_id] = now
        if node_id in self._offline or now - self._persisted.get(node_id, -1e18) > PERSIST_LAST_SEEN_SECONDS:
            self._offline.discard(node_id)
            self._persisted[node_id] = now
            return True
        return False

    def silent_for(self, seconds: float) -> list[str]:
        """Online nodes not heard from for ``seconds``."""
        cutoff = time.monotonic() - seconds
        return [n for n, t in self._heard.items() if t < cutoff and n not in self._offline]

    def online_count(self) -> int:
        return sum(1 for n in self._heard if n not in self._offline)

    def is_online(self, node_id: str) -> bool:
        return node_id in self._heard and node_id not in self._offline

    def went_offline(self, node_id: str) -> None:
        self._offline.add(node_id)
        self.fail_node(node_id, "went offline")

    async def call(self, node_id: str, task: Task, timeout: float) -> Reply:
        """Queue ``task`` for ``node_id`` and wait for its reply; NodeDropped on timeout."""
        if node_id in self._offline:
            raise NodeDropped(f"node {node_id} is offline")
        if node_id not in self._heard:
            # Never registered with this process (issue #18: the store may call it online because
            # another gateway replica hears from it): no long poll will ever take the task.
            raise NodeDropped(f"node {node_id} has no session with this gateway")
        fut: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._waiting[task.task_id] = (node_id, fut)
        await self._queue(node_id).put(task)
        try:
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise NodeDropped(f"node {node_id} did not answer {task.kind} within {timeout:g}s") from None
        finally:
            self._waiting.pop(task.task_id, None)

    async def ask(self, node_id: str, job_id: str, request: Record, timeout: float) -> Record:
        """Send a contract request and return the node's typed reply.

        NodeDropped if it does not answer in time, NodeFailed if it answers with an error,
        ContractError if its answer does not follow the contract.
        """
        header, blobs = encode(request)
        r = await self.call(node_id, Task(request.KIND, job_id, header, blobs), timeout)
        if not r.ok:
            raise NodeFailed(r.error)
        return decode_reply(request.KIND, r.header, r.blobs)

    async def pull(self, node_id: str, wait: float) -> Task | None:
        q = self._queue(node_id)
        # A task already queued is taken without wait_for's timer and wrapper task (issue #13:
        # event-loop plumbing was a third of the gateway's time with many nodes).
        while not q.empty():
            task = q.get_nowait()
            if task.task_id in self._waiting:
                return task
        while True:
            try:
                task = await asyncio.wait_for(q.get(), wait)
            except TimeoutError:
                return None
            # Skip tasks whose caller already gave up (a stale queue after a timeout).
            if task.task_id in self._waiting:
                return task

    def fail_node(self, node_id: str, reason: str) -> None:
        """The node went offline: its pending calls fail now instead of at their timeout."""
        for n, fut in list(self._waiting.values()):
            if n == node_id and not fut.done():
                fut.set_exception(NodeDropped(f"node {node_id} {reason}"))
        # The queue stays: a node's pending long poll waits on it, and stale tasks in it are
        # skipped by ``pull`` (their callers are no longer waiting).

    def submit(self, node_id: str, task_id: str, reply: Reply) -> bool:
        entry = self._waiting.get(task_id)
        if entry is None or entry[0] != node_id:
            return False
        fut = entry[1]
        if not fut.done():
            fut.set_result(reply)
        return True


def dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))
