"""The aggregator's side of secure aggregation: collect each round, route shares, unmask the sum.

:class:`SecAggServer` is a pure state machine: the caller moves the bytes, names the
authenticated sender of each message and closes a round when its deadline passes. It keeps only
what later rounds need (a running sum, never an individual masked input) and drops every share
once the session ends or aborts.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import math
from collections.abc import Mapping, Sequence
from typing import ClassVar

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from xdp_compute.crypto import prg, shamir
from xdp_compute.crypto.fixedpoint import U64Vector
from xdp_compute.crypto.secagg.codec import check_key
from xdp_compute.crypto.secagg.config import (
    MalformedMessage,
    Phase,
    RoundConflict,
    SecAggConfig,
    abort,
)
from xdp_compute.crypto.secagg.identity import keys_statement, signature_valid, survivors_statement
from xdp_compute.crypto.secagg.keys import KEY_BYTES, pairwise_seed, self_mask_seed
from xdp_compute.crypto.secagg.messages import (
    AdvertiseKeys,
    ConsistencyCheck,
    ConsistencySignature,
    EncryptedShares,
    KeyRoster,
    MaskedInput,
    NodeKeys,
    SecAggMessage,
    ShareKeys,
    UnmaskRequest,
    UnmaskResponse,
    decode_message,
)
from xdp_compute.errors import InvalidKey, ProtocolAborted


class SecAggServer:
    """The aggregator's side: collect each round, route shares, unmask the sum of U3's inputs.

    Use ``receive(node_id, message)`` for every incoming message (``node_id`` is the identity
    the transport authenticated), and ``close_*`` when a round's deadline passes: whoever
    sent a valid message by then survived the round. Identical resends are ignored; a
    different second message from a node, a message for another phase, or one from a node
    that did not survive the previous round raises :class:`RoundConflict`. Once aborted,
    every call raises the same :class:`ProtocolAborted`.

    Sealed sessions (``revealed`` given): each client sends y_u in full elsewhere (encrypted
    under a key this server does not hold, e.g. the analyst's Paillier key) and only
    y_u[revealed] here. The rounds and the rules are the paper's; Round 4 then yields the sum at
    the revealed coordinates and ``mask_total`` (sum over U3 of every mask left in the sealed
    sum, mod 2^64), which whoever holds the sealed sum subtracts to unmask it. The server learns
    the revealed coordinates of the sum and masks; a single y_u it never sees whole.
    """

    def __init__(self, config: SecAggConfig, *, revealed: Sequence[int] | None = None) -> None:
        """``revealed``: a sealed session (see the class notes) whose masked inputs reach this
        server only at these coordinates; ``None`` (default): every coordinate, the paper's case."""
        self.config = config
        if revealed is not None:
            revealed = tuple(int(i) for i in revealed)
            if len(set(revealed)) != len(revealed) or not all(0 <= i < config.vector_length for i in revealed):
                raise ValueError("revealed coordinates must be distinct and within the vector length")
        self._revealed: tuple[int, ...] | None = revealed
        self._mask_total: U64Vector | None = None
        self._phase = Phase.ADVERTISE_KEYS
        # Per round: who sent what (only what later rounds need), and a digest per sender to
        # recognise identical resends.
        self._advertised: dict[str, NodeKeys] = {}
        self._shared: dict[str, Mapping[str, bytes]] = {}
        self._responses: dict[str, UnmaskResponse] = {}
        self._digests: dict[Phase, dict[str, bytes]] = {
            p: {}
            for p in (Phase.ADVERTISE_KEYS, Phase.SHARE_KEYS, Phase.MASKED_INPUT, Phase.CONSISTENCY, Phase.UNMASK)
        }
        self._signatures: dict[str, bytes] = {}
        self._u3_statement = b""  # survivors_statement of U3, built once for every signature check
        self._survivors: dict[Phase, tuple[str, ...]] = {}
        self._keys: dict[str, NodeKeys] = {}
        self._inbox: dict[str, dict[str, bytes]] = {}
        self._acc: U64Vector | None = None
        self._result: U64Vector | None = None
        self._error: ProtocolAborted | None = None

    @property
    def phase(self) -> Phase:
        """The round currently collecting messages (or DONE / ABORTED)."""
        return self._phase

    def survivors(self, phase: Phase) -> tuple[str, ...]:
        """Nodes that completed ``phase`` (U1 for ADVERTISE_KEYS ... U4 for CONSISTENCY, U5 for UNMASK), in
        roster order."""
        if phase not in self._survivors:
            raise RoundConflict(f"phase {phase.label} is not closed")
        return self._survivors[phase]

    def expected_senders(self) -> tuple[str, ...]:
        """Nodes still allowed to send a message in the current phase."""
        self._check_alive()
        prev = {
            Phase.ADVERTISE_KEYS: None,
            Phase.SHARE_KEYS: Phase.ADVERTISE_KEYS,
            Phase.MASKED_INPUT: Phase.SHARE_KEYS,
            Phase.CONSISTENCY: Phase.MASKED_INPUT,
            Phase.UNMASK: Phase.CONSISTENCY,
        }.get(self._phase)
        if self._phase is Phase.DONE:
            return ()
        pool = self.config.participants if prev is None else self._survivors[prev]
        got = self._digests[self._phase]
        return tuple(p for p in pool if p not in got)

    @property
    def result(self) -> U64Vector:
        """The unmasked sum (after ``close_unmask``)."""
        self._check_alive()
        if self._result is None:
            raise RoundConflict("the sum is not available before the unmasking round closes")
        return self._result

    @property
    def mask_total(self) -> U64Vector:
        """Sealed sessions, after ``close_unmask``: the masks of U3's sealed inputs, summed mod 2^64.

        sum_{u in U3} y_u - mask_total = sum_{u in U3} x_u (mod 2^64) at every coordinate.
        """
        self._check_alive()
        if self._mask_total is None:
            raise RoundConflict("the mask total exists for a sealed session once the unmasking round closes")
        return self._mask_total

    # -- plumbing --------------------------------------------------------------------------

    def _check_alive(self) -> None:
        if self._error is not None:
            raise self._error

    def _fail(self, phase: Phase, detail: str, **extra: object) -> ProtocolAborted:
        self._phase = Phase.ABORTED
        self._acc = None
        self._inbox = {}
        self._responses = {}  # shares are secrets' fragments: keep none after the session
        self._error = abort(phase, detail, **extra)
        return self._error

    def _require_threshold(self, phase: Phase, survivors: Sequence[str], pool: int) -> None:
        t = self.config.t
        if len(survivors) < t:
            raise self._fail(
                phase,
                f"{len(survivors)} of {pool} nodes remain, threshold is {t}",
                survivors=len(survivors),
                eligible=pool,
                threshold=t,
            )

    def _close(self, phase: Phase) -> tuple[str, ...]:
        self._check_alive()
        if self._phase is not phase:
            raise RoundConflict(f"cannot close {phase.label}: server is in phase {self._phase.label}")
        got = self._digests[phase]
        survivors = tuple(p for p in self.config.participants if p in got)
        self._survivors[phase] = survivors
        return survivors

    _EXPECTED: ClassVar[dict[Phase, type]] = {
        Phase.ADVERTISE_KEYS: AdvertiseKeys,
        Phase.SHARE_KEYS: ShareKeys,
        Phase.MASKED_INPUT: MaskedInput,
        Phase.CONSISTENCY: ConsistencySignature,
        Phase.UNMASK: UnmaskResponse,
    }
    _PREVIOUS: ClassVar[dict[Phase, Phase]] = {
        Phase.SHARE_KEYS: Phase.ADVERTISE_KEYS,
        Phase.MASKED_INPUT: Phase.SHARE_KEYS,
        Phase.CONSISTENCY: Phase.MASKED_INPUT,
        Phase.UNMASK: Phase.CONSISTENCY,
    }

    def receive(self, node_id: str, message: SecAggMessage | bytes) -> None:
        """Accept one client message for the current phase from authenticated ``node_id``.

        Raises MalformedMessage (bad bytes, wrong session/sender, content inconsistent with
        the session) or RoundConflict (wrong phase, not a survivor, conflicting resend).
        Invalid messages change no state.
        """
        self._check_alive()
        cfg = self.config
        cfg.index(node_id)
        if isinstance(message, (bytes, bytearray, memoryview)):
            raw = bytes(message)
            msg = decode_message(raw)
        else:
            msg = message
            raw = msg.encode()
        phase = self._phase
        expected = self._EXPECTED.get(phase)
        if (
            expected is None
            or not isinstance(msg, expected)
            or not isinstance(msg, (AdvertiseKeys, ShareKeys, MaskedInput, ConsistencySignature, UnmaskResponse))
        ):
            raise RoundConflict(f"{type(msg).__name__} is not expected in phase {phase.label}")
        if msg.session_id != cfg.session_id:
            raise MalformedMessage("message belongs to another secure-aggregation session")
        if msg.sender != node_id:
            raise MalformedMessage(f"message claims sender {msg.sender!r} but came from {node_id!r}")
        prev = self._PREVIOUS.get(phase)
        if prev is not None and node_id not in self._survivors[prev]:
            raise RoundConflict(f"{node_id} did not complete phase {prev.label}")
        digests = self._digests[phase]
        digest = hashlib.sha256(raw).digest()
        if node_id in digests:
            if hmac.compare_digest(digests[node_id], digest):
                return  # identical resend (e.g. a transport retry)
            raise RoundConflict(f"{node_id} already sent a different {type(msg).__name__}")
        if isinstance(msg, AdvertiseKeys):
            self._accept_keys(msg)
        elif isinstance(msg, ShareKeys):
            self._accept_shares(msg)
        elif isinstance(msg, MaskedInput):
            self._accept_masked(msg)
        elif isinstance(msg, ConsistencySignature):
            self._accept_signature(msg)
        else:
            assert isinstance(msg, UnmaskResponse)
            self._accept_unmask(msg)
        digests[node_id] = digest

    # Round 0 ------------------------------------------------------------------------------

    def _accept_keys(self, msg: AdvertiseKeys) -> None:
        check_key("AdvertiseKeys", msg.c_pk, "c_pk")
        check_key("AdvertiseKeys", msg.s_pk, "s_pk")
        if msg.certificate or msg.signature:
            # An honest server forwards only keys that will verify, so that one node's bad
            # signature drops that node instead of aborting every honest peer's session.
            statement = keys_statement(self.config.session_id, msg.sender, msg.c_pk, msg.s_pk)
            if not signature_valid(msg.certificate, statement, msg.signature):
                raise MalformedMessage(f"AdvertiseKeys from {msg.sender}: the signature does not verify "
                                       "under its certificate")
        self._advertised[msg.sender] = msg.keys

    def close_advertise_keys(self) -> None:
        """End Round 0: U1 = nodes whose keys arrived; abort if |U1| < t."""
        u1 = self._close(Phase.ADVERTISE_KEYS)
        self._require_threshold(Phase.ADVERTISE_KEYS, u1, self.config.n)
        self._keys = {u: self._advertised[u] for u in u1}
        self._phase = Phase.SHARE_KEYS

    def roster_for(self, node_id: str) -> KeyRoster:
        """Round 1 input for ``node_id``: public keys of U1 within its neighbourhood (all of U1 if not sparse)."""
        self._check_alive()
        if Phase.ADVERTISE_KEYS not in self._survivors:
            raise RoundConflict("the key roster exists once advertise_keys is closed")
        if node_id not in self._keys:
            raise RoundConflict(f"{node_id} did not complete phase advertise_keys")
        holders = self.config.holders_of(node_id)
        return KeyRoster(self.config.session_id, {v: k for v, k in self._keys.items() if v in holders})

    # Round 1 ------------------------------------------------------------------------------

    def _accept_shares(self, msg: ShareKeys) -> None:
        u = msg.sender
        wanted = {v for v in self.config.holders_of(u) if v in self._keys} - {u}
        if set(msg.ciphertexts) != wanted:
            raise MalformedMessage(
                f"ShareKeys from {u} must carry one ciphertext for each of its {len(wanted)} U1 peers"
            )
        self._shared[u] = msg.ciphertexts

    def close_share_keys(self) -> None:
        """End Round 1: U2 = nodes whose shares arrived; abort if |U2| < t; route ciphertexts."""
        u2 = self._close(Phase.SHARE_KEYS)
        self._require_threshold(Phase.SHARE_KEYS, u2, len(self._survivors[Phase.ADVERTISE_KEYS]))
        inbox: dict[str, dict[str, bytes]] = {v: {} for v in u2}
        for u in u2:
            for v, ct in self._shared[u].items():
                if v in inbox:
                    inbox[v][u] = ct
        self._inbox = inbox
        self._shared = {}  # the ciphertexts now live only in the inboxes
        self._phase = Phase.MASKED_INPUT

    def shares_for(self, node_id: str) -> EncryptedShares:
        """Round 2 input for ``node_id`` (a U2 member): ciphertexts addressed to it by U2 senders."""
        self._check_alive()
        if Phase.SHARE_KEYS not in self._survivors:
            raise RoundConflict("shares are routed once share_keys is closed")
        if node_id not in self._inbox:
            raise RoundConflict(f"{node_id} did not complete phase share_keys")
        return EncryptedShares(self.config.session_id, node_id, dict(self._inbox[node_id]))

    # Round 2 ------------------------------------------------------------------------------

    def _accept_masked(self, msg: MaskedInput) -> None:
        m = self.config.vector_length if self._revealed is None else len(self._revealed)
        vec = np.asarray(msg.vector)
        if vec.dtype != np.uint64 or vec.shape != (m,):
            raise MalformedMessage(
                f"MaskedInput must hold {m} uint64 words, got {vec.shape[0] if vec.ndim == 1 else vec.shape}"
            )
        # Sum as they arrive: only the running total is kept, never an individual y_u.
        if self._acc is None:
            self._acc = vec.copy()
        else:
            np.add(self._acc, vec, out=self._acc)

    def close_masked_input(self) -> ConsistencyCheck:
        """End Round 2: U3 = nodes whose masked input arrived; check recoverability; return U3 for Round 3.

        Aborts if |U3| < t, or (SecAgg+) if some needed secret has fewer than t holders in U3
        or U3 is disconnected in the neighbour graph.
        """
        cfg = self.config
        u3 = self._close(Phase.MASKED_INPUT)
        u2 = self._survivors[Phase.SHARE_KEYS]
        self._require_threshold(Phase.MASKED_INPUT, u3, len(u2))
        self._check_recoverable(Phase.MASKED_INPUT, set(u3))
        if cfg.sparse and not cfg.is_connected(u3):
            raise self._fail(
                Phase.MASKED_INPUT,
                "survivors are disconnected in the neighbour graph; unmasking would reveal partial sums",
                survivors=len(u3),
            )
        self._phase = Phase.CONSISTENCY
        return ConsistencyCheck(cfg.session_id, u3)

    # Round 3 ------------------------------------------------------------------------------

    def _accept_signature(self, msg: ConsistencySignature) -> None:
        keys = self._keys[msg.sender]
        if keys.certificate:
            if not self._u3_statement:
                self._u3_statement = survivors_statement(self.config.session_id, self._survivors[Phase.MASKED_INPUT])
            if not signature_valid(keys.certificate, self._u3_statement, msg.signature):
                raise MalformedMessage(f"ConsistencySignature from {msg.sender}: the signature over U3 does not "
                                       "verify under its certificate")
        self._signatures[msg.sender] = msg.signature

    def close_consistency(self) -> UnmaskRequest:
        """End Round 3: U4 = nodes that signed U3; abort if |U4| < t or a needed secret has fewer
        than t holders in U4; return the unmasking request, U3 with U4's signatures."""
        u4 = self._close(Phase.CONSISTENCY)
        self._require_threshold(Phase.CONSISTENCY, u4, len(self._survivors[Phase.MASKED_INPUT]))
        self._check_recoverable(Phase.CONSISTENCY, set(u4))
        self._phase = Phase.UNMASK
        return self.unmask_request()

    def unmask_request(self) -> UnmaskRequest:
        """The Round 4 request with every signature (valid for any node) once the consistency check is closed.

        A node counts only its own share holders' signatures; :meth:`unmask_request_for` sends it
        just those (O(k) signatures to decode instead of n).
        """
        self._check_alive()
        if Phase.CONSISTENCY not in self._survivors:
            raise RoundConflict("the unmask request exists once the consistency check is closed")
        return UnmaskRequest(self.config.session_id, self._survivors[Phase.MASKED_INPUT], dict(self._signatures))

    def unmask_request_for(self, node_id: str) -> UnmaskRequest:
        """The Round 4 request for ``node_id`` (a U4 member): U3 and the signatures over it of
        ``node_id``'s share holders, the only ones it counts (``SecAggClient.unmask``)."""
        self._check_alive()
        if Phase.CONSISTENCY not in self._survivors:
            raise RoundConflict("the unmask request exists once the consistency check is closed")
        if node_id not in self._signatures:
            raise RoundConflict(f"{node_id} did not complete phase consistency")
        sigs = self._signatures
        return UnmaskRequest(self.config.session_id, self._survivors[Phase.MASKED_INPUT],
                             {v: sigs[v] for v in self.config.holders_of(node_id) if v in sigs})

    def _needs(self) -> tuple[list[str], dict[str, list[str]]]:
        """Whose b_u (U3) and whose s_sk (U2\\U3 with U3 neighbours, and those neighbours) are needed."""
        cfg = self.config
        u3_order = self._survivors[Phase.MASKED_INPUT]  # roster order
        u3 = set(u3_order)
        dropped = [u for u in self._survivors[Phase.SHARE_KEYS] if u not in u3]
        need_sk = {u: sorted(cfg.neighbours_of(u) & u3, key=cfg.index) for u in dropped}  # O(k) each
        return list(u3_order), {u: vs for u, vs in need_sk.items() if vs}

    def _check_recoverable(self, phase: Phase, responders: set[str]) -> None:
        cfg, t = self.config, self.config.t
        need_b, need_sk = self._needs()
        for u in need_b:
            have = len(cfg.holders_of(u) & responders)
            if have < t:
                raise self._fail(
                    phase,
                    f"self mask of {u} has {have} share holders left, threshold is {t}",
                    node=u,
                    survivors=have,
                    threshold=t,
                )
        for u in need_sk:
            have = len(cfg.neighbours_of(u) & responders)
            if have < t:
                raise self._fail(
                    phase,
                    f"key of dropped node {u} has {have} share holders left, threshold is {t}",
                    node=u,
                    survivors=have,
                    threshold=t,
                )

    # Round 4 ------------------------------------------------------------------------------

    def _accept_unmask(self, msg: UnmaskResponse) -> None:
        cfg, u = self.config, msg.sender
        u3 = set(self._survivors[Phase.MASKED_INPUT])
        u2 = set(self._survivors[Phase.SHARE_KEYS])
        held = cfg.holders_of(u) & u2
        want_b = held & u3
        want_sk = held - u3
        if set(msg.self_mask_shares) != want_b or set(msg.secret_key_shares) != want_sk:
            raise MalformedMessage(
                f"UnmaskResponse from {u} must hold b-shares for {len(want_b)} survivors "
                f"and key shares for {len(want_sk)} dropped peers, exactly"
            )
        for owner, sh in (*msg.self_mask_shares.items(), *msg.secret_key_shares.items()):
            x = cfg.share_x(owner, u)
            if sh.x != x:
                raise MalformedMessage(f"UnmaskResponse from {u} holds a share of {owner} with x={sh.x}, expected {x}")
        self._responses[u] = msg

    def close_unmask(self) -> U64Vector:
        """End Round 4: U5 = responders; rebuild b_u (u in U3) and s_u^SK (u in U2\\U3); return sum x_u mod 2^64.

        Aborts if |U5| < t or some needed secret has fewer than t shares, or if shares are
        inconsistent (a rebuilt key that does not match its advertised public key).
        """
        cfg = self.config
        u4 = self._close(Phase.UNMASK)
        self._require_threshold(Phase.UNMASK, u4, len(self._survivors[Phase.CONSISTENCY]))
        self._check_recoverable(Phase.UNMASK, set(u4))
        responses = self._responses
        need_b, need_sk = self._needs()
        # Shares by owner, each point keyed by its x (1..h, see SecAggConfig.share_x): O(n k) in all.
        b_points: dict[str, dict[int, bytes]] = {u: {} for u in need_b}
        sk_points: dict[str, dict[int, bytes]] = {u: {} for u in need_sk}
        for v in u4:
            resp = responses[v]
            for owner, sh in resp.self_mask_shares.items():
                if owner in b_points:
                    b_points[owner][sh.x] = sh.y
            for owner, sh in resp.secret_key_shares.items():
                if owner in sk_points:
                    sk_points[owner][sh.x] = sh.y
        size, t = cfg.neighbourhood_size, cfg.t
        terms: list[prg.MaskTerm] = []
        try:
            for u in need_b:
                # Paper, Round 4: reconstruct b_u from its holders' shares and remove PRG(b_u).
                b_u = interpolate_secret(b_points[u], size, t, prg.SEED_BYTES)
                terms.append((self_mask_seed(cfg, u, b_u), 1))
            for u, partners in need_sk.items():
                # Paper, Round 4: reconstruct s_u^SK of a dropped user, recompute its pairwise masks.
                sk = X25519PrivateKey.from_private_bytes(interpolate_secret(sk_points[u], size, t, KEY_BYTES))
                if sk.public_key().public_bytes_raw() != self._keys[u].s_pk:
                    raise shamir.InvalidShare(f"rebuilt key of {u} does not match its advertised key")
                for v in partners:
                    # y_v carries Delta_{v,u} PRG(s_{v,u}); remove exactly that.
                    terms.append((pairwise_seed(cfg, sk, u, v, self._keys[v].s_pk), cfg.mask_sign(v, u)))
        except (shamir.InvalidShare, InvalidKey) as exc:
            raise self._fail(Phase.UNMASK, f"inconsistent shares: {exc.detail}") from None
        assert self._acc is not None
        mask = prg.combined_mask(terms, cfg.vector_length)
        if self._revealed is None:
            total = np.subtract(self._acc, mask)
        else:
            # Sealed session: unmask the revealed coordinates here; the whole mask unmasks the
            # sealed sum wherever it is held.
            total = np.subtract(self._acc, mask[list(self._revealed)])
            self._mask_total = mask
        self._result = total
        self._acc = None
        self._responses = {}
        self._phase = Phase.DONE
        return total


@functools.lru_cache(maxsize=16)
def _window_weights(size: int) -> tuple[int, ...]:
    """Lagrange basis at 0 for the points 1..size, mod p: L_i(0) = (-1)^(i-1) C(size, i) (index 0 unused)."""
    return (0, *((-1) ** (i - 1) * math.comb(size, i) % shamir.PRIME for i in range(1, size + 1)))


def interpolate_secret(points: Mapping[int, bytes], size: int, threshold: int, secret_len: int) -> bytes:
    """The secret behind Shamir shares ``points`` (x -> ``Share.y``) with x in 1..``size``.

    Every share of one secret sits at x in 1..h (``SecAggConfig.share_x``), so the basis values
    at 0 over all of 1..h are signed binomials, and the points present are that window minus
    the missing holders M: L_i(0) = (-1)^(i-1) C(h, i) * prod_{c in M} (c - i) / prod_{c in M} c.
    Each secret costs O(h * |M|) small products mod p, one inversion and one vectorised sum over
    its lanes (``shamir.combine_at_zero``), instead of t^2 products and t inversions for an
    arbitrary set of t points. All points present are used: more than t points of a degree t-1
    polynomial interpolate to the same f(0).
    Raises shamir.InvalidShare with fewer than ``threshold`` points, an x outside the window,
    or a result that is not a well-formed secret of ``secret_len`` bytes.
    """
    if len(points) < threshold:
        raise shamir.InvalidShare(f"need {threshold} shares, got {len(points)}")
    if any(not 1 <= x <= size for x in points):
        raise shamir.InvalidShare(f"share x-coordinate outside 1..{size}")
    p = shamir.PRIME
    weights = _window_weights(size)
    missing = [c for c in range(1, size + 1) if c not in points]
    scale = pow(math.prod(missing) % p, -1, p) if missing else 1
    ws = []
    for x in points:
        w = weights[x] * scale
        for c in missing:
            w = w * (c - x) % p
        ws.append(w % p)
    values = shamir.combine_at_zero(ws, list(points.values()))
    return shamir.secret_from_values(values, secret_len=secret_len)
