"""Envelopes of encrypted weights and scores: a small JSON header bound to its context, then SEAL bytes.

Format: ``"XCK1" | u32 header length | JSON header | ciphertext``. The header says what the
ciphertext is (``kind`` weights or scores, ``v`` 1), names its context by :func:`context_fingerprint`
and carries the public layout (plan inputs, ``scale_exp``, contribution count, flooding
variance). Headers from outside are checked member by member before any ciphertext is parsed.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from typing import Any

from xdp_compute.crypto.ckks.params import ALLOWED_POLY_MODULUS_DEGREES, DEFAULT_MAX_CIPHERTEXT_BYTES
from xdp_compute.crypto.ckks.plan import ScoringPlan, scoring_plan
from xdp_compute.errors import InvalidCiphertext, PayloadTooLarge

_ENVELOPE_MAGIC = b"XCK1"


def context_fingerprint(public_context: bytes) -> str:
    """The fingerprint envelopes carry to bind ciphertexts to their context."""
    return hashlib.sha256(b"xdp-compute/ckks-context\x00" + public_context).hexdigest()


def pack_envelope(header: dict[str, Any], payload: bytes) -> bytes:
    """Magic, header length, canonical JSON header, then the ciphertext bytes."""
    raw = json.dumps(header, separators=(",", ":"), sort_keys=True).encode()
    return _ENVELOPE_MAGIC + struct.pack(">I", len(raw)) + raw + payload


def unpack_envelope(data: bytes, kind: str, max_bytes: int) -> tuple[dict[str, Any], bytes]:
    """(header, ciphertext) of a ``kind`` envelope from outside; size first, then the framing."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise InvalidCiphertext(f"encrypted {kind} must be bytes")
    if len(data) > max_bytes:
        raise PayloadTooLarge(
            f"encrypted {kind} is {len(data)} bytes; the limit is {max_bytes}", limit=max_bytes
        )
    data = bytes(data)
    if len(data) < 8 or data[:4] != _ENVELOPE_MAGIC:
        raise InvalidCiphertext(f"encrypted {kind} has a bad magic number or is truncated")
    (head_len,) = struct.unpack_from(">I", data, 4)
    if head_len > 4096 or 8 + head_len > len(data):
        raise InvalidCiphertext(f"encrypted {kind} header is truncated or too long")
    try:
        header = json.loads(data[8 : 8 + head_len])
    except (ValueError, UnicodeDecodeError):
        raise InvalidCiphertext(f"encrypted {kind} header is not JSON") from None
    if not isinstance(header, dict) or header.get("kind") != kind or header.get("v") != 1:
        raise InvalidCiphertext(f"not an encrypted {kind} envelope")
    payload = data[8 + head_len :]
    if not payload:
        raise InvalidCiphertext(f"encrypted {kind} is truncated (no ciphertext)")
    return header, payload


def int_member(header: dict[str, Any], name: str, low: int, high: int) -> int:
    """Header member ``name`` as an int in [low, high], else ``InvalidCiphertext``."""
    value = header.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidCiphertext(f"envelope member {name!r} must be an integer in [{low}, {high}]")
    return value


def float_member(header: dict[str, Any], name: str) -> float:
    """Header member ``name`` as a finite non-negative float, else ``InvalidCiphertext``."""
    value = header.get(name)
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value < 0
    ):
        raise InvalidCiphertext(f"envelope member {name!r} must be a finite non-negative number")
    return float(value)


def weights_plan(header: dict[str, Any]) -> ScoringPlan:
    """The :class:`ScoringPlan` a weights header declares (checked against the allowed sizes)."""
    slots = int_member(header, "slots", 1, max(ALLOWED_POLY_MODULUS_DEGREES) // 2)
    if slots * 2 not in ALLOWED_POLY_MODULUS_DEGREES:
        raise InvalidCiphertext("weights envelope declares an unsupported slot count")
    d = int_member(header, "n_features", 1, slots)
    g = int_member(header, "max_groups", 1, slots)
    return scoring_plan(d, g, slots)


def new_scores_header(
    fingerprint: str, groups: int, scale_exp: int, contributions: int, flood_variance: float
) -> dict[str, Any]:
    """The header of a score envelope, built from values the caller has validated."""
    return {
        "v": 1,
        "kind": "scores",
        "context": fingerprint,
        "n_groups": groups,
        "scale_exp": scale_exp,
        "n_contributions": contributions,
        "flood_variance": flood_variance,
    }


def scores_header(data: bytes, *, max_bytes: int = DEFAULT_MAX_CIPHERTEXT_BYTES) -> dict[str, Any]:
    """The metadata of a score envelope (groups, contributions, flooding variance, scaling)."""
    header, _ = unpack_envelope(data, "scores", max_bytes)
    return header


def weights_header(data: bytes, public_context: bytes, *, max_bytes: int = DEFAULT_MAX_CIPHERTEXT_BYTES
                   ) -> dict[str, Any]:
    """Gateway border check of encrypted weights: size, envelope, and that they belong to
    ``public_context`` (the ciphertext itself is parsed only in the node's sandbox)."""
    header, _ = unpack_envelope(data, "weights", max_bytes)
    if header.get("context") != context_fingerprint(public_context):
        raise InvalidCiphertext("encrypted weights were made under another CKKS context")
    weights_plan(header)
    return header
