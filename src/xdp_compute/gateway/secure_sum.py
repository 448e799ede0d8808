"""Drive one secure-aggregation session (Bonawitz et al. 2017) over the nodes' task channel.

The gateway plays the server of ``xdp_compute.crypto.secagg``: it only routes signed keys,
encrypted shares and signed survivor sets, and at the end learns the sum of the surviving
nodes' (noisy) vectors — never a single node's vector. Nodes that do not answer a round in time
count as dropped; fewer than t survivors abort with ``ProtocolAborted``. A gateway that deviates
(substitutes keys, tells nodes different survivor sets) makes the nodes abort: they verify
every signature themselves (``crypto.secagg.identity``).

``XDP_TEST_GATEWAY_SWAP_KEYS`` (tests only) makes this gateway deviate the way an attacker would:
in Round 1 it hands every node a roster whose peers' keys are the gateway's own, so that it
could compute every pairwise mask and decrypt every share (``deviating_roster``).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from xdp_compute.contract import (
    Record,
    SecAggConsistency,
    SecAggMaskedInput,
    SecAggMessage,
    SecAggSession,
    SecAggShareKeys,
    SecAggUnmask,
)
from xdp_compute.crypto.secagg import (
    KeyRoster,
    NodeKeys,
    Phase,
    SecAggConfig,
    SecAggParameters,
    SecAggServer,
    complete_graph_parameters,
    secagg_plus_parameters,
)
from xdp_compute.crypto.secagg.config import COMPLETE_GRAPH_MAX_NODES
from xdp_compute.errors import BadRequest, ProtocolAborted, XdpError
from xdp_compute.gateway.hub import NodeDropped, NodeFailed, TaskHub

log = logging.getLogger("xdp.gateway.secagg")


@dataclass
class SecureSumResult:
    total: np.ndarray                      # uint64 sum over the U3 survivors, mod 2^64
    survivors: list[str]                   # node ids whose input is in the total (U3)
    first_replies: dict[str, Any] = field(default_factory=dict)  # round-0 replies (QueryBegun, TrainRoundBegun)
    dropped: dict[str, str] = field(default_factory=dict)   # node id -> phase where it dropped
    # node id -> its error, if it answered round 0 with one (or round 2, with ``late_input``)
    refused: dict[str, str] = field(default_factory=dict)


def session_parameters(n: int, *, complete_threshold: int, dropout_rate: float, corrupt_rate: float,
                       colluding: int) -> SecAggParameters:
    """The graph and threshold of a session over ``n`` nodes, decided at planning.

    Up to ``COMPLETE_GRAPH_MAX_NODES`` nodes: the complete graph (Bonawitz et al. 2017) with
    ``complete_threshold`` (the caller's rule, e.g. the parties' majority), judged at the rates.
    Above: SecAgg+ with the k and t of ``secagg_plus_parameters`` (Bell et al. 2020) at the
    gateway's stated drop-out and corruption rates, honouring the absolute collusion margin
    ``colluding`` too; raises ``SecAggUnconfigurable`` (409) when none fits.
    """
    if n <= COMPLETE_GRAPH_MAX_NODES:
        return complete_graph_parameters(n, complete_threshold, dropout_rate=dropout_rate,
                                         corrupt_rate=corrupt_rate, colluding=colluding)
    return secagg_plus_parameters(n, dropout_rate=dropout_rate, corrupt_rate=corrupt_rate, colluding=colluding)


def deviating_roster(roster: KeyRoster, recipient: str) -> KeyRoster:
    """Test-only attack: the recipient's peers' keys replaced by fresh keys this gateway holds.

    The certificates and signatures stay as the peers sent them (the gateway has no peer's
    identity key to sign the new keys with), so an authenticated node refuses the roster.
    """
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    def fresh() -> bytes:
        return X25519PrivateKey.generate().public_key().public_bytes_raw()

    keys = {v: k if v == recipient else NodeKeys(fresh(), fresh(), k.certificate, k.signature)
            for v, k in roster.keys.items()}
    return KeyRoster(roster.session_id, keys)


def roster_for(server: SecAggServer, node: str) -> bytes:
    """Round 1 input for ``node``: its roster (deviating only under the test-only switch)."""
    roster = server.roster_for(node)
    if os.environ.get("XDP_TEST_GATEWAY_SWAP_KEYS"):
        log.warning("XDP_TEST_GATEWAY_SWAP_KEYS is set: this gateway substitutes peers' keys (tests only)")
        roster = deviating_roster(roster, node)
    return roster.encode()


async def _gather(hub: TaskHub, job_id: str, requests: dict[str, Record], timeout: float,
                  errors: dict[str, str] | None = None) -> dict[str, SecAggMessage]:
    """Each node's typed answer; silent nodes are absent, failed ones land in ``errors``."""

    async def one(node: str, request: Record) -> tuple[str, SecAggMessage | None]:
        try:
            r = await hub.ask(node, job_id, request, timeout)
        except NodeDropped:
            return node, None
        except (NodeFailed, XdpError) as e:
            error = e.error if isinstance(e, NodeFailed) else e.detail
            log.warning("node %s failed %s: %s", node, request.KIND, error)
            if errors is not None:
                errors[node] = error
            return node, None
        return node, r if isinstance(r, SecAggMessage) else None

    results = await asyncio.gather(*(one(n, t) for n, t in requests.items()))
    return {n: r for n, r in results if r is not None}


async def secure_sum(hub: TaskHub, job_id: str, session_id: str, participants: list[str], vector_length: int,
                     begin: Callable[[str, SecAggSession], Record], *, threshold: int | None,
                     neighbours: int | None = None, round_timeout: float,
                     begin_timeout: float, late_input: bool = False) -> SecureSumResult:
    """Run rounds 0-4; ``begin(node, session)`` builds each node's round-0 request (the node
    computes its input then), which carries the session configuration. ``threshold`` and
    ``neighbours`` (SecAgg+ degree k, None for the complete graph) come from the plan
    (``session_parameters``); nodes check them against their own rule before computing.

    ``late_input``: the nodes answer round 0 once their checks and charge are done and compute
    their input meanwhile (the plain query, issue #13), so round 2 is where a data step ends: it
    gets ``begin_timeout``, and a node that answers it with an error is a refusal, exactly as
    one answering round 0 with an error (its cause may depend on the node's data: an abort is
    then charged, ``QueryService.aborted``), not a silent drop-out."""
    config = SecAggConfig(session_id=session_id, participants=participants, vector_length=vector_length,
                          threshold=threshold, neighbours=neighbours)
    session = SecAggSession(session_id=session_id, participants=participants, vector_length=vector_length,
                            threshold=config.t, neighbours=neighbours)
    server = SecAggServer(config)
    dropped: dict[str, str] = {}
    refused: dict[str, str] = {}
    try:
        return await _rounds(hub, job_id, session_id, participants, session, server, begin, refused, dropped,
                             round_timeout, begin_timeout, late_input)
    except ProtocolAborted as e:
        e.node_errors = dict(refused)  # type: ignore[attr-defined]  # errors in the data step (round 0 or 2)
        raise


async def _rounds(hub: TaskHub, job_id: str, session_id: str, participants: list[str], session: SecAggSession,
                  server: SecAggServer, begin: Callable[[str, SecAggSession], Record], refused: dict[str, str],
                  dropped: dict[str, str], round_timeout: float, begin_timeout: float,
                  late_input: bool) -> SecureSumResult:
    def feed(replies: dict[str, SecAggMessage], expected: list[str], phase: str) -> None:
        for node in expected:
            r = replies.get(node)
            if r is None:
                dropped.setdefault(node, phase)
                continue
            try:
                server.receive(node, r.secagg)
            except XdpError as e:
                if isinstance(e, BadRequest) or e.status in (400, 409):
                    log.warning("node %s sent a bad %s message: %s", node, phase, e.detail)
                    dropped.setdefault(node, phase)
                else:
                    raise

    # Round 0 (AdvertiseKeys): each node computes its input (or, with ``late_input``, starts to)
    # and advertises two public keys.
    replies = await _gather(hub, job_id, {node: begin(node, session) for node in participants}, begin_timeout,
                            refused)
    first = dict(replies)
    feed(replies, participants, "advertise_keys")
    server.close_advertise_keys()
    # Round 1 (ShareKeys): route the roster; collect encrypted Shamir shares.
    u1 = list(server.survivors(Phase.ADVERTISE_KEYS))
    replies = await _gather(hub, job_id, {u: SecAggShareKeys(session_id=session_id,
                                                             secagg=roster_for(server, u)) for u in u1},
                            round_timeout)
    feed(replies, u1, "share_keys")
    server.close_share_keys()
    # Round 2 (MaskedInputCollection): deliver each node its shares; collect masked vectors (with
    # ``late_input``, each node's data step ends here: its time and its errors are round 0's).
    u2 = list(server.survivors(Phase.SHARE_KEYS))
    replies = await _gather(hub, job_id, {u: SecAggMaskedInput(session_id=session_id,
                                                               secagg=server.shares_for(u).encode()) for u in u2},
                            begin_timeout if late_input else round_timeout, refused if late_input else None)
    feed(replies, u2, "masked_input")
    check = server.close_masked_input()
    # Round 3 (ConsistencyCheck): every survivor signs the survivor set U3 it was told.
    u3 = list(server.survivors(Phase.MASKED_INPUT))
    consistency = SecAggConsistency(session_id=session_id, secagg=check.encode())
    replies = await _gather(hub, job_id, dict.fromkeys(u3, consistency), round_timeout)
    feed(replies, u3, "consistency")
    server.close_consistency()
    # Round 4 (Unmasking): with t signatures over U3, survivors reveal self-mask shares of U3 and
    # key shares of the dropped.
    u4 = list(server.survivors(Phase.CONSISTENCY))
    # Each node gets U3 and its own share holders' signatures, the only ones it counts (O(k), not n).
    replies = await _gather(hub, job_id, {u: SecAggUnmask(session_id=session_id,
                                                          secagg=server.unmask_request_for(u).encode()) for u in u4},
                            round_timeout)
    feed(replies, u4, "unmask")
    # Shamir reconstruction and mask expansion are CPU work: off the event loop.
    total = await asyncio.to_thread(server.close_unmask)
    return SecureSumResult(total=total, survivors=u3, first_replies={k: v for k, v in first.items() if k in u3},
                           dropped=dropped, refused=refused)
