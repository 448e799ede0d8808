"""The holder's node: dials out to the gateway over gRPC, registers, heartbeats and pulls tasks.

It opens no listening port. When the gateway goes away it reconnects with exponential back-off
and registers again; tokens the gateway rejects end the process with a clear message.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import grpc

from xdp_compute.domain.manifest import Manifest
from xdp_compute.errors import XdpError
from xdp_compute.node.executors import TaskExecutor, TaskOutcome
from xdp_compute.v1 import node_pb2 as pb
from xdp_compute.v1 import node_pb2_grpc as pb_grpc

log = logging.getLogger("xdp.node")
AGENT_VERSION = "0.1.0"
_FATAL = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED,
          grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION}
MAX_MESSAGE = 64 << 20


class NodeFatal(XdpError):
    """The gateway refused this node for good (bad token, clashing schema...)."""

    status, slug, title = 400, "node-refused", "Node refused"


class _Reconnect(Exception):
    pass


@dataclass
class Session:
    node_id: str
    session_id: str
    heartbeat_seconds: float


class NodeAgent:
    def __init__(self, gateway: str, token: str, manifest: Manifest, *, workers: int = 4,
                 pull_wait: float = 10.0) -> None:
        self.gateway, self.manifest, self.pull_wait = gateway, manifest, pull_wait
        self._metadata = (("authorization", f"Bearer {token}"),)
        self.executor = TaskExecutor(manifest)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="task")
        self.stop_event = threading.Event()
        self._session: Session | None = None
        self._channel: grpc.Channel | None = None
        self._fault = os.environ.get("XDP_NODE_FAULT")  # test-only fault injection: exit on this task kind
        if self._fault:
            log.warning("XDP_NODE_FAULT=%s is set: this node exits on that task (tests only)", self._fault)

    # ------------------------------------------------------------------ plumbing
    def _declarations(self) -> str:
        return json.dumps([d.to_dict() for d in self.manifest.datasets])

    def _register(self, stub: pb_grpc.NodeServiceStub) -> Session:
        resp = stub.Register(pb.RegisterRequest(node_name=self.manifest.node_name, region=self.manifest.region,
                                                datasets_json=self._declarations(), agent_version=AGENT_VERSION),
                             metadata=self._metadata, timeout=15)
        log.info("registered as %s with %d dataset(s)", self.manifest.node_name, len(self.manifest.datasets))
        return Session(resp.node_id, resp.session_id, resp.heartbeat_seconds or 2.0)

    def _heartbeat_loop(self, stub: pb_grpc.NodeServiceStub, session: Session, lost: threading.Event) -> None:
        while not self.stop_event.is_set() and not lost.is_set():
            try:
                r = stub.Heartbeat(pb.HeartbeatRequest(node_id=session.node_id, session_id=session.session_id),
                                   metadata=self._metadata, timeout=max(session.heartbeat_seconds, 2.0))
                if not r.known:
                    lost.set()
                    return
            except grpc.RpcError:
                lost.set()
                return
            self.stop_event.wait(session.heartbeat_seconds)

    def _submit(self, stub: pb_grpc.NodeServiceStub, session: Session, task: pb.Task) -> None:
        try:
            if self._fault and task.kind == self._fault:
                log.error("fault injection: exiting on %s", task.kind)
                os._exit(17)
            header = json.loads(task.header_json or "{}")
            out: TaskOutcome = self.executor.handle(task.kind, task.job_id, header, dict(task.blobs))
        except XdpError as e:
            out = TaskOutcome(ok=False, error=e.detail)
        except Exception as e:
            log.exception("task %s failed", task.kind)
            out = TaskOutcome(ok=False, error=f"{type(e).__name__} while running {task.kind}")
        try:
            stub.SubmitResult(pb.TaskResult(node_id=session.node_id, session_id=session.session_id,
                                            task_id=task.task_id, ok=out.ok, error=out.error,
                                            header_json=json.dumps(out.header), blobs=out.blobs),
                              metadata=self._metadata, timeout=60)
        except grpc.RpcError as e:
            log.warning("could not submit result of %s: %s", task.kind, e.code())

    def _serve(self, stub: pb_grpc.NodeServiceStub) -> None:
        session = self._register(stub)
        self._session = session
        self.executor.node_id = session.node_id
        lost = threading.Event()
        hb = threading.Thread(target=self._heartbeat_loop, args=(stub, session, lost), daemon=True)
        hb.start()
        while not self.stop_event.is_set():
            if lost.is_set():
                raise _Reconnect("gateway no longer knows this session")
            resp = stub.PullTask(pb.PullTaskRequest(node_id=session.node_id, session_id=session.session_id,
                                                    wait_seconds=self.pull_wait),
                                 metadata=self._metadata, timeout=self.pull_wait + 10)
            if not resp.known:
                raise _Reconnect("gateway no longer knows this session")
            if resp.has_task:
                self._pool.submit(self._submit, stub, session, resp.task)

    def stop(self) -> None:
        """Stop serving now: cancels the pending long poll by closing the channel."""
        self.stop_event.set()
        ch = self._channel
        if ch is not None:
            ch.close()

    def run(self) -> None:
        """Serve until ``stop_event`` is set; raise NodeFatal if the gateway refuses this node."""
        backoff = 0.5
        while not self.stop_event.is_set():
            channel = grpc.insecure_channel(self.gateway, options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE), ("grpc.max_send_message_length", MAX_MESSAGE),
                ("grpc.keepalive_time_ms", 20000)])
            stub = pb_grpc.NodeServiceStub(channel)
            self._channel = channel
            self._session = None
            try:
                self._serve(stub)
            except grpc.RpcError as e:
                if self.stop_event.is_set():
                    break
                code = e.code() if hasattr(e, "code") else None
                if code in _FATAL:
                    detail = e.details() if hasattr(e, "details") else str(e)
                    raise NodeFatal(f"gateway refused node {self.manifest.node_name!r}: {detail}") from None
                log.warning("gateway unreachable (%s); retrying in %.1fs", code, backoff)
            except _Reconnect as e:
                log.warning("%s; registering again", e)
                backoff = 0.5
            except (ValueError, RuntimeError):
                if self.stop_event.is_set():
                    break  # the channel was closed under us by stop()
                raise
            finally:
                channel.close()
            if self._session is not None:
                backoff = 0.5  # we were connected: start the back-off afresh
            self.stop_event.wait(backoff)
            backoff = min(backoff * 2, 10.0)
        self._pool.shutdown(wait=False, cancel_futures=True)


def describe(manifest: Manifest) -> dict[str, Any]:
    return {"node": manifest.node_name, "region": manifest.region,
            "datasets": [d.name for d in manifest.datasets]}
