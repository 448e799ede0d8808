"""The nine secure-aggregation messages, one dataclass per round and direction.

Each has ``encode() -> bytes`` and ``decode(bytes)`` (framing in
:mod:`~xdp_compute.crypto.secagg.codec`); :func:`decode_message` dispatches on the type byte.
Round numbers are Bonawitz et al. 2017, Fig. 4 (the active-adversary variant): 0 AdvertiseKeys
(signed keys), 1 ShareKeys, 2 MaskedInputCollection, 3 ConsistencyCheck (signed survivor set),
4 Unmasking. Certificates and signatures are empty where nodes run without identities
(plaintext on loopback): the honest-but-curious protocol, with the same rounds.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar, NamedTuple, TypeVar

import numpy as np

from xdp_compute.crypto import shamir
from xdp_compute.crypto.fixedpoint import U64Vector
from xdp_compute.crypto.secagg.codec import MAGIC, Reader, Writer, check_key, unique_map
from xdp_compute.crypto.secagg.config import MAX_VECTOR_LENGTH, MalformedMessage
from xdp_compute.crypto.secagg.identity import MAX_CERTIFICATE_BYTES, MAX_SIGNATURE_BYTES
from xdp_compute.crypto.secagg.keys import KEY_BYTES, SHARE_CIPHERTEXT_BYTES
from xdp_compute.crypto.shamir import Share

_M = TypeVar("_M")


class NodeKeys(NamedTuple):
    """A node's two X25519 public keys (Round 0): c_pk encrypts shares, s_pk seeds masks.

    ``certificate`` (DER) and ``signature`` (over ``identity.keys_statement``) bind the keys to
    the node's certified identity; both empty for a node without one.
    """

    c_pk: bytes
    s_pk: bytes
    certificate: bytes = b""
    signature: bytes = b""


def _write_attestation(w: Writer, certificate: bytes, signature: bytes, name: str) -> None:
    if len(certificate) > MAX_CERTIFICATE_BYTES or len(signature) > MAX_SIGNATURE_BYTES:
        raise MalformedMessage(f"{name}: certificate or signature too long")
    w.blob16(certificate)
    w.blob16(signature)


def _read_attestation(r: Reader) -> tuple[bytes, bytes]:
    return r.blob16(MAX_CERTIFICATE_BYTES, "certificate"), r.blob16(MAX_SIGNATURE_BYTES, "signature")


@dataclass(frozen=True)
class AdvertiseKeys:
    """Round 0, client -> server: the node's public keys, signed with its identity key when it has one."""

    TYPE: ClassVar[int] = 1
    session_id: bytes
    sender: str
    c_pk: bytes
    s_pk: bytes
    certificate: bytes = b""
    signature: bytes = b""

    @property
    def keys(self) -> NodeKeys:
        return NodeKeys(self.c_pk, self.s_pk, self.certificate, self.signature)

    def encode(self) -> bytes:
        w = Writer(self.TYPE, self.session_id)
        w.str16(self.sender)
        w.raw(check_key("AdvertiseKeys", self.c_pk, "c_pk"))
        w.raw(check_key("AdvertiseKeys", self.s_pk, "s_pk"))
        _write_attestation(w, self.certificate, self.signature, "AdvertiseKeys")
        return w.getvalue()

    @classmethod
    def decode(cls, data: bytes) -> AdvertiseKeys:
        r = Reader(data, cls.TYPE, cls.__name__)
        sender = r.node_id("sender")
        c_pk, s_pk = r.take(KEY_BYTES), r.take(KEY_BYTES)
        certificate, signature = _read_attestation(r)
        r.end()
        return cls(r.session_id, sender, c_pk, s_pk, certificate, signature)


@dataclass(frozen=True)
class KeyRoster:
    """Round 0 -> 1, server -> client: public keys of the U1 nodes the recipient deals with, each
    with its certificate and signature as advertised.

    In SecAgg+ mode only the recipient's neighbourhood (and itself) is listed.
    """

    TYPE: ClassVar[int] = 2
    session_id: bytes
    keys: Mapping[str, NodeKeys]

    def encode(self) -> bytes:
        w = Writer(self.TYPE, self.session_id)
        w.u32(len(self.keys))
        for node in sorted(self.keys):
            keys = self.keys[node]
            w.str16(node)
            w.raw(check_key("KeyRoster", keys.c_pk, "c_pk"))
            w.raw(check_key("KeyRoster", keys.s_pk, "s_pk"))
            _write_attestation(w, keys.certificate, keys.signature, "KeyRoster")
        return w.getvalue()

    @classmethod
    def decode(cls, data: bytes) -> KeyRoster:
        r = Reader(data, cls.TYPE, cls.__name__)
        count = r.count(3 + 2 * KEY_BYTES + 4, "roster entry")
        entries = []
        for _ in range(count):
            node = r.node_id()
            c_pk, s_pk = r.take(KEY_BYTES), r.take(KEY_BYTES)
            entries.append((node, NodeKeys(c_pk, s_pk, *_read_attestation(r))))
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


def _write_survivors(w: Writer, survivors: tuple[str, ...]) -> None:
    w.raw(_survivors_bytes(tuple(survivors)))


@functools.lru_cache(maxsize=8)
def _survivors_bytes(survivors: tuple[str, ...]) -> bytes:
    """U3 on the wire, built once per set: the server sends the same U3 to every node in Rounds 3 and 4."""
    w = Writer(0, b"-")
    w.u32(len(survivors))
    for node in survivors:
        w.str16(node)
    return w.body()


#: U3 as a node already read it: its bytes on the wire and the names they decode to.
KnownSurvivors = tuple[bytes, tuple[str, ...]]


def _read_survivors(r: Reader, name: str, known: KnownSurvivors | None = None) -> tuple[str, ...]:
    if known is not None and r.skip_if_next(known[0]):
        return known[1]  # the very bytes decoded before: the same names, without reading n of them again
    count = r.count(3, "survivor")
    nodes = r.node_ids(count, "survivor")
    if len(set(nodes)) != len(nodes):
        raise MalformedMessage(f"{name}: duplicate survivor")
    return tuple(nodes)


@dataclass(frozen=True)
class ConsistencyCheck:
    """Round 2 -> 3, server -> clients: U3, the nodes whose masked inputs are in the sum."""

    TYPE: ClassVar[int] = 8
    session_id: bytes
    survivors: tuple[str, ...]

    def encode(self) -> bytes:
        w = Writer(self.TYPE, self.session_id)
        _write_survivors(w, self.survivors)
        return w.getvalue()

    @classmethod
    def decode(cls, data: bytes) -> ConsistencyCheck:
        return cls.decode_keeping_survivors(data)[0]

    @classmethod
    def decode_keeping_survivors(cls, data: bytes) -> tuple[ConsistencyCheck, KnownSurvivors]:
        """Decode, and return U3's wire bytes with its names: a node that signs this U3 passes
        them to :meth:`UnmaskRequest.decode`, which then recognises the same set by a byte
        comparison instead of reading n names again."""
        r = Reader(data, cls.TYPE, cls.__name__)
        start = r.position
        nodes = _read_survivors(r, cls.__name__)
        section = bytes(data[start : r.position])
        r.end()
        return cls(r.session_id, nodes), (section, nodes)


@dataclass(frozen=True)
class ConsistencySignature:
    """Round 3, client -> server: sigma'_u, the node's signature over U3 (``identity.survivors_statement``)."""

    TYPE: ClassVar[int] = 9
    session_id: bytes
    sender: str
    signature: bytes

    def encode(self) -> bytes:
        if len(self.signature) > MAX_SIGNATURE_BYTES:
            raise MalformedMessage("ConsistencySignature: signature too long")
        w = Writer(self.TYPE, self.session_id)
        w.str16(self.sender)
        w.blob16(self.signature)
        return w.getvalue()

    @classmethod
    def decode(cls, data: bytes) -> ConsistencySignature:
        r = Reader(data, cls.TYPE, cls.__name__)
        sender = r.node_id("sender")
        signature = r.blob16(MAX_SIGNATURE_BYTES, "signature")
        r.end()
        return cls(r.session_id, sender, signature)


@dataclass(frozen=True)
class UnmaskRequest:
    """Round 3 -> 4, server -> clients: U3 again, and the signatures over it of U4 (the nodes that
    answered the consistency check), which every client verifies before it reveals a share."""

    TYPE: ClassVar[int] = 6
    session_id: bytes
    survivors: tuple[str, ...]
    signatures: Mapping[str, bytes] = field(default_factory=dict)

    def encode(self) -> bytes:
        w = Writer(self.TYPE, self.session_id)
        _write_survivors(w, self.survivors)
        w.u32(len(self.signatures))
        for node in sorted(self.signatures):
            sig = self.signatures[node]
            if len(sig) > MAX_SIGNATURE_BYTES:
                raise MalformedMessage("UnmaskRequest: signature too long")
            w.str16(node)
            w.blob16(sig)
        return w.getvalue()

    @classmethod
    def decode(cls, data: bytes, *, known_survivors: KnownSurvivors | None = None) -> UnmaskRequest:
        """``known_survivors``: U3 as this node read it in Round 3
        (:meth:`ConsistencyCheck.decode_keeping_survivors`); when the request carries exactly
        those bytes, their names are reused (any other set is decoded and checked as usual)."""
        r = Reader(data, cls.TYPE, cls.__name__)
        nodes = _read_survivors(r, cls.__name__, known_survivors)
        count = r.count(5, "signature")
        pairs = [(r.node_id(), r.blob16(MAX_SIGNATURE_BYTES, "signature")) for _ in range(count)]
        r.end()
        return cls(r.session_id, nodes, unique_map(pairs, cls.__name__, "signer"))


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

    Keys are the owners of the shared secrets; every share carries the sender's x-coordinate
    for that owner (``SecAggConfig.share_x``).
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
    AdvertiseKeys
    | KeyRoster
    | ShareKeys
    | EncryptedShares
    | MaskedInput
    | ConsistencyCheck
    | ConsistencySignature
    | UnmaskRequest
    | UnmaskResponse
)

_BY_TYPE: dict[int, type[SecAggMessage]] = {
    c.TYPE: c
    for c in (
        AdvertiseKeys,
        KeyRoster,
        ShareKeys,
        EncryptedShares,
        MaskedInput,
        ConsistencyCheck,
        ConsistencySignature,
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
