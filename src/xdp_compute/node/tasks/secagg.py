"""Secure aggregation on the node: the client side of Bonawitz et al. 2017, one session per job round.

A job's round-0 handler (``query_begin``, ``train_begin``) checks the session it was sent
(``SecAggSessions.config_for``), computes this node's input vector — already carrying its DP
noise share — and calls ``start``, which runs Round 0 (AdvertiseKeys). ``query_begin`` hands
``start`` the vector still in the making (a ``Future``): Round 2 waits for it (issue #13). The step handlers then
run Round 1 (ShareKeys), Round 2 (MaskedInputCollection), Round 3 (ConsistencyCheck) and Round 4
(Unmasking). Only signed public keys, encrypted shares, the masked vector, a signature over the
survivor set and unmasking shares leave the node.

What the node checks of the gateway (issue #12, an active gateway): the threshold is at least a
majority of the share holders and above this node's collusion margin (``config_for``); with its
certificate and the deployment CA (``NodeIdentity``), every peer's keys must be signed by a node
the CA certified, and the holders those certificates name must group the roster exactly as the
parties its noise was calibrated for (a gateway that split one holder's nodes into several
parties would have cut the noise); t signatures over one survivor set precede any unmasking share.

A *sealed* session (Paillier encrypted delivery, ``tasks.he``) differs in Round 2 only: the
masked vector leaves encrypted under the analyst's key, and in the clear only at the
coordinates fixed when the session started (the plan's COUNT(*) slots).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np

from xdp_compute.contract import (
    SecAggConsistency,
    SecAggMaskedInput,
    SecAggMessage,
    SecAggSession,
    SecAggShareKeys,
    SecAggStep,
    SecAggUnmask,
)
from xdp_compute.crypto.secagg import (
    MaskedInput,
    Phase,
    SecAggClient,
    SecAggConfig,
)
from xdp_compute.crypto.secagg.config import abort
from xdp_compute.errors import BadRequest, ProtocolAborted
from xdp_compute.node.identity import NodeIdentity

# Sessions the gateway abandoned (aborts, drop-outs) do not keep inputs or keys around longer.
SESSION_TTL_SECONDS = 900.0
# Sessions whose masked input has left are remembered (the most recent ones) so that none is
# started again: a job is charged once on this node's ledger, and a second masked input of the
# same session would be a second noisy release under that one charge (issue #12).
MAX_SPENT_SESSIONS = 100_000


@dataclass
class _Session:
    job_id: str
    client: SecAggClient
    # The unmasked input, until Round 2 has masked it; a Future while the data step still runs
    # (the plain query starts it in Round 0 and answers with its keys at once, issue #13).
    vector: np.ndarray | Future[np.ndarray] | None
    started: float
    # Sealed sessions (encrypted delivery): the only coordinates of the masked input that may
    # leave in the clear; the rest leaves only encrypted. None: a plain session.
    revealed: tuple[int, ...] | None = None
    # node id -> party, as the noise was calibrated for (queries); checked against certificates.
    parties: Mapping[str, str] | None = None
    # Round 1 -> 2: the masks, expanded while the gateway collects everyone's shares.
    precompute: threading.Thread | None = None

    def await_masks(self) -> None:
        if self.precompute is not None:
            self.precompute.join()
            self.precompute = None

    def await_input(self) -> np.ndarray:
        """The input vector, once the data step has produced it; its error otherwise (which may
        depend on the rows: the gateway counts a failed Round 2 as a refusal)."""
        vector = self.vector
        if vector is None:
            raise BadRequest("masked input already sent for this session")
        if isinstance(vector, Future):
            try:
                vector = vector.result()
            except BaseException:
                self.vector = None  # a failed data step leaves nothing to mask, now or later
                raise
            self.vector = vector
        if vector.dtype != np.uint64 or vector.shape != (self.client.config.vector_length,):
            raise BadRequest("input vector does not match the session's vector length")
        return vector


class SecAggSessions:
    """This node's open secure-aggregation sessions, by session id; safe to use from task threads."""

    def __init__(self, identity: NodeIdentity | None = None, max_colluding_nodes: int | None = None) -> None:
        """``identity``: sign keys and verify peers (the authenticated protocol); None: unauthenticated.
        ``max_colluding_nodes``: this node's collusion margin (its manifest); a session's threshold
        must exceed it."""
        self._signer, self._verifier = identity.load() if identity is not None else (None, None)
        self._max_colluding = max_colluding_nodes
        self._by_id: dict[str, _Session] = {}
        self._spent: dict[str, None] = {}  # insertion-ordered set of sessions whose masked input left
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ round 0
    @property
    def authenticated(self) -> bool:
        return self._verifier is not None

    def config_for(self, node_id: str, session: SecAggSession) -> SecAggConfig:
        """The session's public parameters, checked before any input is computed.

        The threshold t must satisfy 2t > h + c, where h is the number of each node's share holders
        (the roster, or a SecAgg+ neighbourhood) and c this node's collusion margin (manifest
        ``max_colluding_nodes``, 0 when unset): any two sets of t nodes then share more than c
        nodes, so two different survivor sets cannot both carry t valid signatures (Round 3,
        ConsistencyCheck) unless an honest node signed both, which it never does; and fewer than t
        colluding holders learn nothing of a node's secrets. With c = 0 this is a majority.
        """
        config = SecAggConfig(session_id=session.session_id, participants=tuple(session.participants),
                              vector_length=session.vector_length, threshold=session.threshold,
                              neighbours=session.neighbours)
        if node_id not in config.participants:
            raise BadRequest(f"this node is not a participant of secure-aggregation session {session.session_id!r}")
        size, c = config.neighbourhood_size, self._max_colluding or 0
        if size > 1 and 2 * config.t <= size + c:
            need = (size + c) // 2 + 1
            raise BadRequest(f"secure-aggregation threshold {config.t} is too low for {size} share holders: this "
                             f"node requires at least {need} (a majority"
                             + (f", plus its collusion margin {c}, manifest max_colluding_nodes" if c else "")
                             + "): refused")
        return config

    def start(self, job_id: str, node_id: str, config: SecAggConfig, vector: np.ndarray | Future[np.ndarray], *,
              revealed: tuple[int, ...] | None = None, parties: Mapping[str, str] | None = None) -> bytes:
        """Round 0 (AdvertiseKeys): keep ``vector`` for Round 2; return the node's (signed) public keys.

        ``vector`` may still be in the making (a ``Future`` of the data step): Round 2 waits for
        it, and fails with its error.

        ``revealed``: a sealed session, whose Round 2 answers only ``sealed_masked_input``.
        ``parties``: the node -> party map the input's noise was calibrated for; in Round 1 the
        roster's certificates must group the nodes the same way.
        """
        if not isinstance(vector, Future) and (vector.dtype != np.uint64 or vector.shape != (config.vector_length,)):
            raise BadRequest("input vector does not match the session's vector length")
        if revealed is not None and not all(0 <= i < config.vector_length for i in revealed):
            raise BadRequest("revealed coordinates lie outside the session's vector")
        sid = config.session_id.decode()
        with self._lock:
            if sid in self._spent:
                raise BadRequest(f"secure-aggregation session {sid!r} already sent this node's masked input; "
                                 "it is not started again (one charge, one release)")
        client = SecAggClient(node_id, config, signer=self._signer, verifier=self._verifier)
        msg = client.advertise_keys().encode()
        now = time.time()
        with self._lock:
            for sid in [k for k, v in self._by_id.items() if now - v.started > SESSION_TTL_SECONDS]:
                del self._by_id[sid]
            self._by_id[config.session_id.decode()] = _Session(job_id, client, vector, now, revealed,
                                                               dict(parties) if parties is not None else None)
        return msg

    # ------------------------------------------------------------------ rounds 1, 2, 4
    def share_keys(self, job_id: str, request: SecAggShareKeys) -> SecAggMessage:
        """Round 1 (ShareKeys): Shamir-share this node's secrets among the roster, encrypted per peer."""
        s = self._get(job_id, request.session_id)
        msg = s.client.share_keys(request.secagg).encode()
        if s.parties is not None and s.client.peer_identities:
            try:
                check_parties(s.parties, {v: i.holder for v, i in s.client.peer_identities.items()})
            except ProtocolAborted:
                self.end(request.session_id)
                raise
        # The masks depend on the roster only: expand them now, while the gateway waits for the
        # other nodes' shares, so that Round 2 only adds (and corrects for peers that left).
        s.precompute = threading.Thread(target=s.client.precompute_mask, name="secagg-masks", daemon=True)
        s.precompute.start()
        return SecAggMessage(secagg=msg)

    def masked_input(self, job_id: str, request: SecAggMaskedInput) -> SecAggMessage:
        """Round 2 (MaskedInputCollection): the input plus its masks; the input is then forgotten."""
        s = self._get(job_id, request.session_id)
        if s.revealed is not None:
            # A sealed session's masked input never leaves whole in the clear: with the
            # unmasking shares, the gateway would learn the sum it must not see.
            raise BadRequest("this session is sealed (encrypted delivery): its masked input is not sent in the clear")
        vector = self._input(s, request.session_id)
        s.await_masks()
        msg = s.client.masked_input(vector, request.secagg).encode()
        s.vector = None  # the unmasked input is no longer needed; do not keep it around
        self._mark_spent(request.session_id)
        return SecAggMessage(secagg=msg)

    def sealed_masked_input(self, job_id: str, request: SecAggStep) -> tuple[bytes, np.ndarray]:
        """Round 2 of a sealed session: (the masked input at the revealed coordinates, as the
        message for the gateway; the whole masked vector y_u, for the caller to encrypt)."""
        s = self._get(job_id, request.session_id)
        if s.revealed is None:
            raise BadRequest("this session is not sealed: its masked input is collected by secagg_masked_input")
        vector = self._input(s, request.session_id)
        s.await_masks()
        full = s.client.masked_input(vector, request.secagg)
        s.vector = None  # the unmasked input is no longer needed; do not keep it around
        self._mark_spent(request.session_id)
        shown = MaskedInput(full.session_id, full.sender, np.ascontiguousarray(full.vector[list(s.revealed)]))
        return shown.encode(), full.vector

    def consistency_check(self, job_id: str, request: SecAggConsistency) -> SecAggMessage:
        """Round 3 (ConsistencyCheck): sign the survivor set; only that set will be unmasked."""
        s = self._get(job_id, request.session_id)
        return SecAggMessage(secagg=s.client.consistency_check(request.secagg).encode())

    def unmask(self, job_id: str, request: SecAggUnmask) -> SecAggMessage:
        """Round 4 (Unmasking): the shares the survivor set allows; the session then ends."""
        s = self._get(job_id, request.session_id)
        msg = s.client.unmask(request.secagg).encode()
        self.end(request.session_id)
        return SecAggMessage(secagg=msg)

    def _input(self, s: _Session, session_id: str) -> np.ndarray:
        """Round 2's input; a failed data step ends the session (its keys are not kept around)."""
        running = isinstance(s.vector, Future)
        try:
            return s.await_input()
        except BaseException:
            if running:
                self.end(session_id)
            raise

    # ------------------------------------------------------------------ store
    def _mark_spent(self, session_id: str) -> None:
        with self._lock:
            self._spent[session_id] = None
            while len(self._spent) > MAX_SPENT_SESSIONS:
                self._spent.pop(next(iter(self._spent)))

    def _get(self, job_id: str, session_id: str) -> _Session:
        with self._lock:
            s = self._by_id.get(session_id)
        if s is None or s.job_id != job_id:
            raise BadRequest(f"no secure-aggregation session {session_id!r} for job {job_id} on this node")
        return s

    def end(self, session_id: str) -> None:
        with self._lock:
            self._by_id.pop(session_id, None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._by_id)


def check_parties(declared: Mapping[str, str], holders: Mapping[str, str]) -> None:
    """Refuse a roster whose certified holders group its nodes otherwise than the declared parties.

    ``holders``: roster node -> the holder its verified certificate names. An undeclared node is a
    party of its own (as in ``node.policy.own_noise_shares``). The noise was calibrated on the
    declared grouping; with the true grouping equal to it on the roster (a subset of the
    participants), any t survivors span at least as many parties as calibrated for.
    """
    def party(v: str) -> str:
        return declared.get(v, f"node:{v}")

    by_holder: dict[str, set[str]] = {}
    by_party: dict[str, set[str]] = {}
    for v, h in holders.items():
        by_holder.setdefault(h, set()).add(party(v))
        by_party.setdefault(party(v), set()).add(h)
    split = sorted(h for h, ps in by_holder.items() if len(ps) > 1)
    merged = sorted(p for p, hs in by_party.items() if len(hs) > 1)
    if split or merged:
        what = (f"holder {split[0]!r} is counted as {len(by_holder[split[0]])} parties" if split
                else f"one declared party spans {len(by_party[merged[0]])} holders")
        raise abort(Phase.SHARE_KEYS, f"the roster's certificates do not match the parties this node's noise was "
                                      f"calibrated for ({what}): refused")
