"""Fixed-point encoding of reals into the ring Z_2^64 used by secure aggregation: the one codec.

Secure aggregation (Bonawitz et al. 2017, §3 "inputs are vectors in Z_R^m") sums vectors modulo
R = 2^64. Reals are scaled by ``2**frac_bits``, rounded to the nearest integer and stored as
two's-complement ``uint64``; numpy's uint64 arithmetic wraps modulo 2^64, so adding encoded
vectors adds the reals. A sum decodes correctly as long as the true (signed) total stays inside
``[-2^63, 2^63)``: check that up front with :func:`headroom_check`, because after masking an
overflow is silent and wraps to garbage.

Two forms of the same encoding: :func:`encode` / :func:`decode` for numpy vectors (training
updates), and the exact scalar :func:`encode_fixed` with :func:`to_ring` / :func:`from_ring`
for the query plan's per-cell totals, where the caller bounds the integer itself (the plan's
headroom rule). Both round half to even on the exact product v * 2^frac_bits, so they agree
wherever both are defined.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from fractions import Fraction

import numpy as np
import numpy.typing as npt

from xdp_compute.errors import InvalidSpec

__all__ = [
    "DEFAULT_FRAC_BITS",
    "FixedPointOverflow",
    "U64Vector",
    "add_mod",
    "decode",
    "encode",
    "encode_fixed",
    "from_ring",
    "headroom_check",
    "max_frac_bits",
    "neg_mod",
    "sub_mod",
    "sum_mod",
    "to_ring",
]

U64Vector = npt.NDArray[np.uint64]

#: 2^-24 ≈ 6e-8 resolution; leaves 39 bits of integer headroom for sums.
DEFAULT_FRAC_BITS = 24
_MAX_FRAC_BITS = 62
_TWO63 = 2**63
_TWO64 = 2**64


class FixedPointOverflow(InvalidSpec):
    """A value or an n-way sum does not fit in signed 64-bit fixed point."""

    slug, title = "fixed-point-overflow", "Fixed-point overflow"


def _check_frac_bits(frac_bits: int) -> None:
    if not isinstance(frac_bits, int) or isinstance(frac_bits, bool) or not 0 <= frac_bits <= _MAX_FRAC_BITS:
        raise InvalidSpec(f"frac_bits must be an int in [0, {_MAX_FRAC_BITS}], got {frac_bits!r}")


def encode(values: npt.ArrayLike, frac_bits: int = DEFAULT_FRAC_BITS) -> U64Vector:
    """Encode reals as round(v * 2^frac_bits) in two's complement, as a flat uint64 vector.

    Rounds half to even (deterministic). Raises :class:`FixedPointOverflow` on NaN/inf or a
    value whose scaled magnitude does not fit in int64; silently wrapping would corrupt a sum.
    """
    _check_frac_bits(frac_bits)
    arr = np.asarray(values, dtype=np.float64).ravel()
    if not np.all(np.isfinite(arr)):
        raise FixedPointOverflow("cannot encode NaN or infinite values")
    scaled = np.rint(np.ldexp(arr, frac_bits))
    # float64(2^63) is exact; anything >= it (or < -2^63) cannot be an int64.
    if scaled.size and (scaled.max() >= _TWO63 or scaled.min() < -_TWO63):
        raise FixedPointOverflow(
            f"value of magnitude {float(np.abs(arr).max())!r} does not fit in 64-bit fixed point "
            f"with frac_bits={frac_bits}"
        )
    return scaled.astype(np.int64).view(np.uint64)


def decode(encoded: npt.ArrayLike, frac_bits: int = DEFAULT_FRAC_BITS) -> npt.NDArray[np.float64]:
    """Decode a (summed) uint64 vector back to float64, reading it as signed int64.

    Exact up to float64's 53-bit mantissa; the sum must not have overflowed (see
    :func:`headroom_check`).
    """
    _check_frac_bits(frac_bits)
    arr = np.ascontiguousarray(np.asarray(encoded))
    if arr.dtype != np.uint64 and arr.dtype != np.int64:
        raise InvalidSpec(f"decode expects a uint64 or int64 array, got {arr.dtype}")
    signed = arr.view(np.int64)
    return np.ldexp(signed.astype(np.float64), -frac_bits)


def encode_fixed(value: float, frac_bits: int) -> int:
    """round(value * 2^frac_bits) as a Python int (round half to even; exact for |value| < 2^53).

    Unbounded: the caller checks the integer against its headroom before it enters the ring.
    Raises ``ValueError`` for NaN or infinity.
    """
    if not math.isfinite(value):
        raise ValueError("cannot encode a non-finite value")
    return round(Fraction(value) * (1 << frac_bits))


def to_ring(value: int) -> int:
    """Two's complement representative modulo 2^64 (what goes into a uint64 vector)."""
    return value % _TWO64


def from_ring(value: int) -> int:
    """Inverse of ``to_ring`` for |value| < 2^63."""
    v = int(value) % _TWO64
    return v - _TWO64 if v >= _TWO63 else v


def headroom_check(max_abs: float, n_terms: int, frac_bits: int = DEFAULT_FRAC_BITS) -> None:
    """Raise :class:`FixedPointOverflow` unless any sum of ``n_terms`` values with |v| <= max_abs fits.

    Worst case per term is round(max_abs * 2^frac_bits) in magnitude; the sum must stay below
    2^63 in magnitude so that decoding the mod-2^64 total as int64 recovers it exactly.
    """
    _check_frac_bits(frac_bits)
    if not isinstance(n_terms, int) or isinstance(n_terms, bool) or n_terms < 1:
        raise InvalidSpec(f"n_terms must be a positive int, got {n_terms!r}")
    if not math.isfinite(max_abs) or max_abs < 0:
        raise InvalidSpec(f"max_abs must be finite and >= 0, got {max_abs!r}")
    # Exact integer arithmetic: ceil covers round-half-up of the largest admissible value.
    per_term = math.ceil(math.ldexp(max_abs, frac_bits))
    if per_term * n_terms >= _TWO63:
        raise FixedPointOverflow(
            f"a sum of {n_terms} values with |v| <= {max_abs} overflows 64-bit fixed point "
            f"with frac_bits={frac_bits}; lower frac_bits to at most "
            f"{max_frac_bits(max_abs, n_terms)} or tighten the bounds",
            max_abs=max_abs,
            n_terms=n_terms,
            frac_bits=frac_bits,
        )


def max_frac_bits(max_abs: float, n_terms: int) -> int:
    """Largest ``frac_bits`` for which :func:`headroom_check` passes; -1 if none does."""
    for bits in range(_MAX_FRAC_BITS, -1, -1):
        if math.ceil(math.ldexp(max_abs, bits)) * n_terms < _TWO63:
            return bits
    return -1


def _as_u64(name: str, v: npt.ArrayLike) -> U64Vector:
    arr = np.asarray(v)
    if arr.dtype != np.uint64:
        raise InvalidSpec(f"{name} must be a uint64 array, got {arr.dtype}")
    return arr


def add_mod(a: npt.ArrayLike, b: npt.ArrayLike) -> U64Vector:
    """(a + b) mod 2^64 elementwise; numpy's uint64 addition wraps by definition."""
    return np.add(_as_u64("a", a), _as_u64("b", b))


def sub_mod(a: npt.ArrayLike, b: npt.ArrayLike) -> U64Vector:
    """(a - b) mod 2^64 elementwise."""
    return np.subtract(_as_u64("a", a), _as_u64("b", b))


def neg_mod(a: npt.ArrayLike) -> U64Vector:
    """(-a) mod 2^64 elementwise."""
    arr = _as_u64("a", a)
    return np.subtract(np.zeros_like(arr), arr)


def sum_mod(vectors: Iterable[npt.ArrayLike]) -> U64Vector:
    """Sum of equal-length uint64 vectors mod 2^64; raises on an empty iterable or mismatch."""
    total: U64Vector | None = None
    for i, v in enumerate(vectors):
        arr = _as_u64(f"vectors[{i}]", v)
        if total is None:
            total = arr.copy()
        else:
            if arr.shape != total.shape:
                raise InvalidSpec(f"vectors[{i}] has shape {arr.shape}, expected {total.shape}")
            np.add(total, arr, out=total)
    if total is None:
        raise InvalidSpec("sum_mod needs at least one vector")
    return total
