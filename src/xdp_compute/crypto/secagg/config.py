"""Public parameters of a secure-aggregation session: limits, phases, errors and the SecAgg+ graph.

One vocabulary for both sides (clients and server import the same names). :class:`SecAggConfig`
is identical at every party; from ``session_id`` alone each party derives the same SecAgg+
neighbour graph (Bell et al., CCS 2020), so the graph needs no message of its own.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property

from xdp_compute.crypto import prg
from xdp_compute.errors import BadRequest, Conflict, InvalidSpec, ProtocolAborted

MAX_SESSION_ID_BYTES = 256
MAX_NODE_ID_BYTES = 256
#: Shamir x-coordinates are u16 (1-based participant positions, or places in a ring window).
MAX_PARTICIPANTS = 65535
#: 16 Mi words = 128 MiB per masked vector; anything larger is refused at decode time.
MAX_VECTOR_LENGTH = 1 << 24


# --------------------------------------------------------------------------------------------
# Errors (subclasses of the shared bases in xdp_compute.errors)


class MalformedMessage(BadRequest):
    """A secure-aggregation message is malformed, oversized, or inconsistent with the session."""

    slug, title = "malformed-secagg-message", "Malformed secure-aggregation message"


class RoundConflict(Conflict):
    """A message or call does not fit the protocol's current phase (late, early, or repeated)."""

    slug, title = "secagg-round-conflict", "Secure-aggregation round conflict"


# --------------------------------------------------------------------------------------------
# Configuration and the SecAgg+ neighbour graph


class Phase(enum.IntEnum):
    """Protocol phases; the value is the paper's round number."""

    ADVERTISE_KEYS = 0
    SHARE_KEYS = 1
    MASKED_INPUT = 2
    CONSISTENCY = 3
    UNMASK = 4
    DONE = 5
    ABORTED = 6

    @property
    def label(self) -> str:
        return self.name.lower()


def default_threshold(n: int) -> int:
    """Majority threshold floor(n/2)+1 (so at least 2 once n >= 2); 1 only when n == 1."""
    if not isinstance(n, int) or n < 1:
        raise InvalidSpec(f"participant count must be a positive int, got {n!r}")
    return n // 2 + 1


def default_neighbours(n: int) -> int | None:
    """The old SecAgg+ degree heuristic: the even number >= 2*ceil(log2 n), or None (complete
    graph) when that would not be sparser than n-1 anyway.

    Enough for the random graph to stay connected under a few random drop-outs, but not chosen
    for collusion: at n = 1000 (k = 20) about 24 nodes would have a threshold's worth of corrupt
    neighbours when a third of all nodes collude (issue #13). Sessions the gateway runs take
    their parameters from :func:`secagg_plus_parameters` instead; this stays for benchmarks that
    compare against it.
    """
    if not isinstance(n, int) or n < 1:
        raise InvalidSpec(f"participant count must be a positive int, got {n!r}")
    k = 2 * math.ceil(math.log2(n)) if n > 1 else 2
    return k if k < n - 1 else None


# --------------------------------------------------------------------------------------------
# Choosing (k, t) from stated drop-out and corruption rates (Bell et al., CCS 2020)

#: Statistical security: the chance that the server learns more than the sum is < 2^-40.
SECURITY_BITS = 40
#: Correctness: the chance that a session aborts with no more drop-outs than stated is < 2^-20.
CORRECTNESS_BITS = 20
#: Up to this many nodes the gateway runs the complete graph (Bonawitz et al. 2017): there the
#: per-node cost is small anyway, and the threshold follows the parties (``domain.policy``).
COMPLETE_GRAPH_MAX_NODES = 40
#: Absorbs float rounding in rate * n, so that 0.3 * 10 counts 3 nodes, not 2.
_RATE_SLACK = 1e-9


class SecAggUnconfigurable(Conflict):
    """No secure-aggregation session meets the stated drop-out and corruption rates."""

    slug, title = "secagg-unconfigurable", "Secure aggregation cannot be configured"


@dataclass(frozen=True)
class SecAggParameters:
    """A session's graph and threshold, with the failure bounds they give at the stated rates.

    ``neighbours`` k is None for the complete graph. ``corrupt_nodes`` C and ``dropout_nodes``
    D are the counts the bounds assume (floor of rate * n; C is at least the absolute collusion
    margin ``colluding``). Bounds are probabilities over the session's random graph (its ring
    order is a hash of the session id): ``privacy_failure`` that the server, with C corrupt
    nodes, can learn more than the sum of >= t inputs; ``correctness_failure`` that D drop-outs
    abort the session. For the complete graph both are 0 or 1 (no randomness).
    """

    n: int
    neighbours: int | None
    threshold: int
    dropout_rate: float
    corrupt_rate: float
    colluding: int
    corrupt_nodes: int
    dropout_nodes: int
    privacy_failure: float
    correctness_failure: float
    security_bits: int = SECURITY_BITS
    correctness_bits: int = CORRECTNESS_BITS

    @property
    def sparse(self) -> bool:
        return self.neighbours is not None

    @property
    def neighbourhood_size(self) -> int:
        """Share holders per node: k+1 in SecAgg+, n with the complete graph."""
        return self.neighbours + 1 if self.neighbours is not None else self.n

    def to_dict(self) -> dict[str, object]:
        def log2(p: float) -> float | None:
            return round(math.log2(p), 1) if p > 0 else None

        return {
            "graph": "secagg+ random Harary graph (Bell et al. 2020)" if self.sparse
            else "complete (Bonawitz et al. 2017)",
            "nodes": self.n, "neighbours": self.neighbours if self.sparse else self.n - 1,
            "threshold": self.threshold, "share_holders": self.neighbourhood_size,
            "dropout_rate": self.dropout_rate, "corrupt_rate": self.corrupt_rate,
            "dropouts_assumed": self.dropout_nodes, "corrupt_assumed": self.corrupt_nodes,
            "colluding_margin": self.colluding,
            "guaranteed_dropout_tolerance": self.neighbourhood_size - self.threshold,
            "privacy_failure_bound": self.privacy_failure, "log2_privacy_failure": log2(self.privacy_failure),
            "correctness_failure_bound": self.correctness_failure,
            "log2_correctness_failure": log2(self.correctness_failure),
            "targets": {"privacy": 2.0 ** -self.security_bits, "correctness": 2.0 ** -self.correctness_bits},
        }


def _check_rate(name: str, rate: float) -> float:
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 <= rate < 1:
        raise InvalidSpec(f"{name} must be a number in [0, 1), got {rate!r}")
    return float(rate)


def _counts(n: int, dropout_rate: float, corrupt_rate: float, colluding: int) -> tuple[int, int]:
    """(C, D): corrupt and dropped nodes at the stated rates (Bell et al.: at most gamma*n, delta*n)."""
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_PARTICIPANTS:
        raise InvalidSpec(f"participant count must be an int in [1, {MAX_PARTICIPANTS}], got {n!r}")
    if isinstance(colluding, bool) or not isinstance(colluding, int) or colluding < 0:
        raise InvalidSpec(f"colluding must be a non-negative int, got {colluding!r}")
    gamma = _check_rate("corrupt_rate", corrupt_rate)
    delta = _check_rate("dropout_rate", dropout_rate)
    return max(math.floor(gamma * n + _RATE_SLACK), colluding), math.floor(delta * n + _RATE_SLACK)


def _log_comb(a: int, b: int) -> float:
    return math.lgamma(a + 1) - math.lgamma(b + 1) - math.lgamma(a - b + 1)


def _hypergeometric_upper_tails(population: int, marked: int, draws: int) -> list[float]:
    """tail[a] = P[X >= a] for a = 0..draws+1, X ~ Hypergeometric(population, marked, draws):
    how many of a node's k neighbours (drawn without replacement from the other n-1) are marked."""
    pmf = [0.0] * (draws + 2)
    lo, hi = max(0, draws - (population - marked)), min(marked, draws)
    denom = _log_comb(population, draws)
    for x in range(lo, hi + 1):
        pmf[x] = math.exp(_log_comb(marked, x) + _log_comb(population - marked, draws - x) - denom)
    tail = [0.0] * (draws + 2)
    for a in range(draws, -1, -1):  # summed from the far end: small tails keep their precision
        tail[a] = tail[a + 1] + pmf[a]
    return [min(x, 1.0) for x in tail]


def _disconnection_bound(n: int, k: int, bad: int) -> float:
    """P[the random Harary graph H_{k,n} minus ``bad`` random nodes is disconnected], bounded.

    Cutting the ring of H_{k,n} takes two runs of k/2 consecutive removed nodes (Bell et al.
    2020, §3: the graph is k-connected and its cuts are pairs of gaps); there are at most
    n(n-k-1)/2 such pairs, and each is all bad with probability (bad)_k / (n)_k (falling
    factorials: k given positions among n, filled from ``bad`` removed nodes). Union bound.
    """
    if k > bad:
        return 0.0
    log_p = (math.log(n) + math.log(max(n - k - 1, 1)) - math.log(2)
             + math.lgamma(bad + 1) - math.lgamma(bad - k + 1)
             + math.lgamma(n - k + 1) - math.lgamma(n + 1))
    return min(1.0, math.exp(log_p))


@functools.lru_cache(maxsize=256)
def secagg_plus_parameters(n: int, *, dropout_rate: float, corrupt_rate: float, colluding: int = 0,
                           security_bits: int = SECURITY_BITS,
                           correctness_bits: int = CORRECTNESS_BITS) -> SecAggParameters:
    """The sparsest SecAgg+ graph (smallest even k < n-1) and a threshold t meeting both targets.

    Bell et al., CCS 2020 (random Harary graph, semi-malicious server): the server and C corrupt
    nodes (C = max(floor(corrupt_rate*n), colluding)) may deviate; D = floor(dropout_rate*n) nodes
    may drop out over the session; the graph is drawn after both sets are fixed (from the session
    id). For each k the conditions, each bounded over the random graph and unioned over all n
    nodes, are:

    privacy (< 2^-security_bits together):
      1. the graph minus the corrupt and dropped nodes stays connected (else the server learns
         partial sums) — :func:`_disconnection_bound` with C + D removed nodes;
      2. every honest node u has fewer than 2t - (k+1) corrupt neighbours, X ~ Hyp(n-1, C, k):
         then two survivor sets each signed by t of H(u) (k+1 holders) share an honest signer,
         so the server cannot show u two different sets in Round 3 (this node rule's "2t > h + c"
         with c = the corrupt neighbours), and as 2t - (k+1) <= t, fewer than t corrupt holders
         can rebuild neither of u's secrets;
      and deterministically 2t > k + 1 + colluding (the node rule for the absolute margin);
    correctness (< 2^-correctness_bits):
      3. every node keeps >= t of its k neighbours, Y ~ Hyp(n-1, D, k) dropped: Y <= k - t
         (self masks of survivors and keys of the dropped can be rebuilt), plus condition 1 with
         the D dropped nodes alone (U3 connected).

    Condition 2 wants t large, 3 wants it small; the first k where they meet is returned, with
    the largest t condition 3 allows (the honest-share count the noise may count on grows with t;
    at the smallest feasible k the two usually coincide). Raises :class:`SecAggUnconfigurable`
    when no k < n-1 fits (few nodes, or rates too high: roughly corrupt + 2 * dropout must stay
    well below 1). Cached: the search is O(k^2) log-gamma calls.
    """
    corrupt, dropped = _counts(n, dropout_rate, corrupt_rate, colluding)
    privacy_target, correct_target = 2.0 ** -(security_bits + 1), 2.0 ** -correctness_bits
    for k in range(2, n - 1, 2):
        disconnect = _disconnection_bound(n, k, corrupt + dropped)
        if disconnect >= privacy_target:  # half of the privacy target for each of conditions 1, 2
            continue
        corrupt_tail = _hypergeometric_upper_tails(n - 1, corrupt, k)
        dropped_tail = _hypergeometric_upper_tails(n - 1, dropped, k)
        # t_high: the largest t with n * P[Y >= k - t + 1] < target.
        t_high = next((t for t in range(k + 1, 1, -1) if n * dropped_tail[k - t + 1] < correct_target), None)
        # t_low: the smallest t with 2t > k+1+colluding and n * P[X >= 2t-k-1] < target.
        t_low = next((t for t in range(2, k + 2)
                      if 2 * t > k + 1 + colluding and n * corrupt_tail[max(2 * t - k - 1, 0)] < privacy_target),
                     None)
        if t_high is None or t_low is None or t_low > t_high:
            continue
        t = t_high
        return SecAggParameters(
            n=n, neighbours=k, threshold=t, dropout_rate=float(dropout_rate), corrupt_rate=float(corrupt_rate),
            colluding=colluding, corrupt_nodes=corrupt, dropout_nodes=dropped,
            privacy_failure=min(1.0, disconnect + n * corrupt_tail[max(2 * t - k - 1, 0)]),
            correctness_failure=min(1.0, n * dropped_tail[k - t + 1] + _disconnection_bound(n, k, dropped)),
            security_bits=security_bits, correctness_bits=correctness_bits)
    raise SecAggUnconfigurable(
        f"no SecAgg+ neighbour graph over {n} nodes meets the stated rates ({dropout_rate:g} drop-out, "
        f"{corrupt_rate:g} corrupt: {dropped} drop-outs and {corrupt} colluding nodes) with privacy failure "
        f"< 2^-{security_bits} and correctness failure < 2^-{correctness_bits} (Bell et al. 2020); "
        "lower XDP_SECAGG_DROPOUT_RATE or XDP_SECAGG_CORRUPT_RATE, or add nodes")


def complete_graph_parameters(n: int, threshold: int, *, dropout_rate: float, corrupt_rate: float,
                              colluding: int = 0) -> SecAggParameters:
    """The complete graph (Bonawitz et al. 2017) with threshold t, judged at the stated rates.

    No randomness: privacy fails (bound 1) iff C >= 2t - n (two survivor sets signed by t of the
    n holders then need not share an honest signer, Round 3) or C >= t; correctness fails iff
    D > n - t. The threshold itself comes from the caller (the parties rule); nodes enforce
    their own 2t > n + c.
    """
    corrupt, dropped = _counts(n, dropout_rate, corrupt_rate, colluding)
    if not isinstance(threshold, int) or not 1 <= threshold <= n:
        raise InvalidSpec(f"threshold must be an int in [1, {n}], got {threshold!r}")
    safe = corrupt < min(2 * threshold - n, threshold)
    return SecAggParameters(
        n=n, neighbours=None, threshold=threshold, dropout_rate=float(dropout_rate),
        corrupt_rate=float(corrupt_rate), colluding=colluding, corrupt_nodes=corrupt, dropout_nodes=dropped,
        privacy_failure=0.0 if safe else 1.0, correctness_failure=0.0 if dropped <= n - threshold else 1.0)


def _check_id(kind: str, value: str) -> None:
    if not isinstance(value, str) or not value:
        raise InvalidSpec(f"{kind} must be a non-empty string")
    if len(value.encode()) > MAX_NODE_ID_BYTES:
        raise InvalidSpec(f"{kind} is longer than {MAX_NODE_ID_BYTES} bytes")


@dataclass(frozen=True, kw_only=True)
class SecAggConfig:
    """Public parameters of one secure-aggregation session, identical at every party.

    ``session_id`` must be unique per job *and* round (e.g. ``f"{job_id}/round/{r}"``): every
    key and mask is derived through HKDF bound to it, so masks never repeat across sessions.
    ``participants`` is the ordered roster; the sign of a pairwise mask follows this order, and
    with the complete graph a node's Shamir x-coordinate is its 1-based position (SecAgg+: its
    place in the owner's ring window, :meth:`share_x`).

    ``threshold`` t (default :func:`default_threshold`): shares are t-out-of-(holders), and the
    protocol aborts when fewer than t remain.

    ``neighbours`` k (SecAgg+, Bell et al., CCS 2020): when set and smaller than n-1, nodes sit
    on a ring in a pseudorandom order derived from ``session_id`` (a random Harary graph
    H_{k,n}: each node is linked to the k/2 nearest on each side, so the graph is k-regular and
    k-vertex-connected). A node agrees pairwise masks only with its k neighbours N(u) and
    Shamir-shares its secrets only among its neighbourhood H(u) = N(u) + {u} (k+1 holders).
    The threshold then applies per neighbourhood: 2 <= t <= k+1, default
    ``default_threshold(k+1)``. The session completes iff

    1. every phase keeps at least t nodes overall (|U1|, |U2|, |U3|, |U4|, |U5| >= t; U4 signed
       U3, U5 answered the unmasking request),
    2. every u in U3 has >= t of H(u) in U5 (to rebuild its self mask b_u),
    3. every u in U2 \\ U3 with a neighbour in U3 has >= t of N(u) in U5 (to rebuild s_u^SK),
    4. the graph induced on U3 is connected (otherwise the server would learn the sum of each
       component separately, which is more than the total; we abort instead).

    Guaranteed tolerance: any k+1-t drop-outs, spread over any phases. (Each neighbourhood then
    keeps >= t members, and H_{k,n} is k-connected, so removing k+1-t <= k-1 nodes cannot
    disconnect it.) Beyond that it depends on *which* nodes drop; random drop-outs are usually
    survivable when k ~ 2 log2 n (Bell et al.'s analysis; see :func:`default_neighbours`), and
    when they are not, the server and the clients abort cleanly instead of leaking.
    Privacy against collusion is also per neighbourhood: the server plus t of a node's k
    neighbours can unmask it, versus t of all n nodes in the full protocol. The graph is
    public and fixed by ``session_id``; an honest-but-curious server does not grind ids.
    With ``neighbours`` unset (or >= n-1) the graph is complete: the original protocol, which
    tolerates any n-t drop-outs.
    """

    session_id: bytes
    participants: tuple[str, ...]
    vector_length: int
    threshold: int | None = None
    neighbours: int | None = None

    def __post_init__(self) -> None:
        sid = self.session_id
        if isinstance(sid, str):
            sid = sid.encode()
        if not isinstance(sid, (bytes, bytearray)) or not 1 <= len(sid) <= MAX_SESSION_ID_BYTES:
            raise InvalidSpec(f"session_id must be 1..{MAX_SESSION_ID_BYTES} bytes")
        object.__setattr__(self, "session_id", bytes(sid))
        if isinstance(self.participants, str):
            raise InvalidSpec("participants must be a sequence of node ids, not a string")
        parts = tuple(self.participants)
        if not 1 <= len(parts) <= MAX_PARTICIPANTS:
            raise InvalidSpec(f"need 1..{MAX_PARTICIPANTS} participants, got {len(parts)}")
        if not all(isinstance(p, str) and 0 < len(p) and len(p.encode()) <= MAX_NODE_ID_BYTES for p in parts):
            for p in parts:
                _check_id("participant id", p)  # names the problem
        if len(set(parts)) != len(parts):
            raise InvalidSpec("participant ids must be unique")
        object.__setattr__(self, "participants", parts)
        m = self.vector_length
        if not isinstance(m, int) or isinstance(m, bool) or not 1 <= m <= MAX_VECTOR_LENGTH:
            raise InvalidSpec(f"vector_length must be an int in [1, {MAX_VECTOR_LENGTH}], got {m!r}")
        n = len(parts)
        k = self.neighbours
        if k is not None and (not isinstance(k, int) or isinstance(k, bool) or k < 2 or k % 2):
            raise InvalidSpec(f"neighbours must be an even int >= 2 (Harary ring), got {k!r}")
        size = self.neighbourhood_size
        t = self.threshold
        if t is None:
            t = default_threshold(size)
            object.__setattr__(self, "threshold", t)
        if not isinstance(t, int) or isinstance(t, bool):
            raise InvalidSpec(f"threshold must be an int, got {t!r}")
        low = 2 if n >= 2 else 1  # t = 1 would hand a node's secrets to any single holder
        if not low <= t <= size:
            raise InvalidSpec(f"threshold must be in [{low}, {size}] for neighbourhoods of {size}, got {t}")

    # -- derived, public -------------------------------------------------------------------

    @property
    def n(self) -> int:
        return len(self.participants)

    @property
    def t(self) -> int:
        """The resolved threshold (never None after construction)."""
        assert self.threshold is not None
        return self.threshold

    @property
    def sparse(self) -> bool:
        """True when the SecAgg+ neighbour graph is in use (k < n-1)."""
        return self.neighbours is not None and self.neighbours < self.n - 1

    @property
    def neighbourhood_size(self) -> int:
        """Number of share holders per node: k+1 in SecAgg+ mode, n otherwise."""
        return self.neighbours + 1 if self.sparse and self.neighbours is not None else self.n

    @property
    def guaranteed_dropout_tolerance(self) -> int:
        """Drop-outs survived whatever their pattern: n-t, or k+1-t with the neighbour graph."""
        return self.neighbourhood_size - self.t

    @cached_property
    def _index(self) -> dict[str, int]:
        return {p: i for i, p in enumerate(self.participants)}

    def index(self, node_id: str) -> int:
        """0-based position of ``node_id``; raises MalformedMessage for a stranger."""
        try:
            return self._index[node_id]
        except (KeyError, TypeError):
            raise MalformedMessage(f"{node_id!r} is not a participant of this session") from None

    def x_of(self, node_id: str) -> int:
        """Shamir x-coordinate of ``node_id`` (1-based position)."""
        return self.index(node_id) + 1

    @cached_property
    def _ring(self) -> tuple[tuple[str, ...], dict[str, int]]:
        """The SecAgg+ ring order and each node's position on it (sparse sessions only).

        Bell et al. 2020, §3: a random Harary graph. The ring order is a keyed-hash sort under a
        key derived from the session id, so every party computes the same graph without talking.
        O(n) hashes once per session; a node's neighbourhood is then read off the ring in O(k),
        without building the whole graph (issue #13: per-node cost ~ k, not n).
        """
        # Keyed BLAKE2b (a PRF: 2.5x cheaper than HMAC-SHA256 here, and the n hashes are the one
        # O(n) step of a node's setup). The keyed state is set up once and copied per id (the key
        # block is hashed once, not n times); sorting (digest, id) pairs compares ids only on a
        # tie, which never occurs. Same order as sorting ids by their keyed digest.
        key = hashlib.sha256(prg.hkdf_info("neighbour-graph v2", [self.session_id])).digest()
        keyed = hashlib.blake2b(key=key, digest_size=16)
        tagged = []
        for p in self.participants:
            h = keyed.copy()
            h.update(p.encode())
            tagged.append((h.digest(), p))
        tagged.sort()
        ring = tuple(p for _, p in tagged)
        return ring, {p: i for i, p in enumerate(ring)}

    @cached_property
    def _neighbour_cache(self) -> dict[str, frozenset[str]]:
        return {}

    @cached_property
    def _holder_cache(self) -> dict[str, frozenset[str]]:
        return {}

    def neighbours_of(self, node_id: str) -> frozenset[str]:
        """N(u): the peers ``node_id`` agrees pairwise masks with (everyone else if not sparse)."""
        got = self._neighbour_cache.get(node_id)
        if got is None:
            self.index(node_id)
            if not self.sparse:
                got = frozenset(self.participants) - {node_id}
            else:
                ring, pos = self._ring
                n, half, i = len(ring), (self.neighbours or 0) // 2, pos[node_id]
                got = frozenset(ring[(i + d) % n] for d in range(-half, half + 1) if d)
            self._neighbour_cache[node_id] = got
        return got

    def holders_of(self, node_id: str) -> frozenset[str]:
        """H(u) = N(u) + {u}: who holds Shamir shares of ``node_id``'s secrets."""
        got = self._holder_cache.get(node_id)
        if got is None:
            got = self._holder_cache[node_id] = self.neighbours_of(node_id) | {node_id}
        return got

    def share_x(self, owner: str, holder: str) -> int:
        """The Shamir x-coordinate of ``holder``'s share of ``owner``'s secrets, in 1..|H(owner)|.

        Complete graph: the holder's roster position (:meth:`x_of`). SecAgg+: the holder's place
        in the owner's ring window (the owner itself in the middle, k/2 + 1). Either way the
        holders of one secret sit at exactly 1..h, so the aggregator interpolates from the
        binomial coefficients of the full window, corrected only for the missing holders
        (O(h * missing) per secret instead of O(t^2), ``server``). MalformedMessage when
        ``holder`` is not in H(owner).
        """
        if not self.sparse:
            self.index(owner)
            return self.x_of(holder)
        self.index(owner)
        self.index(holder)
        ring, pos = self._ring
        half = (self.neighbours or 0) // 2
        offset = (pos[holder] - pos[owner] + half) % len(ring)
        if offset > 2 * half:
            raise MalformedMessage(f"{holder!r} holds no share of {owner!r}'s secrets")
        return offset + 1

    def is_connected(self, nodes: Iterable[str]) -> bool:
        """Whether the neighbour graph restricted to ``nodes`` is connected.

        Any non-empty set is, in the complete graph. In the Harary ring, two nodes are adjacent
        iff their ring distance is at most k/2, so ``nodes`` is connected iff at most one of the
        circular gaps between consecutive members (in ring order) is wider than k/2: cutting
        the ring needs two such gaps, and with one the members form a chain. O(|nodes| log n),
        no graph traversal.
        """
        members = nodes if isinstance(nodes, (set, frozenset)) else set(nodes)
        if not members:
            return False
        if not self.sparse:
            for v in members:
                self.index(v)
            return True
        ring, pos = self._ring
        n, half = len(ring), (self.neighbours or 0) // 2
        try:  # ring positions double as the membership check (a node reads U3 this way each session)
            at = sorted([pos[v] for v in members])
        except (KeyError, TypeError):
            for v in members:
                self.index(v)  # names the stranger
            raise
        wide = sum(1 for a, b in itertools.pairwise(at) if b - a > half)
        wide += (at[0] + n - at[-1]) > half
        return wide <= 1

    def mask_sign(self, u: str, v: str) -> int:
        """Delta_{u,v} of Bonawitz et al. Round 2: +1 if u comes after v in the roster, else -1."""
        return 1 if self.index(u) > self.index(v) else -1


def abort(phase: Phase, detail: str, **extra: object) -> ProtocolAborted:
    """The :class:`ProtocolAborted` either side raises when the session cannot complete."""
    return ProtocolAborted(
        f"secure aggregation aborted in phase {phase.label}: {detail}", phase=phase.label, **extra
    )
