"""t-of-n Shamir secret sharing of short byte strings over GF(2^521 - 1).

Used by secure aggregation (Bonawitz et al. 2017, Round 1: "generate t-out-of-|U1| shares of
s_u^SK and b_u") for 32-byte keys and seeds. Shamir 1979: a random polynomial f of degree t-1
with f(0) = secret; share i is (x_i, f(x_i)); any t shares give f(0) by Lagrange interpolation,
fewer reveal nothing. The field is the Mersenne prime 2^521 - 1, so a secret of up to 64 bytes
(prefixed with 0x01 to keep leading zero bytes) is a field element. x-coordinates are the
holders' 1-based positions in the participant list. Coefficients come from ``secrets``.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

from xdp_compute.errors import BadRequest, InvalidSpec

__all__ = [
    "MAX_SECRET_BYTES",
    "PRIME",
    "SHARE_BYTES",
    "InvalidShare",
    "Share",
    "lagrange_at_zero",
    "reconstruct_secret",
    "split_secret",
]

PRIME = 2**521 - 1
_Y_BYTES = 66  # ceil(521 / 8)
_MAX_X = 0xFFFF
#: Encoded size of one share: 2-byte x then 66-byte y, both big-endian.
SHARE_BYTES = 2 + _Y_BYTES
#: 0x01 marker + 64 bytes = 520 bits < 521: always below PRIME.
MAX_SECRET_BYTES = 64


class InvalidShare(BadRequest):
    """A share is malformed, duplicated, or a set of shares is inconsistent."""

    slug, title = "invalid-share", "Invalid secret share"


@dataclass(frozen=True, slots=True)
class Share:
    """One point (x, f(x)) of a sharing polynomial; ``x`` is the holder's 1-based index."""

    x: int
    y: int

    def encode(self) -> bytes:
        """Fixed-size encoding (``SHARE_BYTES``)."""
        return self.x.to_bytes(2, "big") + self.y.to_bytes(_Y_BYTES, "big")

    @classmethod
    def decode(cls, data: bytes) -> Share:
        """Parse and range-check an encoded share; raises :class:`InvalidShare`."""
        if not isinstance(data, (bytes, bytearray, memoryview)) or len(data) != SHARE_BYTES:
            raise InvalidShare(f"a share is exactly {SHARE_BYTES} bytes")
        raw = bytes(data)
        x = int.from_bytes(raw[:2], "big")
        y = int.from_bytes(raw[2:], "big")
        if x == 0:
            raise InvalidShare("share x-coordinate must be >= 1")
        if y >= PRIME:
            raise InvalidShare("share value is not a field element")
        return cls(x, y)


def _check_t_n(threshold: int, n: int) -> None:
    for name, v in (("threshold", threshold), ("n", n)):
        if not isinstance(v, int) or isinstance(v, bool):
            raise InvalidSpec(f"{name} must be an int")
    if not 1 <= threshold <= n <= _MAX_X:
        raise InvalidSpec(f"need 1 <= threshold <= n <= {_MAX_X}, got threshold={threshold}, n={n}")


def split_secret(secret: bytes, threshold: int, n: int, *, xs: Sequence[int] | None = None) -> list[Share]:
    """Split ``secret`` into shares at x = 1..n (or at the given distinct ``xs``), any t recover it.

    ``xs`` lets a caller share among a subset (SecAgg+ neighbourhoods) while keeping each
    holder's global x-coordinate.
    """
    if not isinstance(secret, (bytes, bytearray)) or len(secret) > MAX_SECRET_BYTES:
        raise InvalidSpec(f"secret must be at most {MAX_SECRET_BYTES} bytes")
    if xs is None:
        xs = range(1, n + 1)
    points = list(xs)
    _check_t_n(threshold, len(points))
    if len(set(points)) != len(points) or any(not 1 <= x <= _MAX_X for x in points):
        raise InvalidSpec(f"x-coordinates must be distinct ints in [1, {_MAX_X}]")
    s = int.from_bytes(b"\x01" + bytes(secret), "big")
    coeffs = [s] + [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
    highest_first = coeffs[::-1]
    shares = []
    for x in points:
        # Horner without reducing each step: x is small, so the accumulator grows only by
        # log2(x) bits per step and one final reduction is cheaper than t of them.
        acc = 0
        for c in highest_first:
            acc = acc * x + c
        shares.append(Share(x, acc % PRIME))
    return shares


@lru_cache(maxsize=64)
def lagrange_at_zero(xs: tuple[int, ...]) -> tuple[int, ...]:
    """Lagrange basis values L_i(0) mod PRIME for distinct x-coordinates (cached per set).

    In one secure-aggregation round every reconstruction uses the same survivor set, so the
    coefficients are computed once and each secret costs t multiplications.
    """
    if len(set(xs)) != len(xs):
        raise InvalidShare("duplicate share x-coordinates")
    out = []
    for i, xi in enumerate(xs):
        num, den = 1, 1
        for j, xj in enumerate(xs):
            if i != j:
                num = num * xj % PRIME  # (0 - xj) / (xi - xj) = xj / (xj - xi)
                den = den * (xj - xi) % PRIME
        out.append(num * pow(den, -1, PRIME) % PRIME)
    return tuple(out)


def reconstruct_secret(shares: Iterable[Share], threshold: int, *, secret_len: int | None = None) -> bytes:
    """Recover the secret from at least ``threshold`` shares (uses the t with smallest x).

    Raises :class:`InvalidShare` if there are too few distinct shares or the result is not a
    well-formed secret. Pass ``secret_len`` when it is known (32 for keys and seeds): a garbage
    share then gives a random field element, caught except with probability ~2^-260. A share
    altered on purpose (or by a small offset) cannot be caught from t shares, which carry no
    redundancy; callers that can, verify the result (secagg checks a rebuilt key against its
    advertised public key).
    """
    by_x: dict[int, int] = {}
    for sh in shares:
        if not isinstance(sh, Share):
            raise InvalidShare("not a Share")
        if sh.x in by_x and by_x[sh.x] != sh.y:
            raise InvalidShare(f"two different shares for x={sh.x}")
        by_x[sh.x] = sh.y
    if not isinstance(threshold, int) or threshold < 1:
        raise InvalidSpec("threshold must be a positive int")
    if len(by_x) < threshold:
        raise InvalidShare(f"need {threshold} shares, got {len(by_x)}")
    xs = tuple(sorted(by_x)[:threshold])
    coeffs = lagrange_at_zero(xs)
    s = sum(c * by_x[x] for c, x in zip(coeffs, xs, strict=True)) % PRIME
    raw = s.to_bytes((s.bit_length() + 7) // 8, "big")
    if (
        not raw
        or raw[0] != 0x01
        or len(raw) - 1 > MAX_SECRET_BYTES
        or (secret_len is not None and len(raw) - 1 != secret_len)
    ):
        raise InvalidShare("shares are inconsistent: reconstruction is not a valid secret")
    return raw[1:]
