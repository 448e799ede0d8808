"""The OPRF of hidden lookups: RFC 9497 (OPRF mode 0x00) over the private-join group.

Kales, Rechberger, Schneider, Senker, Weinert, "Mobile Private Contact Discovery at Scale"
(USENIX Security 2019), §3: the server holds a PRF key ``k``; the client learns ``F_k(x)`` for
its own ``x`` through a blinded exchange and nothing else, the server learns nothing about ``x``.
The steps are RFC 9497 §3.3.1 (OPRF protocol), numbered at their lines:

1. ``Blind``: ``r`` uniform in Z_L^*, ``B = r·H(x)`` (the client).
2. ``BlindEvaluate``: ``Z = k·B``, after checking ``B`` is a valid element (the server).
3. ``Finalize``: ``N = r^-1·Z = k·H(x)``, output ``Hash(len(x) || x || len(N) || N || "Finalize")``.
4. ``Evaluate``: the server's own evaluation ``k·H(x)`` hashed the same way (the table build).
5. ``GenerateProof`` / ``VerifyProof`` (RFC 9497 §2.2.1, VOPRF mode, one element, so without the
   batching composite): a Chaum-Pedersen proof that ``log_G(pk) == log_B(Z)``, so the client knows
   ``Z`` was made with the key ``pk = k·G`` that the table was published under.

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

__all__ = ["OUTPUT_BYTES", "POINT_BYTES", "PROOF_BYTES", "Blind", "OprfKey", "blind", "finalize", "verify_proof"]

OUTPUT_BYTES = 64  # SHA-512
_DOMAIN = "xdp-lookup/v1"  # hash-to-group domain of lookup keys (separate from every join domain)
PROOF_BYTES = 64  # (c, s), two scalars
_PROOF_DST = b"xdp-lookup/v1/dleq"
_SCALAR = sodium.crypto_core_ed25519_SCALARBYTES
_ONE = (1).to_bytes(_SCALAR, "little")
_GENERATOR = bytes(sodium.crypto_scalarmult_ed25519_base_noclamp(_ONE))


def _random_scalar() -> bytes:
    """Uniform in [1, L): 64 CSPRNG bytes reduced mod L (bias < 2^-250); zero refused (RFC 9497 §4.7)."""
    while True:
        s = bytes(sodium.crypto_core_ed25519_scalar_reduce(os.urandom(64)))
        if int.from_bytes(s, "little") != 0:
            return s


def _challenge(pk: bytes, b: bytes, z: bytes, t2: bytes, t3: bytes) -> bytes:
    # RFC 9497 §2.2.1: c = G.HashToScalar(Bm || a0 || a1 || a2 || a3 || "Challenge"), here with
    # SHA-512 reduced mod L and our own domain tag.
    h = hashlib.sha512(_PROOF_DST + _GENERATOR + pk + b + z + t2 + t3 + b"Challenge").digest()
    return bytes(sodium.crypto_core_ed25519_scalar_reduce(h))


def _mul(scalar: bytes, point: bytes) -> bytes:
    return bytes(sodium.crypto_scalarmult_ed25519_noclamp(scalar, point))


def verify_proof(pk: bytes, blinded: bytes, evaluated: bytes, proof: bytes) -> bool:
    """Step 5, VerifyProof: ``evaluated`` is ``k·blinded`` for the ``k`` of ``pk``; False otherwise.

    ``t2 = s·G + c·pk`` and ``t3 = s·B + c·Z`` must give back the challenge ``c``.
    """
    if len(proof) != PROOF_BYTES:
        return False
    c, s = proof[:_SCALAR], proof[_SCALAR:]
    if not all(int.from_bytes(x, "little") < GROUP_ORDER for x in (c, s)):
        return False  # a non-canonical scalar
    try:
        pk, blinded, evaluated = check_point(pk), check_point(blinded), check_point(evaluated)
        t2 = bytes(sodium.crypto_core_ed25519_add(bytes(sodium.crypto_scalarmult_ed25519_base_noclamp(s)),
                                                  _mul(c, pk)))
        t3 = bytes(sodium.crypto_core_ed25519_add(_mul(s, blinded), _mul(c, evaluated)))
    except (InvalidPoint, SodiumError):
        return False
    return _challenge(pk, blinded, evaluated, t2, t3) == c


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

    def public_key(self) -> bytes:
        """``pk = k·G``: published with the table, so evaluations can be checked against it."""
        return bytes(sodium.crypto_scalarmult_ed25519_base_noclamp(self._k))

    def prove(self, blinded: bytes, evaluated: bytes) -> bytes:
        """Step 5, GenerateProof: ``c || s`` with ``r`` fresh, ``t2 = r·G``, ``t3 = r·B``, ``s = r - c·k``."""
        r = _random_scalar()
        t2 = bytes(sodium.crypto_scalarmult_ed25519_base_noclamp(r))
        t3 = _mul(r, blinded)
        c = _challenge(self.public_key(), blinded, evaluated, t2, t3)
        s = bytes(sodium.crypto_core_ed25519_scalar_sub(r, bytes(sodium.crypto_core_ed25519_scalar_mul(c, self._k))))
        return c + s

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
