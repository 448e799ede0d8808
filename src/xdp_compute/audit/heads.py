"""Ed25519 signed tree heads (STHs) for the release log.

A signed tree head commits the log to its size and root at a moment (RFC 9162 §4.10 plays the
same role with TLS encoding; here the signed message is canonical JSON so any JSON tool can
rebuild it)::

    message = canonical_json({"key_id": ..., "root_hash": <hex>, "timestamp_ms": ...,
                              "tree_size": ...})
    signature = Ed25519(private_key, message)          # RFC 8032 §5.1.6, 64 bytes

``key_id`` is the hex SHA-256 of the raw 32-byte public key, so a head names the key that
signed it and a verifier notices a key swap before trying the signature. In JSON a head is
``{"tree_size", "root_hash" (hex), "timestamp_ms", "signature" (standard base64),
"key_id"}``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from xdp_compute.audit.canonical import canonical_json
from xdp_compute.audit.merkle import HASH_SIZE
from xdp_compute.audit.note import NoteSignature, sign_note
from xdp_compute.errors import InvalidKey, ProofError

__all__ = [
    "PUBLIC_KEY_SIZE",
    "SIGNATURE_SIZE",
    "SignedTreeHead",
    "TreeHeadSigner",
    "key_id_for",
    "tree_head_message",
    "verify_tree_head",
]

PUBLIC_KEY_SIZE = 32
"""Raw Ed25519 public (and private seed) key size, RFC 8032 §5.1.5."""

SIGNATURE_SIZE = 64
"""Ed25519 signature size, RFC 8032 §5.1.6."""


def key_id_for(public_key_bytes: bytes) -> str:
    """Key identifier: lowercase hex SHA-256 of the raw 32-byte Ed25519 public key."""
    if not isinstance(public_key_bytes, bytes) or len(public_key_bytes) != PUBLIC_KEY_SIZE:
        raise InvalidKey(f"an Ed25519 public key is {PUBLIC_KEY_SIZE} raw bytes")
    return hashlib.sha256(public_key_bytes).hexdigest()


def _check_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ProofError(f"tree head {name} must be a non-negative integer, got {value!r}")
    return value


def tree_head_message(tree_size: int, root_hash: bytes, timestamp_ms: int, key_id: str) -> bytes:
    """The exact bytes an Ed25519 tree-head signature covers (canonical JSON, see module doc)."""
    return canonical_json(
        {
            "tree_size": tree_size,
            "root_hash": root_hash.hex(),
            "timestamp_ms": timestamp_ms,
            "key_id": key_id,
        }
    )


@dataclass(frozen=True, slots=True)
class SignedTreeHead:
    """A log size and root, with the time and the Ed25519 signature that commit to them."""

    tree_size: int
    root_hash: bytes
    timestamp_ms: int
    signature: bytes
    key_id: str

    def signed_message(self) -> bytes:
        """The bytes :attr:`signature` must be a signature over."""
        return tree_head_message(self.tree_size, self.root_hash, self.timestamp_ms, self.key_id)

    def to_dict(self) -> dict[str, Any]:
        """JSON form: root hash in hex, signature in standard base64."""
        return {
            "tree_size": self.tree_size,
            "root_hash": self.root_hash.hex(),
            "timestamp_ms": self.timestamp_ms,
            "signature": base64.b64encode(self.signature).decode("ascii"),
            "key_id": self.key_id,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SignedTreeHead:
        """Parse the JSON form; raise :class:`ProofError` naming what is malformed.

        Shapes are checked here (sizes of hash and signature, hex key id); whether the
        signature is valid is :func:`verify_tree_head`'s job.
        """
        if not isinstance(data, Mapping):
            raise ProofError("a signed tree head must be a JSON object")
        expected = {"tree_size", "root_hash", "timestamp_ms", "signature", "key_id"}
        missing = expected - data.keys()
        if missing:
            raise ProofError(f"signed tree head lacks {', '.join(sorted(missing))}")
        unknown = set(data.keys()) - expected
        if unknown:
            raise ProofError(f"signed tree head has unknown fields {', '.join(sorted(map(str, unknown)))}")
        tree_size = _check_int(data["tree_size"], "tree_size")
        timestamp_ms = _check_int(data["timestamp_ms"], "timestamp_ms")
        root_hex, sig_b64, key_id = data["root_hash"], data["signature"], data["key_id"]
        if not isinstance(root_hex, str):
            raise ProofError("tree head root_hash must be a hex string")
        try:
            root_hash = bytes.fromhex(root_hex)
        except ValueError:
            raise ProofError("tree head root_hash is not valid hex") from None
        if len(root_hash) != HASH_SIZE:
            raise ProofError(f"tree head root_hash must be {HASH_SIZE} bytes, got {len(root_hash)}")
        if not isinstance(sig_b64, str):
            raise ProofError("tree head signature must be a base64 string")
        try:
            signature = base64.b64decode(sig_b64.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError):
            raise ProofError("tree head signature is not valid base64") from None
        if len(signature) != SIGNATURE_SIZE:
            raise ProofError(f"tree head signature must be {SIGNATURE_SIZE} bytes, got {len(signature)}")
        if not isinstance(key_id, str) or len(key_id) != 2 * HASH_SIZE or key_id.strip("0123456789abcdef"):
            raise ProofError("tree head key_id must be 64 lowercase hex characters")
        return cls(tree_size, root_hash, timestamp_ms, signature, key_id)


class TreeHeadSigner:
    """The log's Ed25519 signing key; signs tree heads.

    The private key is generated from the OS CSPRNG (via OpenSSL) and only leaves as raw
    bytes through :meth:`private_bytes`, for the gateway's key storage.
    """

    __slots__ = ("_key", "_key_id", "_public")

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key
        self._public = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self._key_id = key_id_for(self._public)

    @classmethod
    def generate(cls) -> TreeHeadSigner:
        """A fresh signer with a new random key."""
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_private_bytes(cls, data: bytes) -> TreeHeadSigner:
        """Load a signer from the raw 32-byte Ed25519 private key (RFC 8032 seed)."""
        if not isinstance(data, bytes) or len(data) != PUBLIC_KEY_SIZE:
            raise InvalidKey(f"an Ed25519 private key is {PUBLIC_KEY_SIZE} raw bytes")
        return cls(Ed25519PrivateKey.from_private_bytes(data))

    def private_bytes(self) -> bytes:
        """The raw 32-byte private key. Secret: store it encrypted, never log it."""
        return self._key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )

    def public_key_bytes(self) -> bytes:
        """The raw 32-byte public key auditors pin."""
        return self._public

    @property
    def key_id(self) -> str:
        """Hex SHA-256 of the raw public key."""
        return self._key_id

    def __repr__(self) -> str:  # never show key material
        return f"TreeHeadSigner(key_id={self._key_id[:16]}...)"

    def sign_note(self, name: str, body: bytes) -> NoteSignature:
        """A C2SP signed-note Ed25519 signature on ``body`` (e.g. a checkpoint) under key name ``name``."""
        return sign_note(self._key, name, body)

    def sign(self, tree_size: int, root_hash: bytes, timestamp_ms: int | None = None) -> SignedTreeHead:
        """Sign ``(tree_size, root_hash, timestamp_ms)``; the time defaults to now (ms since epoch)."""
        if isinstance(tree_size, bool) or not isinstance(tree_size, int) or tree_size < 0:
            raise ValueError("tree_size must be a non-negative integer")
        if not isinstance(root_hash, bytes) or len(root_hash) != HASH_SIZE:
            raise ValueError(f"root_hash must be {HASH_SIZE} bytes")
        if timestamp_ms is None:
            timestamp_ms = time.time_ns() // 1_000_000
        if isinstance(timestamp_ms, bool) or not isinstance(timestamp_ms, int) or timestamp_ms < 0:
            raise ValueError("timestamp_ms must be a non-negative integer")
        message = tree_head_message(tree_size, root_hash, timestamp_ms, self._key_id)
        return SignedTreeHead(tree_size, root_hash, timestamp_ms, self._key.sign(message), self._key_id)


def verify_tree_head(sth: SignedTreeHead, public_key_bytes: bytes) -> None:
    """Check ``sth`` was signed by ``public_key_bytes``; raise :class:`ProofError` if not.

    Fails when the head names another key (``key_id`` differs: the log's key was replaced or
    the head is from another log), when fields are malformed, or when the Ed25519 signature
    over :func:`tree_head_message` does not verify (RFC 8032 §5.1.7).
    """
    if not isinstance(public_key_bytes, bytes) or len(public_key_bytes) != PUBLIC_KEY_SIZE:
        raise ProofError(f"the log's public key must be {PUBLIC_KEY_SIZE} raw bytes")
    if not isinstance(sth, SignedTreeHead):
        raise ProofError("expected a SignedTreeHead")
    expected_id = key_id_for(public_key_bytes)
    if sth.key_id != expected_id:
        raise ProofError(
            f"tree head for size {sth.tree_size} is signed by key {sth.key_id[:16]}..., "
            f"not the expected key {expected_id[:16]}..."
        )
    _check_int(sth.tree_size, "tree_size")
    _check_int(sth.timestamp_ms, "timestamp_ms")
    if not isinstance(sth.root_hash, bytes) or len(sth.root_hash) != HASH_SIZE:
        raise ProofError(f"tree head root_hash must be {HASH_SIZE} bytes")
    if not isinstance(sth.signature, bytes) or len(sth.signature) != SIGNATURE_SIZE:
        raise ProofError(f"tree head signature must be {SIGNATURE_SIZE} bytes")
    try:
        public_key = Ed25519PublicKey.from_public_bytes(public_key_bytes)
        public_key.verify(sth.signature, sth.signed_message())
    except (InvalidSignature, ValueError):
        raise ProofError(f"signature on the tree head for size {sth.tree_size} does not verify") from None
