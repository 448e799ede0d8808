"""Background parts of a running gateway: the gRPC server for nodes and the liveness monitor."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from xdp_compute.gateway.app import Services
from xdp_compute.gateway.grpc_service import NodeService, build_server, file_capture

log = logging.getLogger("xdp.gateway")


async def start_runtime(svc: Services) -> Callable[[], Awaitable[None]]:
    """Start gRPC and monitors; return a coroutine function that stops them."""
    s = svc.settings
    capture = file_capture(s.grpc_capture_path) if s.grpc_capture_path else None
    if capture is not None:
        log.warning("XDP_GRPC_CAPTURE is set: every gRPC request is recorded to a file (tests only)")
    server = build_server(NodeService(svc.store, svc.hub, s.heartbeat_seconds, capture), s.max_grpc_message_bytes)
    bound = server.add_insecure_port(f"{s.grpc_host}:{s.grpc_port}")
    if bound == 0:
        raise RuntimeError(f"cannot bind gRPC to {s.grpc_host}:{s.grpc_port}")
    await server.start()
    log.info("gRPC for nodes on %s:%d", s.grpc_host, bound)
    from xdp_compute.gateway.jobs import recover_interrupted_jobs

    # No node has a session with this fresh process: all are offline until they register again.
    await asyncio.to_thread(svc.store.mark_offline_stale, float("inf"))

    await asyncio.to_thread(recover_interrupted_jobs, svc)

    async def monitor() -> None:
        # A node is offline after `offline_after_missed` heartbeats that did not arrive.
        while True:
            await asyncio.sleep(max(s.heartbeat_seconds / 2, 0.2))
            # At least 6 s: a node busy importing torch or planning DP-SGD can hold the GIL for a
            # couple of seconds, starving its heartbeat thread; that is not a drop-out.
            cutoff = time.time() - max(s.heartbeat_seconds * s.offline_after_missed, 6.0)
            try:
                gone = await asyncio.to_thread(svc.store.mark_offline_stale, cutoff)
                for node_id in gone:
                    log.info("node %s marked offline", node_id)
                    svc.hub.fail_node(node_id, "went offline")
            except Exception:
                log.exception("liveness monitor")

    task = asyncio.create_task(monitor())

    async def stop() -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await server.stop(grace=1.0)

    return stop
