"""The nodes' gRPC endpoint: thin — authenticate, convert, call the store and the task hub."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from xdp_compute.domain.manifest import parse_declaration
from xdp_compute.domain.names import check_node_name, check_region
from xdp_compute.errors import BadRequest, Unauthorized, XdpError
from xdp_compute.gateway.hub import Reply, TaskHub
from xdp_compute.gateway.registration import RegistrationLimits
from xdp_compute.gateway.release import ReleaseLog
from xdp_compute.gateway.serde import parse_json_list, reply_from_proto, task_to_proto
from xdp_compute.gateway.store import PrincipalView, Store
from xdp_compute.gateway.tls import check_peer, peer_certificate
from xdp_compute.gateway.witnessing import accept_cosignature, checkpoint_offer
from xdp_compute.v1 import node_pb2 as pb
from xdp_compute.v1 import node_pb2_grpc as pb_grpc

log = logging.getLogger("xdp.gateway.grpc")

# How often an idle task channel carries a sign of life (the node checks its own state then).
CHANNEL_IDLE_SECONDS = 10.0

_STATUS = {400: grpc.StatusCode.INVALID_ARGUMENT, 401: grpc.StatusCode.UNAUTHENTICATED,
           403: grpc.StatusCode.PERMISSION_DENIED, 404: grpc.StatusCode.NOT_FOUND,
           409: grpc.StatusCode.FAILED_PRECONDITION, 413: grpc.StatusCode.RESOURCE_EXHAUSTED,
           429: grpc.StatusCode.RESOURCE_EXHAUSTED}


class NodeService(pb_grpc.NodeServiceServicer):
    """Every call is checked in full — bearer token (known, not revoked, not expired), holder role,
    TLS certificate bound to the holder, the node owned by the token's holder, the session — but
    the answers that do not change are remembered (issue #13): a token once authenticated is
    looked up in memory after one read of the auth epoch (``Store.cached_principal``), and a node's
    holder after its first check. With SQLite those checks run on the event loop (microseconds);
    only a cache miss, or a database server, goes through a worker thread. The caches are this
    process's: see ``Store.__init__`` for what another gateway replica would need.
    """

    def __init__(self, store: Store, hub: TaskHub, heartbeat_seconds: float,
                 capture: Callable[[str, bytes], None] | None = None,
                 limits: RegistrationLimits | None = None) -> None:
        self.store, self.hub, self.heartbeat_seconds = store, hub, heartbeat_seconds
        self.capture = capture
        self.limits = limits or RegistrationLimits()
        self._inline = store.epoch_is_local
        # (committed size, witness's old size) -> add-checkpoint body: a committed tree never
        # changes and the signature is deterministic (Ed25519), so the body is too.
        self._offers: dict[tuple[int, int], str] = {}

    async def _principal(self, token: str | None) -> PrincipalView:
        if self._inline:
            hit = self.store.cached_principal(token)
            if hit is not None:
                return hit
        return await asyncio.to_thread(self.store.authenticate_cached, token)

    async def _guard(self, context: grpc.aio.ServicerContext, method: str, request: Any,
                     fn: Callable[[PrincipalView], Awaitable[Any]], token: str | None = None) -> Any:
        """Authenticate (the call's token, or ``token`` already read from a stream's metadata), check
        the role and the TLS peer, run ``fn``; errors become gRPC status codes. ``request`` None:
        a message of a stream already captured."""
        if self.capture is not None and request is not None:
            self.capture(method, request.SerializeToString())
        try:
            if token is None:
                token = bearer_token(context)
            principal = await self._principal(token)
            if principal.role != "holder":
                await context.abort(grpc.StatusCode.PERMISSION_DENIED, "only holder tokens may run nodes")
            # TLS: the node's certificate must name this holder (and, on Register, this node).
            check_peer(context, principal, request.node_name if method == "Register" else None)
            return await fn(principal)
        except grpc.aio.AbortError:
            raise
        except XdpError as e:
            await context.abort(_STATUS.get(e.status, grpc.StatusCode.INTERNAL), e.detail)
        except Exception:
            log.exception("gRPC %s failed", method)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error (details are in the gateway's log)")

    async def _owns(self, principal: PrincipalView, node_id: str) -> None:
        known = self.store.owns_node_cached(principal, node_id)  # a dict lookup: no thread hop
        if known is None:
            await asyncio.to_thread(self.store.check_node_owner, principal, node_id)
        elif not known:
            raise Unauthorized("this token does not own that node")

    async def _node(self, principal: PrincipalView, node_id: str, session_id: str) -> bool:
        await self._owns(principal, node_id)
        if not self.hub.session_ok(node_id, session_id):
            return False
        if self.hub.heard_from(node_id):
            await asyncio.to_thread(self.store.touch_node, node_id)
        return True

    async def Register(self, request: pb.RegisterRequest, context: grpc.aio.ServicerContext) -> pb.RegisterResponse:
        async def run(p: PrincipalView) -> pb.RegisterResponse:
            self.limits.take(p.id, p.name)  # per holder token, before any parsing (issue #12)
            check_node_name(request.node_name)  # a raw client skips the node's own manifest check
            check_region(request.region)
            decls = [parse_declaration(d, origin=f"node {request.node_name}")
                     for d in parse_json_list(request.datasets_json, "datasets_json")]
            facts = {"version": check_agent_version(request.agent_version), "certificate": peer_certificate(context)}
            node_id = await asyncio.to_thread(self.store.register_node, p, request.node_name, request.region,
                                              [d.to_dict() for d in decls],
                                              max_nodes_per_holder=self.limits.max_nodes_per_holder, facts=facts)
            self.store.remember_owner(node_id, p.id, request.node_name)
            sid = self.hub.new_session(node_id)
            self.hub.registered(node_id)
            log.info("node %s registered (%d datasets)", request.node_name, len(decls))
            return pb.RegisterResponse(node_id=node_id, session_id=sid, heartbeat_seconds=self.heartbeat_seconds)

        return await self._guard(context, "Register", request, run)

    async def Heartbeat(self, request: pb.HeartbeatRequest, context: grpc.aio.ServicerContext) -> pb.HeartbeatResponse:
        # The session id (128 random bits, known to the node and the gateway only) is proof
        # enough of life: record it before the database is asked, so a busy database cannot make
        # a live node look dead. The token is still checked below.
        if self.hub.session_ok(request.node_id, request.session_id) and self.hub.heard_from(request.node_id):
            await asyncio.to_thread(self.store.touch_node, request.node_id)

        async def run(p: PrincipalView) -> pb.HeartbeatResponse:
            return pb.HeartbeatResponse(known=await self._node(p, request.node_id, request.session_id))

        return await self._guard(context, "Heartbeat", request, run)

    async def PullTask(self, request: pb.PullTaskRequest, context: grpc.aio.ServicerContext) -> pb.PullTaskResponse:
        async def run(p: PrincipalView) -> pb.PullTaskResponse:
            if not await self._node(p, request.node_id, request.session_id):
                return pb.PullTaskResponse(has_task=False, known=False)
            wait = request.wait_seconds
            wait = min(max(wait, 0.0), 30.0) if math.isfinite(wait) else 0.0  # NaN compares false
            task = await self.hub.pull(request.node_id, wait)
            if task is None:
                return pb.PullTaskResponse(has_task=False, known=True)
            return pb.PullTaskResponse(has_task=True, task=task_to_proto(task), known=True)

        return await self._guard(context, "PullTask", request, run)

    async def SubmitResult(self, request: pb.TaskResult, context: grpc.aio.ServicerContext) -> pb.SubmitResultResponse:
        async def run(p: PrincipalView) -> pb.SubmitResultResponse:
            # A result computed under an earlier session of the same node (it re-registered while
            # the task ran) still counts: the token owns the node and the task was sent to it.
            await self._owns(p, request.node_id)
            ok = self.hub.submit(request.node_id, request.task_id, reply_from_proto(request))
            return pb.SubmitResultResponse(accepted=ok)

        return await self._guard(context, "SubmitResult", request, run)

    async def TaskChannel(self, request_iterator: Any, context: grpc.aio.ServicerContext) -> None:
        """PullTask and SubmitResult on one stream per node session (issue #13: two unary calls per
        task cost the gateway ~0.8 ms of CPU; a message each way on an open stream ~0.2 ms).

        The token is authenticated when the stream opens and re-checked — the same in-memory check
        every unary call makes, one read of the auth epoch — before every task sent and every result
        taken, with the node's ownership and session: a revocation, a rotation or a new session
        ends the stream at the next message, as it would refuse the next unary call."""
        token = bearer_token(context)
        opening = await self._channel_open(context, token, request_iterator)
        if opening is None:
            return
        node_id, session_id = opening
        reader = asyncio.ensure_future(self._channel_results(context, token, node_id, request_iterator))
        pull: asyncio.Future[Any] | None = None
        try:
            while not reader.done():
                pull = asyncio.ensure_future(self.hub.pull(node_id, CHANNEL_IDLE_SECONDS))
                await asyncio.wait({pull, reader}, return_when=asyncio.FIRST_COMPLETED)
                if not pull.done():  # the node closed its side (or the stream broke)
                    break
                task = pull.result()
                if not await self._channel_still_valid(context, token, node_id, session_id):
                    await context.write(pb.PullTaskResponse(has_task=False, known=False))
                    break
                if task is None:
                    await context.write(pb.PullTaskResponse(has_task=False, known=True))  # a sign of life
                else:
                    await context.write(pb.PullTaskResponse(has_task=True, task=task_to_proto(task), known=True))
        finally:
            # A pull left waiting would take the node's next task from its queue and lose it
            # (the node may already be on a new stream): cancel it, whatever ended the stream.
            if pull is not None and not pull.done():
                pull.cancel()
            if not reader.done():
                reader.cancel()
            elif not reader.cancelled() and reader.exception() is not None:
                raise reader.exception()  # type: ignore[misc]  # an abort raised by the reader

    async def _channel_open(self, context: grpc.aio.ServicerContext, token: str | None,
                            request_iterator: Any) -> tuple[str, str] | None:
        """Authenticate the opening message: (node id, session id), or None after telling the node
        its session is unknown (it registers again)."""
        first = None
        async for first in request_iterator:
            break
        if first is None:
            return None

        async def run(p: PrincipalView) -> tuple[str, str] | None:
            if first.task_id or not await self._node(p, first.node_id, first.session_id):
                await context.write(pb.PullTaskResponse(has_task=False, known=False))
                return None
            return first.node_id, first.session_id

        return await self._guard(context, "TaskChannel", first, run)

    async def _channel_still_valid(self, context: grpc.aio.ServicerContext, token: str | None, node_id: str,
                                   session_id: str) -> bool:
        """The per-message check: token (aborts the stream if revoked), ownership, session."""
        async def run(p: PrincipalView) -> bool:
            if p.role != "holder":
                return False
            return await self._node(p, node_id, session_id)

        return bool(await self._guard(context, "TaskChannel", None, run, token=token))

    async def _channel_results(self, context: grpc.aio.ServicerContext, token: str | None, node_id: str,
                               request_iterator: Any) -> None:
        async for r in request_iterator:
            if self.capture is not None:
                self.capture("SubmitResult", r.SerializeToString())  # recorded as the unary call's message

            async def run(p: PrincipalView, r: pb.TaskResult = r) -> None:
                # As SubmitResult: a result of an earlier session of the same node still counts.
                await self._owns(p, r.node_id or node_id)
                try:
                    reply = reply_from_proto(r)
                except BadRequest as e:  # a malformed result fails its task at once (not at its timeout)
                    reply = Reply(ok=False, header={}, blobs={}, error=f"malformed result: {e.detail}")
                self.hub.submit(r.node_id or node_id, r.task_id, reply)

            await self._guard(context, "TaskChannel", None, run, token=token)

    # -- witnessing the release log (gateway/witnessing.py); set by the runtime ------------
    release_log: ReleaseLog | None = None

    async def GetCheckpoint(self, request: pb.CheckpointRequest,
                            context: grpc.aio.ServicerContext) -> pb.CheckpointOffer:
        async def run(p: PrincipalView) -> pb.CheckpointOffer:
            lg = self.release_log
            if lg is None or not await self._node(p, request.node_id, request.session_id):
                return pb.CheckpointOffer()
            # The size this replica knows (caught up from the store only if the witness saw more).
            key = (lg.at_least(int(request.old_size)), int(request.old_size))
            body = self._offers.get(key)
            if body is None:
                body = await asyncio.to_thread(checkpoint_offer, lg, key[1])
                if len(self._offers) > 4096:
                    self._offers.clear()
                # Keyed by the size read before the offer was built: the offer may be of a newer
                # size (an append committed meanwhile), which nodes take as well; keep it only if not.
                if lg.local_size == key[0]:
                    self._offers[key] = body
            return pb.CheckpointOffer(add_checkpoint=body, log_vkey=lg.vkey)

        return await self._guard(context, "GetCheckpoint", request, run)

    async def AddCosignature(self, request: pb.CosignatureRequest,
                             context: grpc.aio.ServicerContext) -> pb.CosignatureResponse:
        async def run(p: PrincipalView) -> pb.CosignatureResponse:
            lg = self.release_log
            if lg is None:
                return pb.CosignatureResponse(accepted=False)
            def cosign() -> None:  # one thread hop for the node's row and the cosignature's write
                node = self.store.node_ref(p, request.node_id)
                accept_cosignature(lg, node, bytes(request.witness_public_key), request.checkpoint,
                                   request.cosignature)

            await asyncio.to_thread(cosign)
            return pb.CosignatureResponse(accepted=True)

        return await self._guard(context, "AddCosignature", request, run)


def bearer_token(context: grpc.aio.ServicerContext) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
            return value[7:]
    return None


def file_capture(path: str) -> Callable[[str, bytes], None]:
    """Test-only: append every request the gateway receives as 'method<TAB>hex' lines."""

    def capture(method: str, data: bytes) -> None:
        with open(path, "a") as f:
            f.write(f"{time.time():.6f}\t{method}\t{data.hex()}\n")

    return capture


def build_server(service: NodeService, max_message_bytes: int) -> grpc.aio.Server:
    # grpc.so_reuseport=0: gRPC sets SO_REUSEPORT by default, which lets a second gateway bind the
    # same port and take half of the nodes' connections; a busy port must be an error instead.
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", max_message_bytes),
                                      ("grpc.max_send_message_length", max_message_bytes),
                                      ("grpc.so_reuseport", 0)])
    pb_grpc.add_NodeServiceServicer_to_server(service, server)
    return server


def check_agent_version(raw: str) -> str | None:
    """The version a node reports at Register, shown to its holder: at most 64 printable ASCII
    characters (None when it reports none)."""
    if not raw:
        return None
    if len(raw) > 64 or not all(" " <= ch <= "~" for ch in raw):
        raise BadRequest("agent_version must be at most 64 printable ASCII characters")
    return raw
