"""t-of-n Shamir secret sharing of short byte strings, lane by lane over GF(2^21 - 9).

Used by secure aggregation (Bonawitz et al. 2017, Round 1: "generate t-out-of-|U1| shares of
s_u^SK and b_u") for 32-byte keys and seeds. Shamir 1979: a random polynomial f of degree t-1
with f(0) = secret; share i is (x_i, f(x_i)); any t shares give f(0) by Lagrange interpolation,
fewer reveal nothing.

The field is the prime p = 2^21 - 9, small enough that a whole sharing is a few vectorised
numpy passes instead of O(k*t) steps on growing 521-bit integers (issue #13: a node's cost
~ k). A secret of up to 32 bytes is padded to 34 bytes (ISO/IEC 7816-4: 0x80 then zeros, so
leading and trailing zero bytes survive) and cut into ``LANES`` = 17 big-endian 16-bit lanes;
each lane is shared with its own polynomial whose t-1 coefficients are drawn independently and
uniformly from GF(p) (OS CSPRNG, rejection sampling), all lanes at the same x. A share is the
vector (f_1(x), ..., f_17(x)). So this is a proper (t, n) sharing of the whole secret: t shares
determine every lane; t-1 shares leave every lane uniform and independent of the others, i.e.
every secret equally likely (perfect secrecy, as with one big field). x-coordinates are 1..65535
< p, all distinct and non-zero. A lane carries 16 bits in a 21-bit field, so a garbage share
(a random vector) rebuilds a well-formed secret only with probability (2^16 / p)^17 < 2^-84.
"""

from __future__ import annotations

import functools
import os
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from xdp_compute.errors import BadRequest, InvalidSpec

__all__ = [
    "LANES",
    "MAX_SECRET_BYTES",
    "PRIME",
    "SHARE_BYTES",
    "InvalidShare",
    "Share",
    "combine_at_zero",
    "lagrange_at_zero",
    "reconstruct_secret",
    "secret_from_values",
    "split_secret",
    "split_secrets",
]

#: The largest prime below 2^21: products of two elements stay below 2^42, so a sum of up to
#: 2^11 of them is exact in float64 (BLAS) and a sum of up to 2^21 in int64.
PRIME = 2**21 - 9
#: Field elements per share: 17 lanes of 16 secret bits each (34 bytes: 32 + padding).
LANES = 17
_LANE_BITS = 16
_PADDED_BYTES = LANES * _LANE_BITS // 8
#: 32 bytes, then the 0x80 marker and a zero byte fill the 34 bytes of the lanes.
MAX_SECRET_BYTES = 32
_MAX_X = 0xFFFF
_LANES_FORMAT = struct.Struct(f">{LANES}I")
#: Encoded size of one share: 2-byte x then 17 big-endian 32-bit field elements.
SHARE_BYTES = 2 + _LANES_FORMAT.size
_HIGH_BITS = sum(((1 << 32) - (1 << 21)) << (32 * i) for i in range(LANES))
_NINES = sum((2**21 - PRIME) << (32 * i) for i in range(LANES))
#: float64 sums of products below 2^42 are exact for up to this many terms (< 2^53).
_EXACT_TERMS = 1 << 11
#: OpenBLAS runs a product of m*n*k up to 2^18 on the calling thread; larger ones wake its
#: thread pool, which costs more than it saves at these sizes on a shared machine.
_SINGLE_THREAD_MNK = 1 << 18


class InvalidShare(BadRequest):
    """A share is malformed, duplicated, or a set of shares is inconsistent."""

    slug, title = "invalid-share", "Invalid secret share"


@dataclass(frozen=True, slots=True)
class Share:
    """One point (x, f(x)) of a sharing; ``x`` is the holder's 1-based index.

    ``y`` holds f_1(x)..f_17(x), the ``LANES`` field elements, as 4-byte big-endian words (bytes,
    not a tuple of ints: a node holds ~2k shares, the aggregator ~2kn, and bytes cost neither
    per-element objects nor garbage-collector passes); :attr:`values` gives them as ints.
    """

    x: int
    y: bytes

    @property
    def values(self) -> tuple[int, ...]:
        """The share's field elements f_1(x)..f_17(x)."""
        return _LANES_FORMAT.unpack(self.y)

    @classmethod
    def of(cls, x: int, values: Sequence[int]) -> Share:
        """A share from its x and its ``LANES`` field elements (each in [0, PRIME))."""
        if len(values) != LANES or any(not 0 <= int(v) < PRIME for v in values):
            raise InvalidShare(f"a share holds {LANES} field elements in [0, {PRIME})")
        return cls(x, _LANES_FORMAT.pack(*values))

    def encode(self) -> bytes:
        """Fixed-size encoding (``SHARE_BYTES``)."""
        return self.x.to_bytes(2, "big") + self.y

    @classmethod
    def decode(cls, data: bytes) -> Share:
        """Parse and range-check an encoded share; raises :class:`InvalidShare`."""
        if not isinstance(data, (bytes, bytearray, memoryview)) or len(data) != SHARE_BYTES:
            raise InvalidShare(f"a share is exactly {SHARE_BYTES} bytes")
        raw = bytes(data)
        x = int.from_bytes(raw[:2], "big")
        if x == 0:
            raise InvalidShare("share x-coordinate must be >= 1")
        y = raw[2:]
        # Every lane < p = 2^21 - 9, all lanes at once on one integer: no lane has a bit at 21..31,
        # nor does it after adding 9 to each lane (a lane below 2^21 + 9 carries into no other).
        v = int.from_bytes(y, "big")
        if v & _HIGH_BITS or (v + _NINES) & _HIGH_BITS:
            raise InvalidShare("share value is not a field element")
        return cls(x, y)


def _check_t_n(threshold: int, n: int) -> None:
    for name, v in (("threshold", threshold), ("n", n)):
        if not isinstance(v, int) or isinstance(v, bool):
            raise InvalidSpec(f"{name} must be an int")
    if not 1 <= threshold <= n <= _MAX_X:
        raise InvalidSpec(f"need 1 <= threshold <= n <= {_MAX_X}, got threshold={threshold}, n={n}")


def _lanes(secret: bytes) -> npt.NDArray[np.int64]:
    """The secret, padded (secret || 0x80 || 0x00...) and read as 17 big-endian 16-bit lanes."""
    if not isinstance(secret, (bytes, bytearray)) or len(secret) > MAX_SECRET_BYTES:
        raise InvalidSpec(f"secret must be at most {MAX_SECRET_BYTES} bytes")
    padded = bytes(secret) + b"\x80" + bytes(_PADDED_BYTES - len(secret) - 1)
    return np.frombuffer(padded, dtype=">u2").astype(np.int64)


def secret_from_values(values: Sequence[int] | npt.NDArray[np.int64], *, secret_len: int | None = None) -> bytes:
    """The secret behind interpolated lane values f_1(0)..f_17(0) (the inverse of the padding).

    Raises :class:`InvalidShare` when a lane does not hold 16 bits, the padding is malformed or
    the length is not ``secret_len``: what a garbage or inconsistent share set produces.
    """
    lanes = [int(v) for v in values]
    if len(lanes) != LANES or any(not 0 <= v < 1 << _LANE_BITS for v in lanes):
        raise InvalidShare("shares are inconsistent: reconstruction is not a valid secret")
    padded = b"".join(v.to_bytes(2, "big") for v in lanes)
    body = padded.rstrip(b"\x00")
    if not body or body[-1] != 0x80 or (secret_len is not None and len(body) - 1 != secret_len):
        raise InvalidShare("shares are inconsistent: reconstruction is not a valid secret")
    return body[:-1]


def _uniform(count: int) -> npt.NDArray[np.int64]:
    """``count`` independent uniform elements of GF(p) from the OS CSPRNG (21-bit draws, the
    few >= p redrawn: rejection sampling keeps the distribution exactly uniform)."""
    out = np.frombuffer(os.urandom(4 * count), dtype="<u4").astype(np.int64) & ((1 << 21) - 1)
    bad = np.flatnonzero(out >= PRIME)
    while bad.size:
        out[bad] = np.frombuffer(os.urandom(4 * bad.size), dtype="<u4").astype(np.int64) & ((1 << 21) - 1)
        bad = bad[out[bad] >= PRIME]
    return out


def _powers(xs: npt.NDArray[np.int64], t: int) -> npt.NDArray[np.int64]:
    """Vandermonde rows x^0..x^(t-1) mod p for each x: ~2 sqrt(t) vectorised steps (a first
    block of sqrt(t) powers, then each next block is the previous one times x^B)."""
    block = max(1, int(t**0.5))
    out = np.empty((len(xs), t), dtype=np.int64)
    out[:, 0] = 1
    for j in range(1, min(block, t)):
        out[:, j] = out[:, j - 1] * xs % PRIME
    step = out[:, block - 1] * xs % PRIME  # x^block
    for s in range(block, t, block):
        e = min(s + block, t)
        out[:, s:e] = out[:, s - block : e - block] * step[:, None] % PRIME
    return out


def _mulmod(a: npt.NDArray[np.int64], b: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """a @ b mod p, exactly: float64 products in blocks of at most 2^11 terms (each partial sum
    below 2^53) and of at most 2^18 m*n*k (one thread, see ``_SINGLE_THREAD_MNK``)."""
    rows, inner = a.shape
    cols = b.shape[1]
    out = np.zeros((rows, cols), dtype=np.int64)
    step_k = min(inner, _EXACT_TERMS)
    step_r = max(1, _SINGLE_THREAD_MNK // max(1, step_k * cols))
    af, bf = a.astype(np.float64), b.astype(np.float64)
    for k0 in range(0, inner, step_k):
        bk = bf[k0 : k0 + step_k]
        for r0 in range(0, rows, step_r):
            part = af[r0 : r0 + step_r, k0 : k0 + step_k] @ bk
            out[r0 : r0 + step_r] += part.astype(np.int64) % PRIME
    bf.fill(0)  # b holds the secrets' lanes when called from split_secrets: no copy outlives the call
    return out % PRIME


def _check_points(threshold: int, xs: Sequence[int] | None, n: int) -> list[int]:
    points = list(range(1, n + 1) if xs is None else xs)
    _check_t_n(threshold, len(points))
    if len(set(points)) != len(points) or any(
        not isinstance(x, int) or isinstance(x, bool) or not 1 <= x <= _MAX_X for x in points
    ):
        raise InvalidSpec(f"x-coordinates must be distinct ints in [1, {_MAX_X}]")
    return points


def split_secrets(values: Sequence[bytes], threshold: int, xs: Sequence[int]) -> list[list[Share]]:
    """Share each secret in ``values`` among the same holders ``xs`` (one matrix product for all).

    Every lane of every secret gets its own independent random polynomial; sharing two secrets
    together is exactly two separate sharings, only cheaper. Returns one share list per secret,
    in the order of ``xs``.
    """
    points = _check_points(threshold, xs, len(xs))
    if not values:
        return []
    lanes = np.concatenate([_lanes(v) for v in values])
    # Shamir 1979: coefficients (a_0 = the secret lane, a_1..a_{t-1} uniform) for every lane;
    # row j holds a_j of every lane, so the shares are Vandermonde(xs) @ coefficients.
    coeffs = np.empty((threshold, lanes.size), dtype=np.int64)
    coeffs[0] = lanes
    if threshold > 1:
        coeffs[1:] = _uniform((threshold - 1) * lanes.size).reshape(threshold - 1, lanes.size)
    ys = _mulmod(_powers(np.asarray(points, dtype=np.int64), threshold), coeffs).astype(">u4")
    coeffs.fill(0)  # the secret lanes and the polynomials: keep no copy once the shares are out
    lanes.fill(0)
    out = [[Share(x, ys[r, i * LANES : (i + 1) * LANES].tobytes()) for r, x in enumerate(points)]
           for i in range(len(values))]
    ys.fill(0)
    return out


def split_secret(secret: bytes, threshold: int, n: int, *, xs: Sequence[int] | None = None) -> list[Share]:
    """Split ``secret`` into shares at x = 1..n (or at the given distinct ``xs``), any t recover it.

    ``xs`` lets a caller share among a subset (SecAgg+ neighbourhoods) while keeping each
    holder's global x-coordinate.
    """
    _lanes(secret)  # names a bad secret before the points
    return split_secrets([secret], threshold, _check_points(threshold, xs, n))[0]


@functools.lru_cache(maxsize=64)
def lagrange_at_zero(xs: tuple[int, ...]) -> tuple[int, ...]:
    """Lagrange basis values L_i(0) mod PRIME for distinct x-coordinates (cached per set).

    In one secure-aggregation round every reconstruction uses the same survivor set, so the
    coefficients are computed once and each secret costs one small matrix product.
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


def combine_at_zero(weights: Sequence[int], ys: Sequence[bytes]) -> npt.NDArray[np.int64]:
    """sum_i weights[i] * ys[i] mod p, lane by lane, for share values ``ys`` (``Share.y``) and
    weights already reduced mod p. Exact in int64: products are below 2^42, at most 2^16 points."""
    w = np.asarray(weights, dtype=np.int64)
    y = np.frombuffer(b"".join(ys), dtype=">u4").reshape(len(ys), LANES).astype(np.int64)
    return (w @ y) % PRIME  # type: ignore[no-any-return]


def reconstruct_secret(shares: Iterable[Share], threshold: int, *, secret_len: int | None = None) -> bytes:
    """Recover the secret from at least ``threshold`` shares (uses the t with smallest x).

    Raises :class:`InvalidShare` if there are too few distinct shares or the result is not a
    well-formed secret. A garbage share gives random lanes, caught except with probability
    below 2^-84 (more with ``secret_len``). A share altered on purpose (or by a small offset)
    cannot be caught from t shares, which carry no redundancy; callers that can, verify the
    result (secagg checks a rebuilt key against its advertised public key).
    """
    by_x: dict[int, bytes] = {}
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
    if any(not isinstance(by_x[x], bytes) or len(by_x[x]) != SHARE_BYTES - 2 for x in xs):
        raise InvalidShare(f"a share holds {LANES} field elements")
    values = combine_at_zero(lagrange_at_zero(xs), [by_x[x] for x in xs])
    return secret_from_values(values, secret_len=secret_len)
