"""The holder's node: dials out to the gateway over gRPC, registers, heartbeats and pulls tasks.

It opens no listening port. When the gateway goes away it reconnects with exponential back-off
and registers again; tokens the gateway rejects end the process with a clear message.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import grpc

from xdp_compute.domain.manifest import Manifest
from xdp_compute.errors import XdpError
from xdp_compute.node.outcome import TaskOutcome
from xdp_compute.node.witness import NodeWitness, node_state_dir
from xdp_compute.node.worker import TaskWorker, WorkerOptions
from xdp_compute.v1 import node_pb2 as pb
from xdp_compute.v1 import node_pb2_grpc as pb_grpc

log = logging.getLogger("xdp.node")
AGENT_VERSION = "0.1.0"
_FATAL = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED,
          grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION}
MAX_MESSAGE = 64 << 20
# How long a preloading node waits for its task worker before it registers anyway.
PRELOAD_WAIT_SECONDS = 120.0
# An HTTP/1.1 server (e.g. the gateway's REST port) answering this many dials in a row stops the node.
HTTP_REPLIES_FATAL = 3


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


def gateway_addresses(gateway: str) -> list[str]:
    """``HOST:PORT`` or a comma-separated list of them (gateway replicas), without blanks or repeats."""
    out: list[str] = []
    for a in gateway.split(","):
        a = a.strip()
        if a and a not in out:
            out.append(a)
    if not out:
        raise NodeFatal("no gateway address given (--gateway HOST:PORT[,HOST:PORT...])")
    return out


class NodeAgent:
    """The node's I/O: one session per gateway address, each with heartbeat, long poll and
    results; task work runs in one shared TaskWorker.

    Gateway replicas (issue #18): given several addresses, the node registers with every replica
    and keeps a session with each (``GatewayLink``), so whichever replica accepted a job finds the
    node in its own task hub; a replica that goes away is retried with back-off while the others
    carry on. A task's result goes back to the replica that sent it.

    Liveness tells busy from dead: the heartbeat has its own thread in a process that does no
    task work, so no task can starve it; a heartbeat that fails (the gateway was briefly slow) is
    retried until the gateway's offline window has passed, not taken as a lost session; and a
    result finished while the node re-registered is still delivered, under the new session.
    """

    def __init__(self, gateway: str, token: str, manifest: Manifest, *, workers: int = 4,
                 pull_wait: float = 10.0, options: WorkerOptions | None = None,
                 credentials: grpc.ChannelCredentials | None = None) -> None:
        self.gateways = gateway_addresses(gateway)
        self.gateway, self.manifest, self.pull_wait = self.gateways[0], manifest, pull_wait
        # TLS: verify the gateway against the deployment CA and present this node's certificate
        # (None: plaintext, which the CLI allows on loopback only with --insecure).
        self._credentials = credentials
        self._metadata = (("authorization", f"Bearer {token}"),)
        self.options = options or WorkerOptions(concurrency=workers)
        self._worker: TaskWorker | None = None
        self._pool = ThreadPoolExecutor(max_workers=max(self.options.concurrency, 1) * 2 * len(self.gateways),
                                        thread_name_prefix="task")
        self.stop_event = threading.Event()
        self.links = [GatewayLink(self, address) for address in self.gateways]
        # Witness of the gateway's release log: its key and view live in the node's own state folder.
        # Replicas serve one log; the links take turns (the witness keeps one view).
        self.witness = NodeWitness(node_state_dir(manifest), manifest.node_name)
        self.witness_lock = threading.Lock()
        self._fault = os.environ.get("XDP_NODE_FAULT")  # test-only fault injection: exit on this task kind
        if self._fault:
            log.warning("XDP_NODE_FAULT=%s is set: this node exits on that task (tests only)", self._fault)

    @property
    def worker(self) -> TaskWorker:
        if self._worker is None:
            self._worker = TaskWorker(self.manifest, self.options)
        return self._worker

    def _declarations(self) -> str:
        return json.dumps([d.to_dict() for d in self.manifest.datasets])

    def stop(self) -> None:
        """Stop serving now: cancels the pending long polls by closing the channels."""
        self.stop_event.set()
        for link in self.links:
            link.close()

    def run(self) -> None:
        """Serve until ``stop_event`` is set; raise NodeFatal if a gateway refuses this node."""
        worker = self.worker  # start the task worker (and its preloading) before the first task arrives
        if self.options.preload:
            # Register once the heavy libraries are loaded: a node that is "up" can run its first
            # training round at once (issue #13: the first round used to wait ~5 s for imports).
            started = time.monotonic()
            if worker.ready.wait(PRELOAD_WAIT_SECONDS):
                log.info("task worker ready in %.1fs", time.monotonic() - started)
            else:
                log.warning("task worker still loading after %.0fs; registering anyway", PRELOAD_WAIT_SECONDS)
        try:
            if len(self.links) == 1:
                self.links[0].run()
                return
            fatal: list[NodeFatal] = []

            def serve(link: GatewayLink) -> None:
                try:
                    link.run()
                except NodeFatal as e:
                    fatal.append(e)
                    self.stop()  # refused by one replica is refused by all (one database)

            threads = [threading.Thread(target=serve, args=(link,), daemon=True, name=f"gateway-{i}")
                       for i, link in enumerate(self.links)]
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            if fatal:
                raise fatal[0]
        finally:
            self._pool.shutdown(wait=False, cancel_futures=True)
            if self._worker is not None:
                self._worker.close()


class GatewayLink:
    """One gateway address: its channel and session, heartbeat, long poll and result delivery."""

    def __init__(self, agent: NodeAgent, address: str) -> None:
        self.agent, self.gateway = agent, address
        self.stop_event = agent.stop_event
        self._metadata = agent._metadata
        self._http_replies = 0
        self._session: Session | None = None
        self._stub: pb_grpc.NodeServiceStub | None = None
        self._connected = threading.Condition()
        self._channel: grpc.Channel | None = None
        self._outbox: queue.Queue[Any] | None = None  # results to send on the open task channel
        self._use_channel = True  # False once a gateway answered UNIMPLEMENTED (an older gateway)

    # ------------------------------------------------------------------ plumbing
    def _register(self, stub: pb_grpc.NodeServiceStub) -> Session:
        m = self.agent.manifest
        resp = stub.Register(pb.RegisterRequest(node_name=m.node_name, region=m.region,
                                                datasets_json=self.agent._declarations(), agent_version=AGENT_VERSION),
                             metadata=self._metadata, timeout=15)
        log.info("registered as %s with %d dataset(s) at %s", m.node_name, len(m.datasets), self.gateway)
        return Session(resp.node_id, resp.session_id, resp.heartbeat_seconds or 2.0)

    def _heartbeat_loop(self, stub: pb_grpc.NodeServiceStub, session: Session, lost: threading.Event) -> None:
        # The gateway marks a node offline after max(3 heartbeats, 6 s) of silence; until that much
        # time has passed without one answered heartbeat, a failure is a slow gateway, not a loss.
        window = max(3 * session.heartbeat_seconds, 6.0)
        last_ok = time.monotonic()
        while not self.stop_event.is_set() and not lost.is_set():
            try:
                r = stub.Heartbeat(pb.HeartbeatRequest(node_id=session.node_id, session_id=session.session_id),
                                   metadata=self._metadata, timeout=max(session.heartbeat_seconds, 2.0))
                if not r.known:
                    lost.set()
                    return
                last_ok = time.monotonic()
            except grpc.RpcError as e:
                if self.stop_event.is_set():
                    return
                if time.monotonic() - last_ok > window:
                    log.warning("no heartbeat answered for %.0fs (%s)", time.monotonic() - last_ok,
                                e.code() if hasattr(e, "code") else e)
                    lost.set()
                    return
            except ValueError:
                return  # the channel was closed under us (reconnect or stop)
            self.stop_event.wait(session.heartbeat_seconds)

    def _current(self, timeout: float) -> tuple[pb_grpc.NodeServiceStub, Session] | None:
        """The stub and session in use now, waiting up to ``timeout`` while the node reconnects."""
        deadline = time.monotonic() + timeout
        with self._connected:
            while (self._stub is None or self._session is None) and not self.stop_event.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._connected.wait(min(left, 0.5))
            if self._stub is None or self._session is None:
                return None
            return self._stub, self._session

    def _submit(self, task: pb.Task, node_id: str) -> None:
        agent = self.agent
        if agent._fault and task.kind == agent._fault:
            log.error("fault injection: exiting on %s", task.kind)
            os._exit(17)
        try:
            header = json.loads(task.header_json or "{}")
        except ValueError:
            header = None
        if isinstance(header, dict):
            out = agent.worker.run(node_id, task.kind, task.job_id, header, dict(task.blobs))
        else:
            out = TaskOutcome(ok=False, error=f"malformed header in {task.kind} task")
        self._deliver(task, out)

    def _deliver(self, task: pb.Task, out: TaskOutcome, patience: float = 60.0) -> None:
        """Send a result on the open task channel, or else by SubmitResult, retrying through
        reconnects: the work is done, do not lose it."""
        with self._connected:
            outbox = self._outbox
        if outbox is not None:
            outbox.put((task, out))
            return
        deadline = time.monotonic() + patience
        while not self.stop_event.is_set():
            cur = self._current(max(deadline - time.monotonic(), 0.0))
            if cur is None:
                break
            stub, session = cur
            try:
                stub.SubmitResult(pb.TaskResult(node_id=session.node_id, session_id=session.session_id,
                                                task_id=task.task_id, ok=out.ok, error=out.error,
                                                header_json=json.dumps(out.header), blobs=out.blobs),
                                  metadata=self._metadata, timeout=60)
                return
            except (grpc.RpcError, ValueError) as e:
                code = e.code() if isinstance(e, grpc.RpcError) and hasattr(e, "code") else type(e).__name__
                if time.monotonic() >= deadline:
                    log.warning("could not submit result of %s: %s", task.kind, code)
                    return
                self.stop_event.wait(0.5)
        log.warning("gave up submitting the result of %s", task.kind)

    def _serve(self, stub: pb_grpc.NodeServiceStub) -> None:
        session = self._register(stub)
        with self._connected:
            self._session, self._stub = session, stub
            self._connected.notify_all()
        lost = threading.Event()
        hb = threading.Thread(target=self._heartbeat_loop, args=(stub, session, lost), daemon=True,
                              name="heartbeat")
        hb.start()
        threading.Thread(target=self._witness_loop, daemon=True, name="witness", args=(stub, session, lost)).start()
        if self._use_channel:
            try:
                self._serve_channel(stub, session, lost)
                return
            except grpc.RpcError as e:
                if not (hasattr(e, "code") and e.code() == grpc.StatusCode.UNIMPLEMENTED):
                    raise
                log.info("gateway %s has no task channel; long polling instead", self.gateway)
                self._use_channel = False
        while not self.stop_event.is_set():
            if lost.is_set():
                raise _Reconnect("gateway no longer knows this session")
            resp = stub.PullTask(pb.PullTaskRequest(node_id=session.node_id, session_id=session.session_id,
                                                    wait_seconds=self.agent.pull_wait),
                                 metadata=self._metadata, timeout=self.agent.pull_wait + 10)
            if not resp.known:
                raise _Reconnect("gateway no longer knows this session")
            if resp.has_task:
                self.agent._pool.submit(self._submit, resp.task, session.node_id)

    def _serve_channel(self, stub: pb_grpc.NodeServiceStub, session: Session, lost: threading.Event) -> None:
        """Tasks and results on one stream (``TaskChannel``) until the node stops or the session ends.

        Results go up through ``_outbox`` (filled by ``_deliver`` from the task threads); those still
        queued when the stream ends are sent again by SubmitResult once the node is connected."""
        outbox: queue.Queue[tuple[pb.Task, TaskOutcome] | None] = queue.Queue()

        def up() -> Any:
            yield pb.TaskResult(node_id=session.node_id, session_id=session.session_id)  # the opening
            while (item := outbox.get()) is not None:
                task, out = item
                yield pb.TaskResult(node_id=session.node_id, session_id=session.session_id, task_id=task.task_id,
                                    ok=out.ok, error=out.error, header_json=json.dumps(out.header), blobs=out.blobs)

        call = stub.TaskChannel(up(), metadata=self._metadata)
        ended = threading.Event()

        def watch() -> None:  # the heartbeat lost the session, or the node stops: end the stream now
            while not ended.is_set() and not self.stop_event.is_set() and not lost.is_set():
                lost.wait(0.25)
            call.cancel()

        with self._connected:
            self._outbox = outbox
        threading.Thread(target=watch, daemon=True, name="channel-watch").start()
        try:
            for resp in call:
                if not resp.known:
                    raise _Reconnect("gateway no longer knows this session")
                if resp.has_task:
                    self.agent._pool.submit(self._submit, resp.task, session.node_id)
        except grpc.RpcError as e:
            if not (hasattr(e, "code") and e.code() == grpc.StatusCode.CANCELLED and
                    (self.stop_event.is_set() or lost.is_set())):
                raise
        finally:
            ended.set()
            with self._connected:
                self._outbox = None
            left = []
            while True:
                try:
                    item = outbox.get_nowait()
                except queue.Empty:
                    break
                if item is not None:
                    left.append(item)
            outbox.put(None)  # ends the request iterator
            for task, out in left:  # not yet sent: by SubmitResult, after reconnecting if need be
                self.agent._pool.submit(self._deliver, task, out)
        if self.stop_event.is_set():
            return
        raise _Reconnect("gateway no longer knows this session" if lost.is_set()
                         else "the gateway ended the task channel")

    def close(self) -> None:
        ch = self._channel
        if ch is not None:
            ch.close()

    def run(self) -> None:
        """Keep a session with this gateway until the node stops; back off while it is away."""
        backoff = 0.5
        while not self.stop_event.is_set():
            connected = self._connect_once()
            if connected:
                backoff = 0.5  # we were connected: start the back-off afresh
            self.stop_event.wait(backoff)
            backoff = min(backoff * 2, 10.0)

    def _witness_loop(self, stub: pb_grpc.NodeServiceStub, session: Session, lost: threading.Event) -> None:
        """``NodeWitness.loop`` for this link, one exchange at a time across the node's links."""
        interval = max(session.heartbeat_seconds, 1.0)
        while not self.stop_event.is_set() and not lost.is_set():
            try:
                with self.agent.witness_lock:
                    self.agent.witness.step(stub, session.node_id, session.session_id, self._metadata,
                                            timeout=max(interval * 4, 5.0))
            except grpc.RpcError as e:
                code = e.code() if hasattr(e, "code") else None
                if code == grpc.StatusCode.UNIMPLEMENTED:
                    log.warning("this gateway does not offer its release log for witnessing")
                    return
                log.debug("witness exchange failed (%s)", code)
            except ValueError:
                return  # the channel was closed under us (reconnect or stop)
            self.stop_event.wait(interval)

    def _connect_once(self) -> bool:
        """One session: register, serve until it ends; True if the gateway accepted us."""
        options = [("grpc.max_receive_message_length", MAX_MESSAGE), ("grpc.max_send_message_length", MAX_MESSAGE),
                   ("grpc.keepalive_time_ms", 20000)]
        credentials = self.agent._credentials
        channel = (grpc.secure_channel(self.gateway, credentials, options=options)
                   if credentials is not None else grpc.insecure_channel(self.gateway, options=options))
        stub = pb_grpc.NodeServiceStub(channel)
        self._channel = channel
        with self._connected:
            self._session, self._stub = None, None
        registered = False
        try:
            self._serve(stub)
        except grpc.RpcError as e:
            if self.stop_event.is_set():
                return True
            registered = self._session is not None
            code = e.code() if hasattr(e, "code") else None
            if code in _FATAL:
                detail = e.details() if hasattr(e, "details") else str(e)
                raise NodeFatal(f"gateway refused node {self.agent.manifest.node_name!r}: {detail}") from None
            details = e.details() if hasattr(e, "details") else ""
            # grpc-core names an HTTP/1.x answer ("Trying to connect an http1.x server"), or over TLS the
            # missing h2 ALPN: retrying an HTTP port never helps, so stop with the fix after a few dials.
            self._http_replies = self._http_replies + 1 if "http1" in str(details) or "ALPN" in str(details) else 0
            if self._http_replies >= HTTP_REPLIES_FATAL:
                raise NodeFatal(f"{self.gateway} looks like an HTTP server ({details}); --gateway takes the "
                                "gateway's gRPC address, default port 50051") from None
            log.warning("gateway %s unreachable (%s: %s); retrying", self.gateway, code,
                        e.details() if hasattr(e, "details") else "")  # e.g. a failed TLS handshake
        except _Reconnect as e:
            registered = True
            log.warning("%s; registering again", e)
        except (ValueError, RuntimeError):
            if not self.stop_event.is_set():
                raise  # otherwise the channel was closed under us by stop()
        finally:
            with self._connected:
                self._session, self._stub = None, None
            channel.close()
        return registered




def describe(manifest: Manifest) -> dict[str, Any]:
    return {"node": manifest.node_name, "region": manifest.region,
            "datasets": [d.name for d in manifest.datasets]}
