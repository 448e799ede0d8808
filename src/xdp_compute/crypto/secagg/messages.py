"""The seven secure-aggregation messages, one dataclass per round and direction.

Each has ``encode() -> bytes`` and ``decode(bytes)`` (framing in
:mod:`~xdp_compute.crypto.secagg.codec`); :func:`decode_message` dispatches on the type byte.
Round numbers are Bonawitz et al. 2017, Fig. 4: 0 AdvertiseKeys, 1 ShareKeys,
2 MaskedInputCollection, 4 Unmasking (Round 3, ConsistencyCheck, is not run).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar, NamedTuple, TypeVar

import numpy as np

from xdp_compute.crypto import shamir
from xdp_compute.crypto.fixedpoint import U64Vector
from xdp_compute.crypto.secagg.codec import MAGIC, Reader, Writer, check_key, unique_map
from xdp_compute.crypto.secagg.config import MAX_VECTOR_LENGTH, MalformedMessage
from xdp_compute.crypto.secagg.keys import KEY_BYTES, SHARE_CIPHERTEXT_BYTES
from xdp_compute.crypto.shamir import Share

_M = TypeVar("_M")


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
        w = Writer(self.TYPE, self.session_id)
        w.str16(self.sender)
        w.raw(check_key("AdvertiseKeys", self.c_pk, "c_pk"))
        w.raw(check_key("AdvertiseKeys", self.s_pk, "s_pk"))
        return w.getvalue()

    @classmethod
    def decode(cls, data: bytes) -> AdvertiseKeys:
        r = Reader(data, cls.TYPE, cls.__name__)
        sender = r.node_id("sender")
        c_pk, s_pk = r.take(KEY_BYTES), r.take(KEY_BYTES)
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
        w = Writer(self.TYPE, self.session_id)
        w.u32(len(self.keys))
        for node in sorted(self.keys):
            c_pk, s_pk = self.keys[node]
            w.str16(node)
            w.raw(check_key("KeyRoster", c_pk, "c_pk"))
            w.raw(check_key("KeyRoster", s_pk, "s_pk"))
        return w.getvalue()

    @classmethod
    def decode(cls, data: bytes) -> KeyRoster:
        r = Reader(data, cls.TYPE, cls.__name__)
        count = r.count(3 + 2 * KEY_BYTES, "roster entry")
        entries = []
        for _ in range(count):
            node = r.node_id()
            entries.append((node, NodeKeys(r.take(KEY_BYTES), r.take(KEY_BYTES))))
        r.end()
        return cls(r.session_id, unique_map(entries, cls.__name__, "node"))


def _encode_ciphertext_map(w: Writer, cts: Mapping[str, bytes], name: str) -> None:
    w.u32(len(cts))
    for node in sorted(cts):
        ct = cts[node]
        if not isinstance(ct, (bytes, bytearray)) or len(ct) != SHARE_CIPHERTEXT_BYTES:
            raise MalformedMessage(f"{name}: share ciphertext must be {SHARE_CIPHERTEXT_BYTES} bytes")
        w.str16(node)
        w.raw(bytes(ct))


def _decode_ciphertext_map(r: Reader, name: str) -> dict[str, bytes]:
    count = r.count(3 + SHARE_CIPHERTEXT_BYTES, "ciphertext")
    pairs = [(r.node_id(), r.take(SHARE_CIPHERTEXT_BYTES)) for _ in range(count)]
    return unique_map(pairs, name, "node")


@dataclass(frozen=True)
class ShareKeys:
    """Round 1, client -> server: encrypted shares of s_sk and b_u, one ciphertext per recipient."""

    TYPE: ClassVar[int] = 3
    session_id: bytes
    sender: str
    ciphertexts: Mapping[str, bytes]

    def encode(self) -> bytes:
        w = Writer(self.TYPE, self.session_id)
        w.str16(self.sender)
        _encode_ciphertext_map(w, self.ciphertexts, "ShareKeys")
        return w.getvalue()

    @classmethod
    def decode(cls, data: bytes) -> ShareKeys:
        r = Reader(data, cls.TYPE, cls.__name__)
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
        w = Writer(self.TYPE, self.session_id)
        w.str16(self.recipient)
        _encode_ciphertext_map(w, self.ciphertexts, "EncryptedShares")
        return w.getvalue()

    @classmethod
    def decode(cls, data: bytes) -> EncryptedShares:
        r = Reader(data, cls.TYPE, cls.__name__)
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
        w = Writer(self.TYPE, self.session_id)
        w.str16(self.sender)
        w.vector(v)
        return w.getvalue()

    @classmethod
    def decode(cls, data: bytes) -> MaskedInput:
        r = Reader(data, cls.TYPE, cls.__name__)
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
        w = Writer(self.TYPE, self.session_id)
        w.u32(len(self.survivors))
        for node in self.survivors:
            w.str16(node)
        return w.getvalue()

    @classmethod
    def decode(cls, data: bytes) -> UnmaskRequest:
        r = Reader(data, cls.TYPE, cls.__name__)
        count = r.count(3, "survivor")
        nodes = [r.node_id() for _ in range(count)]
        r.end()
        if len(set(nodes)) != len(nodes):
            raise MalformedMessage("UnmaskRequest: duplicate survivor")
        return cls(r.session_id, tuple(nodes))


def _encode_share_map(w: Writer, shares: Mapping[str, Share]) -> None:
    w.u32(len(shares))
    for node in sorted(shares):
        w.str16(node)
        w.raw(shares[node].encode())


def _decode_share_map(r: Reader, name: str) -> dict[str, Share]:
    count = r.count(3 + shamir.SHARE_BYTES, "share")
    pairs = []
    for _ in range(count):
        node = r.node_id()
        try:
            pairs.append((node, Share.decode(r.take(shamir.SHARE_BYTES))))
        except shamir.InvalidShare as exc:
            raise MalformedMessage(f"{name}: {exc.detail}") from None
    return unique_map(pairs, name, "share owner")


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
        w = Writer(self.TYPE, self.session_id)
        w.str16(self.sender)
        _encode_share_map(w, self.self_mask_shares)
        _encode_share_map(w, self.secret_key_shares)
        return w.getvalue()

    @classmethod
    def decode(cls, data: bytes) -> UnmaskResponse:
        r = Reader(data, cls.TYPE, cls.__name__)
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
    if not isinstance(data, (bytes, bytearray, memoryview)) or len(data) < 5 or bytes(data[:3]) != MAGIC:
        raise MalformedMessage("not a secure-aggregation message")
    cls = _BY_TYPE.get(data[4])
    if cls is None:
        raise MalformedMessage(f"unknown secure-aggregation message type {data[4]}")
    return cls.decode(bytes(data))


def coerce(message: object, cls: type[_M], name: str) -> _M:
    """``message`` as a ``cls`` instance, decoding it first when it arrives as bytes."""
    if isinstance(message, (bytes, bytearray, memoryview)):
        return cls.decode(bytes(message))  # type: ignore[attr-defined,no-any-return]
    if not isinstance(message, cls):
        raise MalformedMessage(f"expected {name}, got {type(message).__name__}")
    return message
