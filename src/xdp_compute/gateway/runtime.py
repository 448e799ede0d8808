"""Background parts of a running gateway: the gRPC server for nodes and the liveness monitor."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

from xdp_compute.gateway.grpc_service import NodeService, build_server, file_capture
from xdp_compute.gateway.hub import PERSIST_LAST_SEEN_SECONDS
from xdp_compute.gateway.registration import RegistrationLimits
from xdp_compute.gateway.services import Services
from xdp_compute.gateway.tls import bind_grpc

log = logging.getLogger("xdp.gateway")
# A monitor tick later than this means the event loop was blocked, not that nodes were silent.
LOOP_LAG_GRACE_SECONDS = 1.0
# Worker threads for blocking work (database, planning, crypto) called with asyncio.to_thread;
# the default (cores + 4) let a few slow calls queue every node's heartbeat behind them.
BLOCKING_THREADS = 64


def offline_window(heartbeat_seconds: float, missed: int) -> float:
    """Seconds of silence after which a node is offline: ``missed`` heartbeats, at least 6 s."""
    return max(heartbeat_seconds * missed, 6.0)


def stale_before(svc: Services, window: float) -> float:
    """Nodes last seen before this time are offline. One gateway: every node (no session survives
    a restart). Replicas on PostgreSQL: a replica stores a live node's last_seen at least every
    ``PERSIST_LAST_SEEN_SECONDS``, so one not stored for that plus the offline window is gone."""
    if not svc.leases.enabled:
        return float("inf")
    return time.time() - (PERSIST_LAST_SEEN_SECONDS + window)


async def start_runtime(svc: Services) -> Callable[[], Awaitable[None]]:
    """Start gRPC and monitors; return a coroutine function that stops them."""
    s = svc.settings
    asyncio.get_running_loop().set_default_executor(
        ThreadPoolExecutor(max_workers=BLOCKING_THREADS, thread_name_prefix="blocking"))
    capture = file_capture(s.grpc_capture_path) if s.grpc_capture_path else None
    if capture is not None:
        log.warning("XDP_GRPC_CAPTURE is set: every gRPC request is recorded to a file (tests only)")
    limits = RegistrationLimits(s.max_nodes_per_holder, s.registrations_per_minute)
    node_service = NodeService(svc.store, svc.hub, s.heartbeat_seconds, capture, limits=limits)
    node_service.release_log = svc.release_log  # nodes witness the release log
    server = build_server(node_service, s.max_grpc_message_bytes)
    bound = bind_grpc(server, s)  # TLS with required node certificates, or --insecure on loopback
    if bound == 0:
        raise RuntimeError(f"cannot bind gRPC to {s.grpc_host}:{s.grpc_port}")
    from xdp_compute.gateway.recovery import recover_interrupted_jobs, recover_orphaned_jobs

    window = offline_window(s.heartbeat_seconds, s.offline_after_missed)
    # No node has a session with this fresh process: all are offline until they register again
    # (before serving, so a node that registers at once is not marked offline after it). Replicas
    # on PostgreSQL (issue #18) share the store: only nodes no replica has heard from lately.
    await asyncio.to_thread(svc.store.mark_offline_stale, stale_before(svc, window))
    await server.start()
    svc.grpc_address = (s.grpc_host, bound)
    log.info("gRPC for nodes on %s:%d", s.grpc_host, bound, extra={"grpc_address": f"{s.grpc_host}:{bound}"})

    await asyncio.to_thread(recover_interrupted_jobs, svc)

    async def monitor() -> None:
        # A node is offline once it has been silent for `window` seconds of gateway time during
        # which the gateway itself was listening. If this loop was blocked (its tick came late),
        # the nodes' heartbeats could not be heard: they get a full window again.
        tick = max(s.heartbeat_seconds / 2, 0.2)
        last, grace_until = time.monotonic(), 0.0
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            lag, last = now - last - tick, now
            if lag > LOOP_LAG_GRACE_SECONDS:
                log.warning("gateway event loop was blocked for %.1fs; not judging node liveness for %.0fs",
                            lag, window)
                grace_until = now + window
            if now < grace_until:
                continue
            try:
                gone = svc.hub.silent_for(window)
                for node_id in gone:
                    log.info("node %s marked offline (silent for %.0fs)", node_id, window)
                    svc.hub.went_offline(node_id)
                if gone:
                    await asyncio.to_thread(svc.store.mark_offline, gone)
                    # Heard from again while the store was written: the store must say online.
                    back = [n for n in gone if svc.hub.is_online(n)]
                    for node_id in back:
                        await asyncio.to_thread(svc.store.touch_node, node_id)
            except Exception:
                log.exception("liveness monitor")
            last = time.monotonic()  # the monitor's own database wait is not loop lag

    async def orphans() -> None:
        # Replicas on PostgreSQL: fail and log jobs whose replica died, and mark offline the
        # nodes no replica has heard from (each replica marks only the nodes it lost itself).
        while True:
            await asyncio.sleep(s.orphan_check_seconds)
            try:
                await asyncio.to_thread(recover_orphaned_jobs, svc)
                await asyncio.to_thread(svc.store.mark_offline_stale, stale_before(svc, window))
            except Exception:
                log.exception("orphaned-job check")

    tasks = [asyncio.create_task(monitor())]
    if svc.leases.enabled:
        tasks.append(asyncio.create_task(orphans()))

    async def stop() -> None:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await server.stop(grace=1.0)
        await asyncio.to_thread(svc.leases.close)

    return stop
