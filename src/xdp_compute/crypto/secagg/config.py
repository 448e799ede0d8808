"""Public parameters of a secure-aggregation session: limits, phases, errors and the SecAgg+ graph.

One vocabulary for both sides (clients and server import the same names). :class:`SecAggConfig`
is identical at every party; from ``session_id`` alone each party derives the same SecAgg+
neighbour graph (Bell et al., CCS 2020), so the graph needs no message of its own.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property

from xdp_compute.crypto import prg
from xdp_compute.errors import BadRequest, Conflict, InvalidSpec, ProtocolAborted

MAX_SESSION_ID_BYTES = 256
MAX_NODE_ID_BYTES = 256
#: Shamir x-coordinates are u16 (1-based participant positions).
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
    """A SecAgg+ degree for n nodes: the even number >= 2*ceil(log2 n), or None (complete graph)
    when that would not be sparser than n-1 anyway.

    Per-node cost then grows like log n instead of n; see :class:`SecAggConfig` for what the
    graph costs in drop-out and collusion tolerance.
    """
    if not isinstance(n, int) or n < 1:
        raise InvalidSpec(f"participant count must be a positive int, got {n!r}")
    k = 2 * math.ceil(math.log2(n)) if n > 1 else 2
    return k if k < n - 1 else None


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
    ``participants`` is the ordered roster; a node's Shamir x-coordinate is its 1-based
    position, and the sign of a pairwise mask follows this order.

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
        for p in parts:
            _check_id("participant id", p)
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
    def _graph(self) -> dict[str, frozenset[str]]:
        parts = self.participants
        if not self.sparse:
            everyone = frozenset(parts)
            return {p: everyone - {p} for p in parts}
        # Bell et al. 2020, §3: a random Harary graph. The ring order is a keyed-hash sort under a
        # key derived from the session id, so every party computes the same graph without talking.
        key = hashlib.sha256(prg.hkdf_info("neighbour-graph", [self.session_id])).digest()
        ring = sorted(parts, key=lambda p: hmac.new(key, p.encode(), hashlib.sha256).digest())
        n, half = len(ring), (self.neighbours or 0) // 2
        graph: dict[str, frozenset[str]] = {}
        for i, p in enumerate(ring):
            graph[p] = frozenset(ring[(i + d) % n] for d in range(-half, half + 1) if d)
        return graph

    def neighbours_of(self, node_id: str) -> frozenset[str]:
        """N(u): the peers ``node_id`` agrees pairwise masks with (everyone else if not sparse)."""
        self.index(node_id)
        return self._graph[node_id]

    def holders_of(self, node_id: str) -> frozenset[str]:
        """H(u) = N(u) + {u}: who holds Shamir shares of ``node_id``'s secrets."""
        return self.neighbours_of(node_id) | {node_id}

    def is_connected(self, nodes: Iterable[str]) -> bool:
        """Whether the neighbour graph restricted to ``nodes`` is connected."""
        members = set(nodes)
        if not members:
            return False
        start = next(iter(members))
        seen, todo = {start}, deque([start])
        while todo:
            for v in self._graph[todo.popleft()]:
                if v in members and v not in seen:
                    seen.add(v)
                    todo.append(v)
        return len(seen) == len(members)

    def mask_sign(self, u: str, v: str) -> int:
        """Delta_{u,v} of Bonawitz et al. Round 2: +1 if u comes after v in the roster, else -1."""
        return 1 if self.index(u) > self.index(v) else -1


def abort(phase: Phase, detail: str, **extra: object) -> ProtocolAborted:
    """The :class:`ProtocolAborted` either side raises when the session cannot complete."""
    return ProtocolAborted(
        f"secure aggregation aborted in phase {phase.label}: {detail}", phase=phase.label, **extra
    )
