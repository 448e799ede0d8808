"""Drive one secure-aggregation session (Bonawitz et al. 2017) over the nodes' task channel.

The gateway plays the server of ``xdp_compute.crypto.secagg``: it only routes keys and
encrypted shares, and at the end learns the sum of the surviving nodes' (noisy) vectors — never
a single node's vector. Nodes that do not answer a round in time count as dropped; fewer than t
survivors abort with ``ProtocolAborted``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from xdp_compute.crypto.secagg import Phase, SecAggConfig, SecAggServer, default_neighbours
from xdp_compute.errors import BadRequest, XdpError
from xdp_compute.gateway.hub import NodeDropped, Reply, Task, TaskHub

log = logging.getLogger("xdp.gateway.secagg")


@dataclass
class SecureSumResult:
    total: np.ndarray                      # uint64 sum over the U3 survivors, mod 2^64
    survivors: list[str]                   # node ids whose input is in the total (U3)
    first_replies: dict[str, dict[str, Any]] = field(default_factory=dict)  # round-0 headers
    dropped: dict[str, str] = field(default_factory=dict)   # node id -> phase where it dropped
    refused: dict[str, str] = field(default_factory=dict)   # node id -> its error, if it answered round 0 with one


async def _gather(hub: TaskHub, tasks: dict[str, Task], timeout: float,
                  errors: dict[str, str] | None = None) -> dict[str, Reply]:
    """Each node's answer to its task; silent nodes are absent, failed ones land in ``errors``."""

    async def one(node: str, task: Task) -> tuple[str, Reply | None]:
        try:
            r = await hub.call(node, task, timeout)
        except NodeDropped:
            return node, None
        if not r.ok:
            log.warning("node %s failed %s: %s", node, task.kind, r.error)
            if errors is not None:
                errors[node] = r.error
            return node, None
        return node, r

    results = await asyncio.gather(*(one(n, t) for n, t in tasks.items()))
    return {n: r for n, r in results if r is not None}


async def secure_sum(hub: TaskHub, job_id: str, session_id: str, participants: list[str], vector_length: int,
                     begin: Callable[[str], Task], *, threshold: int | None, round_timeout: float,
                     begin_timeout: float) -> SecureSumResult:
    """Run rounds 0-4; ``begin(node)`` builds each node's round-0 task (it computes its input then).

    The round-0 task header gets a ``secagg`` member with the session configuration.
    """
    n = len(participants)
    neighbours = default_neighbours(n) if n > 40 else None
    config = SecAggConfig(session_id=session_id, participants=participants, vector_length=vector_length,
                          threshold=threshold, neighbours=neighbours)
    sconf = {"session_id": session_id, "participants": participants, "vector_length": vector_length,
             "threshold": config.t, "neighbours": neighbours}
    server = SecAggServer(config)
    dropped: dict[str, str] = {}

    def feed(replies: dict[str, Reply], expected: list[str], phase: str) -> None:
        for node in expected:
            r = replies.get(node)
            if r is None or "secagg" not in r.blobs:
                dropped.setdefault(node, phase)
                continue
            try:
                server.receive(node, r.blobs["secagg"])
            except XdpError as e:
                if isinstance(e, BadRequest) or e.status in (400, 409):
                    log.warning("node %s sent a bad %s message: %s", node, phase, e.detail)
                    dropped.setdefault(node, phase)
                else:
                    raise

    # Round 0 (AdvertiseKeys): each node computes its input and advertises two public keys.
    tasks = {}
    for node in participants:
        t = begin(node)
        t.header["secagg"] = sconf
        tasks[node] = t
    refused: dict[str, str] = {}
    replies = await _gather(hub, tasks, begin_timeout, refused)
    first = {node: r.header for node, r in replies.items()}
    feed(replies, participants, "advertise_keys")
    server.close_advertise_keys()
    # Round 1 (ShareKeys): route the roster; collect encrypted Shamir shares.
    u1 = list(server.survivors(Phase.ADVERTISE_KEYS))
    replies = await _gather(hub, {u: Task("secagg_share_keys", job_id, {"session_id": session_id},
                                          {"secagg": server.roster_for(u).encode()}) for u in u1}, round_timeout)
    feed(replies, u1, "share_keys")
    server.close_share_keys()
    # Round 2 (MaskedInputCollection): deliver each node its shares; collect masked vectors.
    u2 = list(server.survivors(Phase.SHARE_KEYS))
    replies = await _gather(hub, {u: Task("secagg_masked_input", job_id, {"session_id": session_id},
                                          {"secagg": server.shares_for(u).encode()}) for u in u2}, round_timeout)
    feed(replies, u2, "masked_input")
    request = server.close_masked_input()
    # Round 4 (Unmasking): survivors reveal self-mask shares of U3 and key shares of the dropped.
    u3 = list(server.survivors(Phase.MASKED_INPUT))
    replies = await _gather(hub, {u: Task("secagg_unmask", job_id, {"session_id": session_id},
                                          {"secagg": request.encode()}) for u in u3}, round_timeout)
    feed(replies, u3, "unmask")
    # Shamir reconstruction and mask expansion are CPU work: off the event loop.
    total = await asyncio.to_thread(server.close_unmask)
    return SecureSumResult(total=total, survivors=u3, first_replies={k: v for k, v in first.items() if k in u3},
                           dropped=dropped, refused=refused)
