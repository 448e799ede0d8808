"""The OPRF of hidden lookups: RFC 9497 (OPRF mode 0x00) over the private-join group.

Kales, Rechberger, Schneider, Senker, Weinert, "Mobile Private Contact Discovery at Scale"
(USENIX Security 2019), §3: the server holds a PRF key ``k``; the client learns ``F_k(x)`` for
its own ``x`` through a blinded exchange and nothing else, the server learns nothing about ``x``.
The steps are RFC 9497 §3.3.1 (OPRF protocol), numbered at their lines:

1. ``Blind``: ``r`` uniform in Z_L^*, ``B = r·H(x)`` (the client).
2. ``BlindEvaluate``: ``Z = k·B``, after checking ``B`` is a valid element (the server).
3. ``Finalize``: ``N = r^-1·Z = k·H(x)``, output ``Hash(len(x) || x || len(N) || N || "Finalize")``.
4. ``Evaluate``: the server's own evaluation ``k·H(x)`` hashed the same way (the table build).

The group is the prime-order subgroup of edwards25519 through libsodium (``crypto.psi.group``:
hash-to-group by RFC 9380 §3 with Elligator 2, points checked before use); the hash is SHA-512.
Not byte-compatible with RFC 9497's ristretto255 suite (we never interoperate), same steps.
"""

from __future__ import annotations

import hashlib
import os
import struct

from nacl import bindings as sodium
from nacl.exceptions import RuntimeError as SodiumError

from xdp_compute.crypto.psi.group import GROUP_ORDER, POINT_BYTES, InvalidPoint, check_point, hash_to_group

__all__ = ["OUTPUT_BYTES", "POINT_BYTES", "Blind", "OprfKey", "blind", "finalize"]

OUTPUT_BYTES = 64  # SHA-512
_DOMAIN = "xdp-lookup/v1"  # hash-to-group domain of lookup keys (separate from every join domain)


def _random_scalar() -> bytes:
    """Uniform in [1, L): 64 CSPRNG bytes reduced mod L (bias < 2^-250); zero refused (RFC 9497 §4.7)."""
    while True:
        s = bytes(sodium.crypto_core_ed25519_scalar_reduce(os.urandom(64)))
        if int.from_bytes(s, "little") != 0:
            return s


def _finalize_hash(key: bytes, element: bytes) -> bytes:
    # RFC 9497 §3.3.1 Finalize: I2OSP(len(input), 2) || input || I2OSP(len(N), 2) || N || "Finalize"
    if len(key) > 0xFFFF:
        raise ValueError("a lookup key is at most 65535 bytes")
    return hashlib.sha512(struct.pack(">H", len(key)) + key + struct.pack(">H", len(element)) + element
                          + b"Finalize").digest()


class OprfKey:
    """The holder's PRF key ``k`` of one lookup table version; never serialised, never logged."""

    __slots__ = ("_k",)

    def __init__(self, scalar: bytes | None = None) -> None:
        s = _random_scalar() if scalar is None else bytes(scalar)
        if len(s) != sodium.crypto_core_ed25519_SCALARBYTES or not 0 < int.from_bytes(s, "little") < GROUP_ORDER:
            raise ValueError("an OPRF key is 32 bytes, in [1, L)")
        self._k = s

    def __repr__(self) -> str:  # never show the secret
        return "OprfKey(<secret>)"

    def blind_evaluate(self, blinded: bytes) -> bytes:
        """Step 2, ``Z = k·B``: ``B`` must be a valid element of the prime-order subgroup.

        An analyst's low-order or non-canonical point would otherwise make ``Z`` leak ``k`` modulo
        the cofactor; ``InvalidPoint`` (a 400) refuses it before any arithmetic.
        """
        try:
            return bytes(sodium.crypto_scalarmult_ed25519_noclamp(self._k, check_point(blinded)))
        except SodiumError:  # identity result: impossible for k != 0 and B of order L
            raise InvalidPoint("evaluation gave the identity") from None

    def evaluate(self, key: bytes) -> bytes:
        """Step 4, the server's own ``F_k(key)``: ``Hash(key, k·H(key))`` (``OUTPUT_BYTES``)."""
        point = hash_to_group(_DOMAIN, key)
        return _finalize_hash(key, bytes(sodium.crypto_scalarmult_ed25519_noclamp(self._k, point)))


class Blind:
    """The client's state between ``blind`` and ``finalize``: the key and its blinding scalar ``r``."""

    __slots__ = ("_key", "_r", "blinded")

    def __init__(self, key: bytes, r: bytes, blinded: bytes) -> None:
        self._key, self._r, self.blinded = key, r, blinded

    def __repr__(self) -> str:
        return "Blind(<secret>)"


def blind(key: bytes) -> Blind:
    """Step 1, ``B = r·H(key)`` with a fresh ``r``: ``B`` is uniform in the group whatever the key."""
    r = _random_scalar()
    point = hash_to_group(_DOMAIN, key)
    return Blind(key, r, bytes(sodium.crypto_scalarmult_ed25519_noclamp(r, point)))


def finalize(state: Blind, evaluated: bytes) -> bytes:
    """Step 3, ``Hash(key, r^-1·Z)``: equals the holder's ``evaluate(key)`` when it used its ``k``.

    ``evaluated`` comes from the holder: checked as a group element first (``InvalidPoint``).
    """
    r_inv = bytes(sodium.crypto_core_ed25519_scalar_invert(state._r))
    try:
        n = bytes(sodium.crypto_scalarmult_ed25519_noclamp(r_inv, check_point(evaluated)))
    except SodiumError:
        raise InvalidPoint("unblinding gave the identity") from None
    return _finalize_hash(state._key, n)
