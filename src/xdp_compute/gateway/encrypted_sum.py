"""Drive one *sealed* secure-aggregation session (Bonawitz et al. 2017) for Paillier encrypted delivery.

The sibling of ``secure_sum``: the same rounds, named after the paper, the same server state
machine (``SecAggServer`` with ``revealed`` coordinates), and no crypto here. What differs is
Round 2: each node answers with its masked input y_u encrypted under the analyst's key, and in
the clear only at the plan's COUNT(*) slots (``query.sealed``; the node fixes them itself).

What the gateway learns: the survivor set, the masks' total (after Round 4), every node's
ciphertext — each the encryption of a uniformly masked vector, so forwarded alone it decrypts
to uniform noise — and the noisy COUNT(*) total of every cell, which the analyst also gets
(one release of the plan's count measurement). It never sees a single node's partial, nor the
other measurements' totals. The sum of the survivors' ciphertexts it returns is still masked:
``crypto.paillier.unmask_sealed_sum`` removes the masks (and blanks small cells) at release.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from xdp_compute.contract import (
    HeQueryMaskedInput,
    HeQueryMaskedReply,
    Record,
    SecAggConsistency,
    SecAggMessage,
    SecAggSession,
    SecAggShareKeys,
    SecAggUnmask,
)
from xdp_compute.crypto.paillier import EncryptedVector, PackingScheme, PaillierPublic, aggregate_encrypted
from xdp_compute.crypto.secagg import Phase, SecAggConfig, SecAggServer
from xdp_compute.errors import BadRequest, ProtocolAborted, XdpError
from xdp_compute.gateway.hub import NodeDropped, NodeFailed, TaskHub
from xdp_compute.gateway.secure_sum import roster_for

log = logging.getLogger("xdp.gateway.secagg")


@dataclass
class SealedSumResult:
    sealed_sum: EncryptedVector            # product of U3's ciphertexts: sum of y_u, still masked
    mask_total: np.ndarray                 # uint64 sum of U3's masks (remove it to unmask)
    revealed: np.ndarray                   # uint64 sum over U3 at the revealed slots, unmasked
    survivors: list[str]                   # node ids whose input is in both sums (U3)
    dropped: dict[str, str] = field(default_factory=dict)   # node id -> phase where it dropped
    refused: dict[str, str] = field(default_factory=dict)   # node id -> its error in round 0 or 2


@dataclass(frozen=True)
class SealedSession:
    """The encrypted-delivery side of a session: the analyst's key and the ring packing."""

    public: PaillierPublic
    scheme: PackingScheme
    revealed: tuple[int, ...]
    max_ciphertext_bytes: int


async def _ask_all(hub: TaskHub, job_id: str, requests: dict[str, Record], timeout: float,
                   errors: dict[str, str] | None = None) -> dict[str, Record]:
    """Each node's typed answer; silent nodes are absent, failed ones land in ``errors``."""

    async def one(node: str, request: Record) -> tuple[str, Record | None]:
        try:
            return node, await hub.ask(node, job_id, request, timeout)
        except NodeDropped:
            return node, None
        except (NodeFailed, XdpError) as e:
            error = e.error if isinstance(e, NodeFailed) else e.detail
            log.warning("node %s failed %s: %s", node, request.KIND, error)
            if errors is not None:
                errors[node] = error
            return node, None

    results = await asyncio.gather(*(one(n, t) for n, t in requests.items()))
    return {n: r for n, r in results if r is not None}


async def encrypted_secure_sum(hub: TaskHub, job_id: str, session_id: str, participants: list[str],
                               vector_length: int, sealed: SealedSession,
                               begin: Callable[[str, SecAggSession], Record], *, threshold: int | None,
                               neighbours: int | None = None, round_timeout: float,
                               begin_timeout: float) -> SealedSumResult:
    """Run rounds 0-4 of a sealed session; ``begin(node, session)`` builds each node's round-0
    request (``HeQueryBegin``). ``ProtocolAborted`` (with ``node_errors``: errors in round 0 or in
    round 2, where each node's data step ends; they may depend on its data) when fewer than t
    remain. ``threshold`` and ``neighbours`` (the SecAgg+ degree, None for the complete graph)
    come from the plan, as in ``secure_sum``."""
    config = SecAggConfig(session_id=session_id, participants=participants, vector_length=vector_length,
                          threshold=threshold, neighbours=neighbours)
    session = SecAggSession(session_id=session_id, participants=participants, vector_length=vector_length,
                            threshold=config.t, neighbours=neighbours)
    server = SecAggServer(config, revealed=sealed.revealed)
    rounds = _SealedRounds(hub, job_id, session_id, server, sealed)
    try:
        return await rounds.run(participants, session, begin, round_timeout, begin_timeout)
    except ProtocolAborted as e:
        e.node_errors = dict(rounds.refused)  # type: ignore[attr-defined]
        raise


class _SealedRounds:
    def __init__(self, hub: TaskHub, job_id: str, session_id: str, server: SecAggServer,
                 sealed: SealedSession) -> None:
        self.hub, self.job_id, self.session_id = hub, job_id, session_id
        self.server, self.sealed = server, sealed
        self.dropped: dict[str, str] = {}
        self.refused: dict[str, str] = {}
        self.ciphertexts: dict[str, EncryptedVector] = {}

    def feed(self, replies: dict[str, Record], expected: list[str], phase: str) -> None:
        for node in expected:
            r = replies.get(node)
            if r is None:
                self.dropped.setdefault(node, phase)
                continue
            try:
                if isinstance(r, HeQueryMaskedReply):
                    # A node's input is in U3 only with a well-formed ciphertext: then the
                    # masks removed at the end are exactly those left in the sealed sum.
                    vec = self._ciphertext(r.ciphertext)
                    self.server.receive(node, r.secagg)
                    self.ciphertexts[node] = vec
                elif isinstance(r, SecAggMessage):
                    self.server.receive(node, r.secagg)
                else:
                    raise BadRequest(f"unexpected reply {type(r).__name__} in {phase}")
            except XdpError as e:
                if isinstance(e, BadRequest) or e.status in (400, 409):
                    log.warning("node %s sent a bad %s message: %s", node, phase, e.detail)
                    self.dropped.setdefault(node, phase)
                else:
                    raise

    def _ciphertext(self, blob: bytes) -> EncryptedVector:
        s = self.sealed
        vec = EncryptedVector.from_bytes(blob, s.public, max_bytes=s.max_ciphertext_bytes)
        if vec.length != self.server.config.vector_length or vec.n_contributions != 1 or vec.scheme != s.scheme:
            raise BadRequest("sealed masked input of the wrong shape")
        return vec

    async def run(self, participants: list[str], session: SecAggSession,
                  begin: Callable[[str, SecAggSession], Record], round_timeout: float,
                  begin_timeout: float) -> SealedSumResult:
        hub, job_id, sid, server = self.hub, self.job_id, self.session_id, self.server
        # Round 0 (AdvertiseKeys): each node checks and charges the job, starts its data step and
        # advertises two public keys.
        replies = await _ask_all(hub, job_id, {u: begin(u, session) for u in participants}, begin_timeout,
                                 self.refused)
        self.feed(replies, participants, "advertise_keys")
        server.close_advertise_keys()
        # Round 1 (ShareKeys): route the roster; collect encrypted Shamir shares.
        u1 = list(server.survivors(Phase.ADVERTISE_KEYS))
        replies = await _ask_all(hub, job_id, {u: SecAggShareKeys(session_id=sid, secagg=roster_for(server, u))
                                               for u in u1}, round_timeout)
        self.feed(replies, u1, "share_keys")
        server.close_share_keys()
        # Round 2 (MaskedInputCollection), sealed: deliver each node its shares; collect
        # E(y_u) under the analyst's key and y_u in the clear at the revealed slots only. Each
        # node's data step ends here (it runs from Round 0 on, issue #13): Round 2 gets round 0's
        # time, and an error in it is a refusal (its cause may depend on the rows), as in
        # ``secure_sum(late_input=True)``.
        u2 = list(server.survivors(Phase.SHARE_KEYS))
        replies = await _ask_all(hub, job_id, {u: HeQueryMaskedInput(session_id=sid,
                                                                     secagg=server.shares_for(u).encode())
                                               for u in u2}, begin_timeout, self.refused)
        self.feed(replies, u2, "masked_input")
        check = server.close_masked_input()
        # Round 3 (ConsistencyCheck): every survivor signs the survivor set U3 it was told.
        u3 = list(server.survivors(Phase.MASKED_INPUT))
        consistency = SecAggConsistency(session_id=sid, secagg=check.encode())
        replies = await _ask_all(hub, job_id, dict.fromkeys(u3, consistency), round_timeout)
        self.feed(replies, u3, "consistency")
        server.close_consistency()
        # Round 4 (Unmasking): with t signatures over U3, survivors reveal self-mask shares of U3
        # and key shares of the dropped.
        u4 = list(server.survivors(Phase.CONSISTENCY))
        # Each node gets U3 and its own share holders' signatures, the only ones it counts.
        replies = await _ask_all(hub, job_id, {u: SecAggUnmask(session_id=sid,
                                                               secagg=server.unmask_request_for(u).encode())
                                               for u in u4}, round_timeout)
        self.feed(replies, u4, "unmask")
        # Shamir reconstruction, mask expansion and the ciphertext product are CPU work.
        revealed = await asyncio.to_thread(server.close_unmask)
        vectors = [self.ciphertexts[u] for u in u3]
        self.ciphertexts = {}
        sealed_sum = await asyncio.to_thread(aggregate_encrypted, self.sealed.public, vectors)
        return SealedSumResult(sealed_sum=sealed_sum, mask_total=server.mask_total, revealed=revealed,
                               survivors=u3, dropped=self.dropped, refused=self.refused)

