"""The prime-order group of private joins: hash-to-group, secret scalars, blinding and tags.

ECDH double blinding (Meadows 1986; Huberman, Franklin, Hogg 1999; Ion et al. 2020, "On
Deploying Secure Computing: Private Intersection-Sum-with-Cardinality", §3 "DDH-based
protocol"): holder A sends ``a·H(x)``, holder B sends ``b·H(y)``; each raises the other's points
to its own scalar, and ``a·b·H(x) == b·a·H(y)`` exactly when ``x == y``. Without both scalars
nobody can evaluate the tag of a guess (DDH in the random-oracle model). The protocol around
these primitives is docs/private-joins.md.

Group: the prime-order subgroup (order ``L``) of edwards25519, through libsodium (PyNaCl).
ristretto255 is not exposed by PyNaCl, so every point that arrives from another party is checked
to be canonical, on the curve, in the main subgroup and not of small order
(``crypto_core_ed25519_is_valid_point``) before it is blinded: blinding an attacker's low-order
point would leak the scalar modulo the cofactor.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Iterable, Sequence

from nacl import bindings as sodium
from nacl.exceptions import RuntimeError as SodiumError

from xdp_compute.errors import BadRequest

__all__ = [
    "GROUP_ORDER",
    "POINT_BYTES",
    "TAG_BYTES",
    "BlindingScalar",
    "InvalidPoint",
    "blind",
    "check_point",
    "hash_to_group",
    "random_point",
    "tag",
    "tags",
]

GROUP_ORDER = 2**252 + 27742317777372353535851937790883648493
"""L, the order of edwards25519's main subgroup (RFC 8032 §5.1)."""

POINT_BYTES = sodium.crypto_core_ed25519_BYTES  # 32: the compressed Edwards encoding
TAG_BYTES = 16
"""Tags are truncated: among 2·10^6 rows a collision has probability < 2^-86."""

_H2G_DST = b"xdp-psi/v1/h2g"  # domain separation of hash-to-group from every other SHA-512 use
_TAG_DST = b"xdp-psi/v1/tag"
_UNIFORM_BYTES = 32  # what crypto_core_ed25519_from_uniform takes (top bit: sign of x)
_MAX_DOMAIN_BYTES = 255


class InvalidPoint(BadRequest):
    """A group element from another party that is not a valid point of the prime-order subgroup."""

    slug, title = "invalid-point", "Invalid group element"


def hash_to_group(domain: str, key: bytes) -> bytes:
    """Map ``key`` of join domain ``domain`` to a point of the prime-order subgroup.

    Random-oracle construction of RFC 9380 §3 (``hash_to_curve``: two independent
    ``map_to_curve`` outputs added), with libsodium's Elligator 2 map as ``map_to_curve``; one
    map alone is not indistinguishable from a random oracle. Not byte-compatible with RFC 9380's
    edwards25519 suite (we never interoperate). ``key`` must already be normalised
    (``normalise_key``); keys of different domains map to unrelated points.
    """
    d = domain.encode("utf-8")
    if not d or len(d) > _MAX_DOMAIN_BYTES:
        raise ValueError("a join domain is 1 to 255 bytes")
    # Length-prefix the domain so ("ab", b"c") and ("a", b"bc") hash differently.
    uniform = hashlib.sha512(_H2G_DST + struct.pack(">B", len(d)) + d + key).digest()
    u0 = sodium.crypto_core_ed25519_from_uniform(uniform[:_UNIFORM_BYTES])  # map_to_curve(u0), cleared
    u1 = sodium.crypto_core_ed25519_from_uniform(uniform[_UNIFORM_BYTES:])  # map_to_curve(u1), cleared
    return bytes(sodium.crypto_core_ed25519_add(u0, u1))  # RFC 9380 §3: Q0 + Q1


def random_point() -> bytes:
    """A uniform point no key maps to (a size dummy, docs/private-joins.md "Dummies")."""
    return bytes(sodium.crypto_core_ed25519_from_uniform(os.urandom(_UNIFORM_BYTES)))


def check_point(point: bytes) -> bytes:
    """Return ``point`` if it is a valid element of the prime-order subgroup; else ``InvalidPoint``.

    libsodium's check: canonical encoding, on the curve, in the main subgroup, not of small order
    (the identity included).
    """
    if not isinstance(point, bytes | bytearray) or len(point) != POINT_BYTES:
        raise InvalidPoint(f"a group element is {POINT_BYTES} bytes")
    if not sodium.crypto_core_ed25519_is_valid_point(bytes(point)):
        raise InvalidPoint(
            "not a point of the prime-order subgroup (non-canonical, off the curve, "
            "of small order, or the identity)"
        )
    return bytes(point)


class BlindingScalar:
    """One holder's secret exponent for one join job; never serialised, dropped with the job.

    Ion et al. 2020 §3, Setup: each party samples its exponent uniformly in Z_L^*. Here: 64 bytes
    from the OS CSPRNG reduced mod L (bias < 2^-250), zero refused.
    """

    __slots__ = ("_s",)

    def __init__(self, scalar: bytes | None = None) -> None:
        if scalar is None:
            scalar = bytes(sodium.crypto_core_ed25519_scalar_reduce(os.urandom(64)))
        if (
            len(scalar) != sodium.crypto_core_ed25519_SCALARBYTES
            or not 0 < int.from_bytes(scalar, "little") < GROUP_ORDER
        ):
            raise ValueError("a blinding scalar is 32 bytes, in [1, L)")
        self._s = bytes(scalar)

    def __repr__(self) -> str:  # never show the secret
        return "BlindingScalar(<secret>)"

    def blind_one(self, point: bytes) -> bytes:
        """``s·P`` for a checked point (no clamping, so blinding commutes)."""
        try:
            return bytes(sodium.crypto_scalarmult_ed25519_noclamp(self._s, check_point(point)))
        except SodiumError:  # the result was the identity: impossible for s != 0 and P of order L
            raise InvalidPoint("blinding gave the identity") from None


def blind(points: Iterable[bytes], scalar: BlindingScalar) -> list[bytes]:
    """``[s·P for P in points]``, in the same order, every point checked first.

    Ion et al. 2020 §3, Round 1 (``a·H(x)``) and Round 2 (``b·(a·H(x))``): the same operation;
    since ``a·(b·P) == b·(a·P)`` the double-blinded points of equal keys are equal.
    """
    return [scalar.blind_one(p) for p in points]


def tag(point: bytes) -> bytes:
    """The gateway's matching tag of a double-blinded point: SHA-256(dst || point)[:16]."""
    return hashlib.sha256(_TAG_DST + check_point(point)).digest()[:TAG_BYTES]


def tags(points: Sequence[bytes]) -> list[bytes]:
    """``tag`` of each point, in order."""
    return [tag(p) for p in points]
