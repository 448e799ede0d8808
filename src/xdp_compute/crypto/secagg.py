"""Secure aggregation of uint64 vectors: Bonawitz et al., CCS 2017, with optional SecAgg+ graph.

"Practical Secure Aggregation for Privacy-Preserving Machine Learning" (Bonawitz, Ivanov,
Kreuter, Marcedone, McMahan, Patel, Ramage, Segal, Seth; CCS 2017), Fig. 4, honest-but-curious
variant: no signatures and no Round 3 (ConsistencyCheck, needed only against an active server).
Our four phases are the paper's Round 0 (AdvertiseKeys), Round 1 (ShareKeys), Round 2
(MaskedInputCollection) and Round 4 (Unmasking).

The server learns sum_{u in U3} x_u mod 2^64 and nothing else about any single x_u, as long as
fewer than ``threshold`` share holders of a node collude with it and the clients' rules below
are followed; it tolerates drop-outs at every phase while at least ``threshold`` remain (for the
exact SecAgg+ condition see :class:`SecAggConfig`).

Everything here is a pure state machine: no transport, no clock. Messages are dataclasses with
``encode() -> bytes`` and ``decode(bytes)``; the caller moves the bytes (gRPC in xdp-compute),
tells the server which authenticated node sent each one, and decides when a round is over
(``SecAggServer.close_*``): whatever arrived by then is the round's survivor set.

Wire format (all integers big-endian except vector words, which are little-endian uint64)::

    frame  = "XSA" version:u8 type:u8 session:blob16 body      (no trailing bytes allowed)
    blob16 = len:u16 bytes        str16 = blob16 holding UTF-8
    vector = m:u32 then 8*m bytes

Decoding checks every length against the bytes present and the limits below before
allocating, so garbage raises :class:`MalformedMessage` (a ``BadRequest``), never crashes.

Sets, in the paper's notation: U1 advertised keys, U2 sent encrypted shares, U3 sent a masked
input (their inputs are summed), U4 answered the unmasking request.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import math
import secrets
import struct
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import ClassVar, NamedTuple, TypeVar

import numpy as np
import numpy.typing as npt
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from xdp_compute.crypto import prg, shamir
from xdp_compute.crypto.shamir import Share
from xdp_compute.errors import (
    BadRequest,
    Conflict,
    InvalidCiphertext,
    InvalidKey,
    InvalidSpec,
    ProtocolAborted,
)

__all__ = [
    "MAX_NODE_ID_BYTES",
    "MAX_PARTICIPANTS",
    "MAX_SESSION_ID_BYTES",
    "MAX_VECTOR_LENGTH",
    "SHARE_CIPHERTEXT_BYTES",
    "AdvertiseKeys",
    "EncryptedShares",
    "KeyRoster",
    "MalformedMessage",
    "MaskedInput",
    "NodeKeys",
    "Phase",
    "RoundConflict",
    "SecAggClient",
    "SecAggConfig",
    "SecAggMessage",
    "SecAggServer",
    "ShareKeys",
    "UnmaskRequest",
    "UnmaskResponse",
    "decode_message",
    "default_neighbours",
    "default_threshold",
    "run_local_session",
]

U64Vector = npt.NDArray[np.uint64]

MAX_SESSION_ID_BYTES = 256
MAX_NODE_ID_BYTES = 256
#: Shamir x-coordinates are u16 (1-based participant positions).
MAX_PARTICIPANTS = 65535
#: 16 Mi words = 128 MiB per masked vector; anything larger is refused at decode time.
MAX_VECTOR_LENGTH = 1 << 24
_KEY_BYTES = 32
_NONCE_BYTES = 12
_TAG_BYTES = 16
_SHARE_PLAINTEXT_BYTES = 2 * shamir.SHARE_BYTES
#: nonce || AES-GCM(share of s_sk || share of b_u) || tag.
SHARE_CIPHERTEXT_BYTES = _NONCE_BYTES + _SHARE_PLAINTEXT_BYTES + _TAG_BYTES
_MAGIC = b"XSA"
_VERSION = 1


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
    """Protocol phases; the value is the paper's round number (Round 3 is skipped)."""

    ADVERTISE_KEYS = 0
    SHARE_KEYS = 1
    MASKED_INPUT = 2
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

    1. every phase keeps at least t nodes overall (|U1|, |U2|, |U3|, |U4| >= t),
    2. every u in U3 has >= t of H(u) in U4 (to rebuild its self mask b_u),
    3. every u in U2 \\ U3 with a neighbour in U3 has >= t of N(u) in U4 (to rebuild s_u^SK),
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


# --------------------------------------------------------------------------------------------
# Key derivations (all HKDF-SHA256 bound to the session, see prg.derive_seed)


def _pair(config: SecAggConfig, u: str, v: str) -> list[bytes | str]:
    lo, hi = (u, v) if config.index(u) < config.index(v) else (v, u)
    return [config.session_id, lo, hi]


def _agree(sk: X25519PrivateKey, pk_raw: bytes) -> bytes:
    try:
        return sk.exchange(X25519PublicKey.from_public_bytes(pk_raw))
    except ValueError as exc:  # low-order point -> all-zero secret, refused by OpenSSL
        raise InvalidKey("X25519 public key gives a degenerate shared secret") from exc


def _pairwise_seed(config: SecAggConfig, s_sk: X25519PrivateKey, u: str, v: str, s_pk_v: bytes) -> bytes:
    # Round 2: s_{u,v} = KA.agree(s_u^SK, s_v^PK), then a PRG seed bound to session and pair.
    return prg.derive_seed(_agree(s_sk, s_pk_v), purpose="pairwise-mask", context=_pair(config, u, v))


def _self_mask_seed(config: SecAggConfig, u: str, b_u: bytes) -> bytes:
    return prg.derive_seed(b_u, purpose="self-mask", context=[config.session_id, u])


def _share_key(config: SecAggConfig, c_sk: X25519PrivateKey, u: str, v: str, c_pk_v: bytes) -> bytes:
    # Round 1: c_{u,v} = KA.agree(c_u^SK, c_v^PK) keys the authenticated encryption of shares.
    return prg.derive_seed(_agree(c_sk, c_pk_v), purpose="share-encryption", context=_pair(config, u, v))


def _share_aad(config: SecAggConfig, sender: str, recipient: str) -> bytes:
    # Binds session and direction: the paper puts u || v inside the ciphertext for the same reason.
    return prg.hkdf_info("share-ciphertext", [config.session_id, sender, recipient])


# --------------------------------------------------------------------------------------------
# Wire framing


class _Writer:
    def __init__(self, msg_type: int, session_id: bytes) -> None:
        self._parts: list[bytes] = [_MAGIC, bytes([_VERSION, msg_type])]
        self.blob16(session_id)

    def u16(self, v: int) -> None:
        self._parts.append(struct.pack(">H", v))

    def u32(self, v: int) -> None:
        self._parts.append(struct.pack(">I", v))

    def blob16(self, b: bytes) -> None:
        self.u16(len(b))
        self._parts.append(bytes(b))

    def str16(self, s: str) -> None:
        self.blob16(s.encode())

    def raw(self, b: bytes) -> None:
        self._parts.append(b)

    def vector(self, v: U64Vector) -> None:
        self.u32(v.shape[0])
        self._parts.append(np.ascontiguousarray(v, dtype="<u8").tobytes())

    def getvalue(self) -> bytes:
        return b"".join(self._parts)


class _Reader:
    def __init__(self, data: object, msg_type: int, name: str) -> None:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise MalformedMessage(f"{name}: expected bytes, got {type(data).__name__}")
        self._b = bytes(data)
        self._pos = 0
        self._name = name
        if self.take(3) != _MAGIC:
            raise MalformedMessage(f"{name}: not a secure-aggregation message")
        version, got_type = self.take(2)
        if version != _VERSION:
            raise MalformedMessage(f"{name}: unsupported version {version}")
        if got_type != msg_type:
            raise MalformedMessage(f"{name}: message type {got_type} is not {msg_type}")
        self.session_id = self.blob16(MAX_SESSION_ID_BYTES, "session_id")
        if not self.session_id:
            raise MalformedMessage(f"{name}: empty session_id")

    @property
    def remaining(self) -> int:
        return len(self._b) - self._pos

    def take(self, k: int) -> bytes:
        if k > self.remaining:
            raise MalformedMessage(f"{self._name}: truncated message")
        out = self._b[self._pos : self._pos + k]
        self._pos += k
        return out

    def u16(self) -> int:
        return int(struct.unpack(">H", self.take(2))[0])

    def u32(self) -> int:
        return int(struct.unpack(">I", self.take(4))[0])

    def blob16(self, limit: int, what: str) -> bytes:
        k = self.u16()
        if k > limit:
            raise MalformedMessage(f"{self._name}: {what} longer than {limit} bytes")
        return self.take(k)

    def node_id(self, what: str = "node id") -> str:
        raw = self.blob16(MAX_NODE_ID_BYTES, what)
        try:
            s = raw.decode()
        except UnicodeDecodeError:
            raise MalformedMessage(f"{self._name}: {what} is not UTF-8") from None
        if not s:
            raise MalformedMessage(f"{self._name}: empty {what}")
        return s

    def count(self, min_entry_bytes: int, what: str) -> int:
        c = self.u32()
        if c > MAX_PARTICIPANTS or c * min_entry_bytes > self.remaining:
            raise MalformedMessage(f"{self._name}: implausible {what} count {c}")
        return c

    def vector(self) -> U64Vector:
        m = self.u32()
        if m > MAX_VECTOR_LENGTH:
            raise MalformedMessage(f"{self._name}: vector of {m} words exceeds {MAX_VECTOR_LENGTH}")
        if 8 * m > self.remaining:
            raise MalformedMessage(f"{self._name}: truncated vector")
        # Zero-copy, read-only view of the received bytes; consumers never write into it.
        arr = np.frombuffer(self._b, dtype="<u8", count=m, offset=self._pos).astype(np.uint64, copy=False)
        self._pos += 8 * m
        return arr

    def end(self) -> None:
        if self.remaining:
            raise MalformedMessage(f"{self._name}: {self.remaining} trailing bytes")


_M = TypeVar("_M")


def _unique_map(pairs: Iterable[tuple[str, _M]], name: str, what: str) -> dict[str, _M]:
    out: dict[str, _M] = {}
    for k, v in pairs:
        if k in out:
            raise MalformedMessage(f"{name}: duplicate {what} {k!r}")
        out[k] = v
    return out


def _check_key(name: str, key: object, what: str) -> bytes:
    if not isinstance(key, (bytes, bytearray)) or len(key) != _KEY_BYTES:
        raise MalformedMessage(f"{name}: {what} must be {_KEY_BYTES} bytes")
    return bytes(key)


# --------------------------------------------------------------------------------------------
# Messages


class NodeKeys(NamedTuple):
    """A node's two X25519 public keys (Round 0): c_pk encrypts shares, s_pk seeds masks."""

    c_pk: bytes
    s_pk: bytes


@dataclass(frozen=True)
class AdvertiseKeys:
    """Round 0, client -> server: the node's public keys."""

    TYPE: ClassVar[int] = 1
    session_id: bytes
    sender: str
    c_pk: bytes
    s_pk: bytes

    def encode(self) -> bytes:
        w = _Writer(self.TYPE, self.session_id)
        w.str16(self.sender)
        w.raw(_check_key("AdvertiseKeys", self.c_pk, "c_pk"))
        w.raw(_check_key("AdvertiseKeys", self.s_pk, "s_pk"))
        return w.getvalue()

    @classmethod
    def decode(cls, data: bytes) -> AdvertiseKeys:
        r = _Reader(data, cls.TYPE, cls.__name__)
        sender = r.node_id("sender")
        c_pk, s_pk = r.take(_KEY_BYTES), r.take(_KEY_BYTES)
        r.end()
        return cls(r.session_id, sender, c_pk, s_pk)


@dataclass(frozen=True)
class KeyRoster:
    """Round 0 -> 1, server -> client: public keys of the U1 nodes the recipient deals with.

    In SecAgg+ mode only the recipient's neighbourhood (and itself) is listed.
    """

    TYPE: ClassVar[int] = 2
    session_id: bytes
    keys: Mapping[str, NodeKeys]

    def encode(self) -> bytes:
        w = _Writer(self.TYPE, self.session_id)
        w.u32(len(self.keys))
        for node in sorted(self.keys):
            c_pk, s_pk = self.keys[node]
            w.str16(node)
            w.raw(_check_key("KeyRoster", c_pk, "c_pk"))
            w.raw(_check_key("KeyRoster", s_pk, "s_pk"))
        return w.getvalue()

    @classmethod
    def decode(cls, data: bytes) -> KeyRoster:
        r = _Reader(data, cls.TYPE, cls.__name__)
        count = r.count(3 + 2 * _KEY_BYTES, "roster entry")
        entries = []
        for _ in range(count):
            node = r.node_id()
            entries.append((node, NodeKeys(r.take(_KEY_BYTES), r.take(_KEY_BYTES))))
        r.end()
        return cls(r.session_id, _unique_map(entries, cls.__name__, "node"))


def _encode_ciphertext_map(w: _Writer, cts: Mapping[str, bytes], name: str) -> None:
    w.u32(len(cts))
    for node in sorted(cts):
        ct = cts[node]
        if not isinstance(ct, (bytes, bytearray)) or len(ct) != SHARE_CIPHERTEXT_BYTES:
            raise MalformedMessage(f"{name}: share ciphertext must be {SHARE_CIPHERTEXT_BYTES} bytes")
        w.str16(node)
        w.raw(bytes(ct))


def _decode_ciphertext_map(r: _Reader, name: str) -> dict[str, bytes]:
    count = r.count(3 + SHARE_CIPHERTEXT_BYTES, "ciphertext")
    pairs = [(r.node_id(), r.take(SHARE_CIPHERTEXT_BYTES)) for _ in range(count)]
    return _unique_map(pairs, name, "node")


@dataclass(frozen=True)
class ShareKeys:
    """Round 1, client -> server: encrypted shares of s_sk and b_u, one ciphertext per recipient."""

    TYPE: ClassVar[int] = 3
    session_id: bytes
    sender: str
    ciphertexts: Mapping[str, bytes]

    def encode(self) -> bytes:
        w = _Writer(self.TYPE, self.session_id)
        w.str16(self.sender)
        _encode_ciphertext_map(w, self.ciphertexts, "ShareKeys")
        return w.getvalue()

    @classmethod
    def decode(cls, data: bytes) -> ShareKeys:
        r = _Reader(data, cls.TYPE, cls.__name__)
        sender = r.node_id("sender")
        cts = _decode_ciphertext_map(r, cls.__name__)
        r.end()
        return cls(r.session_id, sender, cts)


@dataclass(frozen=True)
class EncryptedShares:
    """Round 1 -> 2, server -> client: the ciphertexts addressed to ``recipient``, by sender.

    The senders are exactly the recipient's peers in U2; it masks with them.
    """

    TYPE: ClassVar[int] = 4
    session_id: bytes
    recipient: str
    ciphertexts: Mapping[str, bytes]

    def encode(self) -> bytes:
        w = _Writer(self.TYPE, self.session_id)
        w.str16(self.recipient)
        _encode_ciphertext_map(w, self.ciphertexts, "EncryptedShares")
        return w.getvalue()

    @classmethod
    def decode(cls, data: bytes) -> EncryptedShares:
        r = _Reader(data, cls.TYPE, cls.__name__)
        recipient = r.node_id("recipient")
        cts = _decode_ciphertext_map(r, cls.__name__)
        r.end()
        return cls(r.session_id, recipient, cts)


@dataclass(frozen=True, eq=False)
class MaskedInput:
    """Round 2, client -> server: y_u = x_u + PRG(b_u) + sum_v Delta_{u,v} PRG(s_{u,v}) mod 2^64."""

    TYPE: ClassVar[int] = 5
    session_id: bytes
    sender: str
    vector: U64Vector

    def encode(self) -> bytes:
        v = np.asarray(self.vector)
        if v.dtype != np.uint64 or v.ndim != 1 or v.shape[0] > MAX_VECTOR_LENGTH:
            raise MalformedMessage(f"MaskedInput: vector must be 1-D uint64 of <= {MAX_VECTOR_LENGTH} words")
        w = _Writer(self.TYPE, self.session_id)
        w.str16(self.sender)
        w.vector(v)
        return w.getvalue()

    @classmethod
    def decode(cls, data: bytes) -> MaskedInput:
        r = _Reader(data, cls.TYPE, cls.__name__)
        sender = r.node_id("sender")
        vec = r.vector()
        r.end()
        return cls(r.session_id, sender, vec)


@dataclass(frozen=True)
class UnmaskRequest:
    """Round 2 -> 4, server -> clients: U3, the nodes whose masked inputs are in the sum."""

    TYPE: ClassVar[int] = 6
    session_id: bytes
    survivors: tuple[str, ...]

    def encode(self) -> bytes:
        w = _Writer(self.TYPE, self.session_id)
        w.u32(len(self.survivors))
        for node in self.survivors:
            w.str16(node)
        return w.getvalue()

    @classmethod
    def decode(cls, data: bytes) -> UnmaskRequest:
        r = _Reader(data, cls.TYPE, cls.__name__)
        count = r.count(3, "survivor")
        nodes = [r.node_id() for _ in range(count)]
        r.end()
        if len(set(nodes)) != len(nodes):
            raise MalformedMessage("UnmaskRequest: duplicate survivor")
        return cls(r.session_id, tuple(nodes))


def _encode_share_map(w: _Writer, shares: Mapping[str, Share]) -> None:
    w.u32(len(shares))
    for node in sorted(shares):
        w.str16(node)
        w.raw(shares[node].encode())


def _decode_share_map(r: _Reader, name: str) -> dict[str, Share]:
    count = r.count(3 + shamir.SHARE_BYTES, "share")
    pairs = []
    for _ in range(count):
        node = r.node_id()
        try:
            pairs.append((node, Share.decode(r.take(shamir.SHARE_BYTES))))
        except shamir.InvalidShare as exc:
            raise MalformedMessage(f"{name}: {exc.detail}") from None
    return _unique_map(pairs, name, "share owner")


@dataclass(frozen=True)
class UnmaskResponse:
    """Round 4, client -> server: shares of b_v for v in U3, of s_v^SK for v in U2 \\ U3.

    Keys are the owners of the shared secrets; every share carries the sender's x-coordinate.
    """

    TYPE: ClassVar[int] = 7
    session_id: bytes
    sender: str
    self_mask_shares: Mapping[str, Share]
    secret_key_shares: Mapping[str, Share]

    def encode(self) -> bytes:
        w = _Writer(self.TYPE, self.session_id)
        w.str16(self.sender)
        _encode_share_map(w, self.self_mask_shares)
        _encode_share_map(w, self.secret_key_shares)
        return w.getvalue()

    @classmethod
    def decode(cls, data: bytes) -> UnmaskResponse:
        r = _Reader(data, cls.TYPE, cls.__name__)
        sender = r.node_id("sender")
        b_shares = _decode_share_map(r, cls.__name__)
        sk_shares = _decode_share_map(r, cls.__name__)
        r.end()
        if set(b_shares) & set(sk_shares):
            raise MalformedMessage("UnmaskResponse: both kinds of share for the same node")
        return cls(r.session_id, sender, b_shares, sk_shares)


SecAggMessage = (
    AdvertiseKeys | KeyRoster | ShareKeys | EncryptedShares | MaskedInput | UnmaskRequest | UnmaskResponse
)

_BY_TYPE: dict[int, type[SecAggMessage]] = {
    c.TYPE: c
    for c in (
        AdvertiseKeys,
        KeyRoster,
        ShareKeys,
        EncryptedShares,
        MaskedInput,
        UnmaskRequest,
        UnmaskResponse,
    )
}


def decode_message(data: bytes) -> SecAggMessage:
    """Decode any secure-aggregation message by its type byte; raises MalformedMessage."""
    if not isinstance(data, (bytes, bytearray, memoryview)) or len(data) < 5 or bytes(data[:3]) != _MAGIC:
        raise MalformedMessage("not a secure-aggregation message")
    cls = _BY_TYPE.get(data[4])
    if cls is None:
        raise MalformedMessage(f"unknown secure-aggregation message type {data[4]}")
    return cls.decode(bytes(data))


def _coerce(message: object, cls: type[_M], name: str) -> _M:
    if isinstance(message, (bytes, bytearray, memoryview)):
        return cls.decode(bytes(message))  # type: ignore[attr-defined,no-any-return]
    if not isinstance(message, cls):
        raise MalformedMessage(f"expected {name}, got {type(message).__name__}")
    return message


def _abort(phase: Phase, detail: str, **extra: object) -> ProtocolAborted:
    return ProtocolAborted(
        f"secure aggregation aborted in phase {phase.label}: {detail}", phase=phase.label, **extra
    )


# --------------------------------------------------------------------------------------------
# Client


class SecAggClient:
    """One node's side of the protocol; call the four round methods in order, once each.

    Secrets (X25519 keys, b_u, shares) come from the OS CSPRNG and never leave the object
    except as encrypted shares or as the unmasking shares the rules allow. ``unmask`` never
    reveals both the b-share and the s_sk-share of the same peer, and answers at most one
    survivor set.
    """

    def __init__(self, node_id: str, config: SecAggConfig) -> None:
        config.index(node_id)
        self.node_id = node_id
        self.config = config
        self._phase = Phase.ADVERTISE_KEYS
        self._c_sk: X25519PrivateKey | None = None
        self._s_sk: X25519PrivateKey | None = None
        self._keys: NodeKeys | None = None
        self._roster: dict[str, NodeKeys] = {}
        self._share_keys: dict[str, bytes] = {}  # c_{u,v} is symmetric: reused to decrypt in Round 2
        self._b: bytes = b""
        self._own_shares: tuple[Share, Share] | None = None  # (s_sk share, b share) held by self
        self._peer_shares: dict[str, tuple[Share, Share]] = {}
        self._mask: U64Vector | None = None
        self._mask_peers: frozenset[str] = frozenset()
        self._u2_peers: frozenset[str] = frozenset()
        self._answered: tuple[frozenset[str], UnmaskResponse] | None = None

    @property
    def phase(self) -> Phase:
        """The next round this client expects to run."""
        return self._phase

    def _expect(self, phase: Phase) -> None:
        if self._phase is Phase.ABORTED:
            raise RoundConflict(f"client {self.node_id} has aborted this session")
        if self._phase is not phase:
            raise RoundConflict(f"client {self.node_id} is in phase {self._phase.label}, not {phase.label}")

    def _fail(self, phase: Phase, detail: str, **extra: object) -> ProtocolAborted:
        self._phase = Phase.ABORTED
        return _abort(phase, detail, node=self.node_id, **extra)

    def _check_session(self, session_id: bytes) -> None:
        if session_id != self.config.session_id:
            raise MalformedMessage("message belongs to another secure-aggregation session")

    # Round 0 ------------------------------------------------------------------------------

    def advertise_keys(self) -> AdvertiseKeys:
        """Round 0 (AdvertiseKeys): generate (c_pk, c_sk) and (s_pk, s_sk); send both public keys."""
        self._expect(Phase.ADVERTISE_KEYS)
        self._c_sk, self._s_sk = X25519PrivateKey.generate(), X25519PrivateKey.generate()
        self._keys = NodeKeys(
            self._c_sk.public_key().public_bytes_raw(), self._s_sk.public_key().public_bytes_raw()
        )
        self._phase = Phase.SHARE_KEYS
        return AdvertiseKeys(self.config.session_id, self.node_id, self._keys.c_pk, self._keys.s_pk)

    # Round 1 ------------------------------------------------------------------------------

    def share_keys(self, roster: KeyRoster | bytes) -> ShareKeys:
        """Round 1 (ShareKeys): draw b_u, Shamir-share s_sk and b_u among H(u) in U1, encrypt each share.

        Aborts when fewer than t holders advertised keys (paper: "assert |U1| >= t") or when
        the roster's public keys are not pairwise distinct.
        """
        self._expect(Phase.SHARE_KEYS)
        r = _coerce(roster, KeyRoster, "KeyRoster")
        self._check_session(r.session_id)
        cfg, me = self.config, self.node_id
        assert self._keys is not None and self._c_sk is not None and self._s_sk is not None
        holders = cfg.holders_of(me)
        for node, keys in r.keys.items():
            cfg.index(node)
            _check_key("KeyRoster", keys.c_pk, "c_pk")
            _check_key("KeyRoster", keys.s_pk, "s_pk")
        if r.keys.get(me) != self._keys:
            raise MalformedMessage(f"KeyRoster does not list {me} with the keys it advertised")
        roster_here = {v: r.keys[v] for v in holders if v in r.keys}
        all_pks = [pk for keys in roster_here.values() for pk in keys]
        if len(set(all_pks)) != len(all_pks):
            raise self._fail(Phase.SHARE_KEYS, "public keys in the roster are not all distinct")
        if len(roster_here) < cfg.t:
            raise self._fail(
                Phase.SHARE_KEYS,
                f"{len(roster_here)} of {len(holders)} share holders advertised keys, threshold is {cfg.t}",
                survivors=len(roster_here),
                threshold=cfg.t,
            )
        self._roster = roster_here
        self._b = secrets.token_bytes(prg.SEED_BYTES)
        order = sorted(roster_here, key=cfg.index)
        xs = [cfg.x_of(v) for v in order]
        sk_shares = shamir.split_secret(self._s_sk.private_bytes_raw(), cfg.t, len(xs), xs=xs)
        b_shares = shamir.split_secret(self._b, cfg.t, len(xs), xs=xs)
        cts: dict[str, bytes] = {}
        for v, sk_sh, b_sh in zip(order, sk_shares, b_shares, strict=True):
            if v == me:
                self._own_shares = (sk_sh, b_sh)
                continue
            key = self._share_keys[v] = _share_key(cfg, self._c_sk, me, v, roster_here[v].c_pk)
            nonce = secrets.token_bytes(_NONCE_BYTES)
            ct = AESGCM(key).encrypt(nonce, sk_sh.encode() + b_sh.encode(), _share_aad(cfg, me, v))
            cts[v] = nonce + ct
        self._phase = Phase.MASKED_INPUT
        return ShareKeys(cfg.session_id, me, cts)

    # Round 2 ------------------------------------------------------------------------------

    def _mask_terms(self, peers: Iterable[str], *, negate: bool = False) -> list[prg.MaskTerm]:
        assert self._s_sk is not None
        cfg, me = self.config, self.node_id
        flip = -1 if negate else 1
        return [
            (_pairwise_seed(cfg, self._s_sk, me, v, self._roster[v].s_pk), flip * cfg.mask_sign(me, v))
            for v in sorted(peers, key=cfg.index)
        ]

    def precompute_mask(self) -> None:
        """Optional, after ``share_keys``: compute PRG(b_u) + sum Delta PRG(s_uv) over U1 peers now.

        The mask does not depend on the input, so a node can build it while its data are still
        being computed; ``masked_input`` then only adds (and corrects for peers that left
        between Round 1 and Round 2).
        """
        self._expect(Phase.MASKED_INPUT)
        if self._mask is not None:
            return
        cfg, me = self.config, self.node_id
        peers = frozenset(self._roster) - {me}
        terms = [(_self_mask_seed(cfg, me, self._b), 1), *self._mask_terms(peers)]
        self._mask = prg.combined_mask(terms, cfg.vector_length)
        self._mask_peers = peers

    def masked_input(self, x: npt.ArrayLike, shares: EncryptedShares | bytes) -> MaskedInput:
        """Round 2 (MaskedInputCollection): store peers' shares, send y = x + PRG(b_u) + sum_v Delta PRG(s_uv).

        ``x`` is a length-m uint64 vector (see :mod:`xdp_compute.crypto.fixedpoint`). The pairwise
        masks are taken with exactly the senders of ``shares`` (U2 peers). Aborts when fewer
        than t holders (self included) are left.
        """
        self._expect(Phase.MASKED_INPUT)
        cfg, me = self.config, self.node_id
        vec = np.asarray(x)
        if vec.dtype != np.uint64 or vec.shape != (cfg.vector_length,):
            raise InvalidSpec(
                f"input must be a uint64 vector of length {cfg.vector_length}, got {vec.dtype} {vec.shape}"
            )
        es = _coerce(shares, EncryptedShares, "EncryptedShares")
        self._check_session(es.session_id)
        if es.recipient != me:
            raise MalformedMessage(f"EncryptedShares are addressed to {es.recipient!r}, not {me!r}")
        assert self._c_sk is not None
        received: dict[str, tuple[Share, Share]] = {}
        for v, blob in es.ciphertexts.items():
            if v == me or v not in self._roster:
                raise MalformedMessage(f"EncryptedShares: {v!r} is not a share-exchanging peer of {me}")
            key = self._share_keys[v]
            try:
                pt = AESGCM(key).decrypt(blob[:_NONCE_BYTES], blob[_NONCE_BYTES:], _share_aad(cfg, v, me))
            except InvalidTag:
                raise InvalidCiphertext(f"share ciphertext from {v!r} does not authenticate") from None
            try:
                sk_sh = Share.decode(pt[: shamir.SHARE_BYTES])
                b_sh = Share.decode(pt[shamir.SHARE_BYTES :])
            except shamir.InvalidShare as exc:
                raise MalformedMessage(f"share from {v!r}: {exc.detail}") from None
            if sk_sh.x != cfg.x_of(me) or b_sh.x != cfg.x_of(me):
                raise MalformedMessage(f"share from {v!r} is not for {me}'s x-coordinate")
            received[v] = (sk_sh, b_sh)
        alive = len(received) + 1
        if alive < cfg.t:
            # Paper, Round 2: "if the list of ciphertexts contains < t-1 elements, abort".
            raise self._fail(
                Phase.MASKED_INPUT,
                f"{alive} share holders left, threshold is {cfg.t}",
                survivors=alive,
                threshold=cfg.t,
            )
        peers = frozenset(received)
        if self._mask is not None:
            gone = self._mask_peers - peers
            mask = self._mask
            if gone:
                mask = mask + prg.combined_mask(self._mask_terms(gone, negate=True), cfg.vector_length)
        else:
            terms = [(_self_mask_seed(cfg, me, self._b), 1), *self._mask_terms(peers)]
            mask = prg.combined_mask(terms, cfg.vector_length)
        y = np.add(vec, mask, out=mask)
        self._peer_shares = received
        self._u2_peers = peers
        # y is out: keep no copy of the mask nor the secrets behind it, only the shares Round 4 needs.
        self._share_keys = {}
        self._mask = None
        self._b = b""
        self._c_sk = self._s_sk = None
        self._phase = Phase.UNMASK
        return MaskedInput(cfg.session_id, me, y)

    # Round 4 ------------------------------------------------------------------------------

    def unmask(self, request: UnmaskRequest | bytes | Sequence[str]) -> UnmaskResponse:
        """Round 4 (Unmasking): reveal b-shares of survivors (U3) and s_sk-shares of U2 \\ U3 peers.

        Refuses (ProtocolAborted) when |U3| < t, when fewer than t of this node's holders
        survived, when U3 is disconnected in the neighbour graph, or when this node is not in
        U3. A repeated call with the same U3 returns the same answer; a different U3 is refused,
        so the server can never obtain both kinds of share for one peer.
        """
        if self._answered is None:
            self._expect(Phase.UNMASK)
        cfg, me = self.config, self.node_id
        if isinstance(request, (UnmaskRequest, bytes, bytearray, memoryview)):
            req = _coerce(request, UnmaskRequest, "UnmaskRequest")
            self._check_session(req.session_id)
            survivors = list(req.survivors)
        else:
            survivors = list(request)
        for v in survivors:
            cfg.index(v)
        u3 = frozenset(survivors)
        if len(u3) != len(survivors):
            raise MalformedMessage("UnmaskRequest: duplicate survivor")
        if self._answered is not None:
            if self._answered[0] == u3:
                return self._answered[1]
            raise RoundConflict(f"client {me} already answered a different survivor set")
        if me not in u3:
            raise self._fail(Phase.UNMASK, f"{me} is not among the survivors; it reveals nothing")
        if len(u3) < cfg.t:
            raise self._fail(
                Phase.UNMASK, f"{len(u3)} survivors, threshold is {cfg.t}", survivors=len(u3), threshold=cfg.t
            )
        held = self._u2_peers | {me}
        for v in cfg.neighbours_of(me) & u3:
            if v not in self._u2_peers:
                raise MalformedMessage(f"survivor {v!r} never sent {me} its shares, so it cannot be in U3")
        local = len(cfg.holders_of(me) & u3)
        if local < cfg.t:
            raise self._fail(
                Phase.UNMASK,
                f"{local} of {me}'s share holders survived, threshold is {cfg.t}",
                survivors=local,
                threshold=cfg.t,
            )
        if cfg.sparse and not cfg.is_connected(u3):
            raise self._fail(
                Phase.UNMASK,
                "survivors are disconnected in the neighbour graph; the server would learn partial sums",
            )
        assert self._own_shares is not None
        all_shares = {**self._peer_shares, me: self._own_shares}
        b_out = {v: all_shares[v][1] for v in held if v in u3}
        sk_out = {v: all_shares[v][0] for v in held if v not in u3}
        resp = UnmaskResponse(cfg.session_id, me, b_out, sk_out)
        self._answered = (u3, resp)
        self._peer_shares = {}
        self._phase = Phase.DONE
        return resp


# --------------------------------------------------------------------------------------------
# Server


class SecAggServer:
    """The aggregator's side: collect each round, route shares, unmask the sum of U3's inputs.

    Use ``receive(node_id, message)`` for every incoming message (``node_id`` is the identity
    the transport authenticated), and ``close_*`` when a round's deadline passes: whoever
    sent a valid message by then survived the round. Identical resends are ignored; a
    different second message from a node, a message for another phase, or one from a node
    that did not survive the previous round raises :class:`RoundConflict`. Once aborted,
    every call raises the same :class:`ProtocolAborted`.
    """

    def __init__(self, config: SecAggConfig) -> None:
        self.config = config
        self._phase = Phase.ADVERTISE_KEYS
        # Per round: who sent what (only what later rounds need), and a digest per sender to
        # recognise identical resends.
        self._advertised: dict[str, NodeKeys] = {}
        self._shared: dict[str, Mapping[str, bytes]] = {}
        self._responses: dict[str, UnmaskResponse] = {}
        self._digests: dict[Phase, dict[str, bytes]] = {
            p: {} for p in (Phase.ADVERTISE_KEYS, Phase.SHARE_KEYS, Phase.MASKED_INPUT, Phase.UNMASK)
        }
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
        """Nodes that completed ``phase`` (U1 for ADVERTISE_KEYS ... U4 for UNMASK), roster order."""
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
            Phase.UNMASK: Phase.MASKED_INPUT,
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

    # -- plumbing --------------------------------------------------------------------------

    def _check_alive(self) -> None:
        if self._error is not None:
            raise self._error

    def _fail(self, phase: Phase, detail: str, **extra: object) -> ProtocolAborted:
        self._phase = Phase.ABORTED
        self._acc = None
        self._inbox = {}
        self._responses = {}  # shares are secrets' fragments: keep none after the session
        self._error = _abort(phase, detail, **extra)
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
        Phase.UNMASK: UnmaskResponse,
    }
    _PREVIOUS: ClassVar[dict[Phase, Phase]] = {
        Phase.SHARE_KEYS: Phase.ADVERTISE_KEYS,
        Phase.MASKED_INPUT: Phase.SHARE_KEYS,
        Phase.UNMASK: Phase.MASKED_INPUT,
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
            or not isinstance(msg, (AdvertiseKeys, ShareKeys, MaskedInput, UnmaskResponse))
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
        else:
            assert isinstance(msg, UnmaskResponse)
            self._accept_unmask(msg)
        digests[node_id] = digest

    # Round 0 ------------------------------------------------------------------------------

    def _accept_keys(self, msg: AdvertiseKeys) -> None:
        _check_key("AdvertiseKeys", msg.c_pk, "c_pk")
        _check_key("AdvertiseKeys", msg.s_pk, "s_pk")
        self._advertised[msg.sender] = NodeKeys(msg.c_pk, msg.s_pk)

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
        m = self.config.vector_length
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

    def close_masked_input(self) -> UnmaskRequest:
        """End Round 2: U3 = nodes whose masked input arrived; check recoverability; return the request for Round 4.

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
        self._phase = Phase.UNMASK
        return UnmaskRequest(cfg.session_id, u3)

    def unmask_request(self) -> UnmaskRequest:
        """The Round 4 request (same for every node) once masked_input is closed."""
        self._check_alive()
        if Phase.MASKED_INPUT not in self._survivors:
            raise RoundConflict("the unmask request exists once masked_input is closed")
        return UnmaskRequest(self.config.session_id, self._survivors[Phase.MASKED_INPUT])

    def _needs(self) -> tuple[list[str], dict[str, list[str]]]:
        """Whose b_u (U3) and whose s_sk (U2\\U3 with U3 neighbours, and those neighbours) are needed."""
        cfg = self.config
        u3 = set(self._survivors[Phase.MASKED_INPUT])
        dropped = [u for u in self._survivors[Phase.SHARE_KEYS] if u not in u3]
        need_sk = {u: [v for v in cfg.participants if v in cfg.neighbours_of(u) and v in u3] for u in dropped}
        return [u for u in cfg.participants if u in u3], {u: vs for u, vs in need_sk.items() if vs}

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
        x = cfg.x_of(u)
        for sh in (*msg.self_mask_shares.values(), *msg.secret_key_shares.values()):
            if sh.x != x:
                raise MalformedMessage(f"UnmaskResponse from {u} holds a share with x={sh.x}, expected {x}")
        self._responses[u] = msg

    def close_unmask(self) -> U64Vector:
        """End Round 4: U4 = responders; rebuild b_u (u in U3) and s_u^SK (u in U2\\U3); return sum x_u mod 2^64.

        Aborts if |U4| < t or some needed secret has fewer than t shares, or if shares are
        inconsistent (a rebuilt key that does not match its advertised public key).
        """
        cfg = self.config
        u4 = self._close(Phase.UNMASK)
        self._require_threshold(Phase.UNMASK, u4, len(self._survivors[Phase.MASKED_INPUT]))
        self._check_recoverable(Phase.UNMASK, set(u4))
        responses = self._responses
        need_b, need_sk = self._needs()
        terms: list[prg.MaskTerm] = []
        try:
            for u in need_b:
                # Paper, Round 4: reconstruct b_u from t shares and remove PRG(b_u).
                shares = [responses[v].self_mask_shares[u] for v in u4 if v in cfg.holders_of(u)]
                b_u = shamir.reconstruct_secret(shares, cfg.t, secret_len=prg.SEED_BYTES)
                terms.append((_self_mask_seed(cfg, u, b_u), 1))
            for u, partners in need_sk.items():
                # Paper, Round 4: reconstruct s_u^SK of a dropped user, recompute its pairwise masks.
                shares = [responses[v].secret_key_shares[u] for v in u4 if v in cfg.neighbours_of(u)]
                sk = X25519PrivateKey.from_private_bytes(
                    shamir.reconstruct_secret(shares, cfg.t, secret_len=_KEY_BYTES)
                )
                if sk.public_key().public_bytes_raw() != self._keys[u].s_pk:
                    raise shamir.InvalidShare(f"rebuilt key of {u} does not match its advertised key")
                for v in partners:
                    # y_v carries Delta_{v,u} PRG(s_{v,u}); remove exactly that.
                    terms.append((_pairwise_seed(cfg, sk, u, v, self._keys[v].s_pk), cfg.mask_sign(v, u)))
        except (shamir.InvalidShare, InvalidKey) as exc:
            raise self._fail(Phase.UNMASK, f"inconsistent shares: {exc.detail}") from None
        assert self._acc is not None
        total = np.subtract(self._acc, prg.combined_mask(terms, cfg.vector_length))
        self._result = total
        self._acc = None
        self._responses = {}
        self._phase = Phase.DONE
        return total


# --------------------------------------------------------------------------------------------
# In-process driver


def run_local_session(
    config: SecAggConfig,
    inputs: Mapping[str, U64Vector],
    *,
    drop: Mapping[str, Phase] | None = None,
    observe: Callable[[str, bytes], None] | None = None,
) -> U64Vector:
    """Run a whole session in one process, every message through ``encode``/``decode``.

    For tests, benchmarks and single-process demos. ``drop[u] = phase`` makes node u go silent
    from that phase on (ADVERTISE_KEYS: never shows up; UNMASK: sends its masked input but does
    not answer the unmasking request). ``observe(node_id, bytes)`` sees every byte string the
    server receives. Returns the server's result or raises ProtocolAborted.
    """
    drop = dict(drop or {})

    def active(u: str, phase: Phase) -> bool:
        return u not in drop or phase < drop[u]

    def send(server: SecAggServer, u: str, msg: SecAggMessage) -> None:
        raw = msg.encode()
        if observe is not None:
            observe(u, raw)
        server.receive(u, raw)

    server = SecAggServer(config)
    clients = {u: SecAggClient(u, config) for u in config.participants}
    for u, c in clients.items():
        if active(u, Phase.ADVERTISE_KEYS):
            send(server, u, c.advertise_keys())
    server.close_advertise_keys()
    for u in server.survivors(Phase.ADVERTISE_KEYS):
        if active(u, Phase.SHARE_KEYS):
            send(server, u, clients[u].share_keys(KeyRoster.decode(server.roster_for(u).encode())))
    server.close_share_keys()
    for u in server.survivors(Phase.SHARE_KEYS):
        if active(u, Phase.MASKED_INPUT):
            es = EncryptedShares.decode(server.shares_for(u).encode())
            send(server, u, clients[u].masked_input(inputs[u], es))
    request = UnmaskRequest.decode(server.close_masked_input().encode())
    for u in server.survivors(Phase.MASKED_INPUT):
        if active(u, Phase.UNMASK):
            send(server, u, clients[u].unmask(request))
    return server.close_unmask()
