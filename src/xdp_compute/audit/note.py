"""C2SP signed notes, tlog checkpoints and cosignatures for the release log.

Standard text formats, so other tooling (e.g. ``golang.org/x/mod/sumdb/note``, the
transparency-dev witness) can read what the gateway and the nodes sign:

- **checkpoint** (c2sp.org/tlog-checkpoint): the note body ``<origin>\\n<tree size>\\n<base64
  root hash>\\n`` — the RFC 9162 tree size and root.
- **signed note** (c2sp.org/signed-note): body, an empty line, then signature lines
  ``— <key name> base64(key ID || signature)\\n``. The log signs with Ed25519 (signature type
  0x01): key ID = SHA-256(name || 0x0A || 0x01 || public key)[:4], signature over the body.
- **cosignature** (c2sp.org/tlog-cosignature, cosignature/v1): a witness's note signature with
  key ID = SHA-256(name || 0x0A || 0x04 || public key)[:4] and value ``u64 timestamp (big
  endian) || Ed25519 signature`` over ``"cosignature/v1\\ntime <timestamp>\\n" || body``.
- **vkey** (signed-note "verifier keys"): ``<name>+<hex key ID>+<base64(type || public key)>``,
  the one-line form an auditor pins.

Written from the specifications; no code copied.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from xdp_compute.audit.merkle import HASH_SIZE
from xdp_compute.errors import ProofError

__all__ = [
    "ALG_COSIGNATURE_V1",
    "ALG_ED25519",
    "Checkpoint",
    "Cosignature",
    "NoteSignature",
    "cosign",
    "format_note",
    "log_origin",
    "note_key_id",
    "parse_note",
    "parse_vkey",
    "sign_note",
    "verify_cosignature",
    "verify_note_signature",
    "vkey",
]

ALG_ED25519 = 0x01
"""signed-note signature type of a plain Ed25519 note signature (the log's own)."""

ALG_COSIGNATURE_V1 = 0x04
"""tlog-cosignature signature type of an Ed25519 cosignature/v1 (a witness's)."""

_DASH = "\u2014"  # the EM DASH that starts every signature line (signed-note)
_MAX_NOTE = 1 << 20
_MAX_TIMESTAMP = (1 << 63) - 1  # tlog-cosignature: "MUST NOT exceed 2^63 - 1"


def _valid_name(name: str) -> bool:
    # signed-note: a key name is non-empty, well-formed UTF-8, without Unicode spaces or "+".
    return bool(name) and "+" not in name and not any(ch.isspace() for ch in name) and name.isprintable()


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not _valid_name(name):
        raise ProofError(f"key name {name!r} is not a valid signed-note key name (no spaces or '+')")
    return name


def note_key_id(name: str, alg: int, public_key: bytes) -> bytes:
    """signed-note key ID: the first 4 bytes of SHA-256(name || "\\n" || type || public key)."""
    return hashlib.sha256(_check_name(name).encode() + b"\n" + bytes([alg]) + public_key).digest()[:4]


def log_origin(log_key_id: str) -> str:
    """The release log's checkpoint origin: names the log by (a prefix of) its key's SHA-256.

    A new signing key is a new log for witnesses: they pinned the old key and refuse the new.
    """
    return f"xdp-compute/release-log/{log_key_id[:16]}"


def vkey(name: str, alg: int, public_key: bytes) -> str:
    """The one-line verifier key ``name+keyid+base64(type||key)`` (signed-note "verifier keys")."""
    return f"{_check_name(name)}+{note_key_id(name, alg, public_key).hex()}+" + \
        base64.b64encode(bytes([alg]) + public_key).decode()


def parse_vkey(text: str) -> tuple[str, int, bytes]:
    """``(name, type, raw public key)`` of a vkey line; :class:`ProofError` if malformed or its ID lies."""
    parts = text.strip().split("+", 2)  # the base64 key may itself contain "+"
    if len(parts) != 3:
        raise ProofError(f"not a verifier key (name+keyid+key): {text.strip()[:60]!r}")
    name, hex_id, b64 = parts
    try:
        raw = base64.b64decode(b64, validate=True)
        key_id = bytes.fromhex(hex_id)
    except (binascii.Error, ValueError):
        raise ProofError(f"verifier key {name!r} is not valid hex/base64") from None
    if len(raw) != 33 or len(key_id) != 4:
        raise ProofError(f"verifier key {name!r} is not a 32-byte Ed25519 key with a 4-byte ID")
    alg, key = raw[0], raw[1:]
    if note_key_id(name, alg, key) != key_id:
        raise ProofError(f"verifier key {name!r}: key ID does not match the key")
    return name, alg, key


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """c2sp.org/tlog-checkpoint: origin, RFC 9162 tree size and root hash."""

    origin: str
    tree_size: int
    root_hash: bytes

    def body(self) -> bytes:
        """The note body: three newline-terminated lines (no extension lines)."""
        return (f"{self.origin}\n{self.tree_size}\n".encode() + base64.b64encode(self.root_hash) + b"\n")

    @classmethod
    def from_body(cls, body: bytes) -> Checkpoint:
        """Parse a checkpoint note body; extension lines are refused (this log writes none)."""
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise ProofError("checkpoint is not UTF-8") from None
        if not text.endswith("\n"):
            raise ProofError("checkpoint body must end with a newline")
        lines = text[:-1].split("\n")
        if len(lines) != 3:
            raise ProofError(f"checkpoint has {len(lines)} lines; expected origin, size and root hash")
        origin, size_text, root_text = lines
        if not origin:
            raise ProofError("checkpoint origin is empty")
        # tlog-checkpoint: the size is ASCII decimal without leading zeroes.
        if not size_text.isascii() or not size_text.isdigit() or (size_text != "0" and size_text[0] == "0"):
            raise ProofError(f"checkpoint tree size {size_text!r} is not a decimal without leading zeroes")
        try:
            root = base64.b64decode(root_text, validate=True)
        except binascii.Error:
            raise ProofError("checkpoint root hash is not base64") from None
        if len(root) != HASH_SIZE:
            raise ProofError(f"checkpoint root hash must be {HASH_SIZE} bytes")
        return cls(origin, int(size_text), root)


@dataclass(frozen=True, slots=True)
class NoteSignature:
    """One signature line of a signed note: key name, 4-byte key ID, signature bytes."""

    name: str
    key_id: bytes
    signature: bytes

    def line(self) -> str:
        return f"{_DASH} {self.name} " + base64.b64encode(self.key_id + self.signature).decode() + "\n"


def format_note(body: bytes, signatures: list[NoteSignature]) -> str:
    """The signed note text: body, an empty line, the signature lines."""
    return body.decode() + "\n" + "".join(s.line() for s in signatures)


def parse_signature_line(line: str) -> NoteSignature:
    """Parse ``— <name> <base64(key ID || signature)>`` (without or with its newline)."""
    line = line.rstrip("\n")
    parts = line.split(" ")
    if len(parts) != 3 or parts[0] != _DASH:
        raise ProofError(f"not a note signature line: {line[:60]!r}")
    try:
        raw = base64.b64decode(parts[2], validate=True)
    except binascii.Error:
        raise ProofError("note signature is not base64") from None
    if len(raw) < 5:
        raise ProofError("note signature is too short")
    return NoteSignature(_check_name(parts[1]), raw[:4], raw[4:])


def parse_note(text: str) -> tuple[bytes, list[NoteSignature]]:
    """Split a signed note into its body and signature lines (signed-note format)."""
    if not isinstance(text, str) or len(text) > _MAX_NOTE:
        raise ProofError("a signed note must be text of at most 1 MiB")
    body, sep, sigs = text.rpartition("\n\n")
    if not sep or not sigs.endswith("\n"):
        raise ProofError("signed note has no signature block after an empty line")
    return (body + "\n").encode(), [parse_signature_line(x) for x in sigs[:-1].split("\n")]


def _raw_public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def sign_note(key: Ed25519PrivateKey, name: str, body: bytes) -> NoteSignature:
    """The log's Ed25519 note signature over ``body`` (signed-note, type 0x01)."""
    return NoteSignature(name, note_key_id(name, ALG_ED25519, _raw_public(key)), key.sign(body))


def _verify_ed25519(public_key: bytes, signature: bytes, message: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


def verify_note_signature(body: bytes, signatures: list[NoteSignature], name: str, public_key: bytes) -> None:
    """Require a valid Ed25519 note signature by ``(name, public_key)``; ignore any other line."""
    key_id = note_key_id(name, ALG_ED25519, public_key)
    for sig in signatures:
        if sig.name == name and sig.key_id == key_id and len(sig.signature) == 64 \
                and _verify_ed25519(public_key, sig.signature, body):
            return
    raise ProofError(f"no valid signature by {name} on the checkpoint")


def _cosigned_message(body: bytes, timestamp: int) -> bytes:
    # tlog-cosignature "Ed25519 signed message": header line, time line, then the whole body.
    return b"cosignature/v1\ntime " + str(timestamp).encode() + b"\n" + body


@dataclass(frozen=True, slots=True)
class Cosignature:
    """A verified witness cosignature: who, and when (POSIX seconds) it vouched for the checkpoint."""

    name: str
    timestamp: int


def cosign(key: Ed25519PrivateKey, name: str, body: bytes, timestamp: int) -> NoteSignature:
    """A witness's cosignature/v1 on checkpoint ``body`` at ``timestamp`` (POSIX seconds)."""
    if isinstance(timestamp, bool) or not isinstance(timestamp, int) or not 0 <= timestamp <= _MAX_TIMESTAMP:
        raise ValueError("cosignature timestamp must be an integer in 0..2^63-1")
    sig = key.sign(_cosigned_message(body, timestamp))
    return NoteSignature(name, note_key_id(name, ALG_COSIGNATURE_V1, _raw_public(key)),
                         struct.pack(">Q", timestamp) + sig)


def verify_cosignature(body: bytes, sig: NoteSignature, name: str, public_key: bytes) -> Cosignature:
    """Check one cosignature/v1 line by the witness ``(name, public_key)``; return its time."""
    if sig.name != name or sig.key_id != note_key_id(name, ALG_COSIGNATURE_V1, public_key):
        raise ProofError(f"cosignature is not by witness {name} (name or key ID differs)")
    if len(sig.signature) != 8 + 64:
        raise ProofError(f"cosignature by {name} is not timestamp || Ed25519 signature (72 bytes)")
    (timestamp,) = struct.unpack(">Q", sig.signature[:8])
    if timestamp > _MAX_TIMESTAMP:
        raise ProofError(f"cosignature by {name} has a timestamp beyond 2^63-1")
    if not _verify_ed25519(public_key, sig.signature[8:], _cosigned_message(body, timestamp)):
        raise ProofError(f"cosignature by {name} does not verify")
    return Cosignature(name, timestamp)
