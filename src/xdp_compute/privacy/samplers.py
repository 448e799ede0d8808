"""Exact samplers for integer DP noise (discrete Laplace and discrete Gaussian).

Canonne, Kamath, Steinke, "The Discrete Gaussian for Differential Privacy", NeurIPS 2020
(arXiv 2004.00010), Algorithms 1-3. Every step uses only integer arithmetic on the rational
parameters and uniform integers from a :class:`RandomnessSource`, so the output distribution is
exactly the stated one: no floating point touches the noise (Mironov 2012 shows how float
Laplace noise leaks the data through its low-order bits).

Parameters are rationals: pass an ``int`` or a :class:`fractions.Fraction`. A ``float`` is
accepted for convenience and converted by :func:`to_rational`, which rounds *up* (never less
noise than asked for) to a multiple of 2**-32.
"""

from __future__ import annotations

import math
from fractions import Fraction
from math import isqrt

from xdp_compute.privacy.randomness import RandomnessSource, SystemRandomness

__all__ = [
    "sample_bernoulli_exp",
    "sample_discrete_gaussian",
    "sample_discrete_gaussian_vector",
    "sample_discrete_laplace",
    "to_rational",
]

Rational = int | Fraction | float

_FLOAT_DENOMINATOR = 1 << 32


def to_rational(x: Rational) -> Fraction:
    """Convert a non-negative finite parameter to a Fraction.

    ints and Fractions are taken exactly. A float is rounded *up* to the next multiple of
    2**-32 (a bounded denominator keeps the integer arithmetic small; rounding up means a
    sampler never adds less noise than requested).
    """
    if isinstance(x, bool):
        raise TypeError("expected a number, got bool")
    if isinstance(x, Fraction):
        value = x
    elif isinstance(x, int):
        value = Fraction(x)
    elif isinstance(x, float):
        if not math.isfinite(x):
            raise ValueError(f"parameter must be finite, got {x!r}")
        exact = Fraction(x)
        value = Fraction(math.ceil(exact * _FLOAT_DENOMINATOR), _FLOAT_DENOMINATOR)
    else:
        raise TypeError(f"expected int, Fraction or float, got {type(x).__name__}")
    if value < 0:
        raise ValueError(f"parameter must be non-negative, got {x!r}")
    return value


# --- CKS 2020, Algorithm 1: Bernoulli(exp(-gamma)) ------------------------------------------


def _bernoulli_exp_le1(num: int, den: int, rng: RandomnessSource) -> bool:
    """Bernoulli(exp(-num/den)) for 0 <= num/den <= 1 (CKS 2020, Alg. 1, case gamma in [0,1]).

    Draw A_k ~ Bernoulli(gamma/k) for k = 1, 2, ... until the first A_k = 0; the stopping
    index K is odd with probability exactly exp(-gamma).
    """
    k = 1
    # A_k ~ Bernoulli(num / (den * k)): a uniform integer below den*k falls under num.
    while rng.randbelow(den * k) < num:
        k += 1
    return k % 2 == 1


def _bernoulli_exp(num: int, den: int, rng: RandomnessSource) -> bool:
    """Bernoulli(exp(-num/den)) for any num/den >= 0 (CKS 2020, Alg. 1)."""
    # Case gamma > 1: exp(-gamma) = exp(-1)^floor(gamma) * exp(-frac(gamma)); draw the
    # factors one by one and stop at the first failure (expected O(1) draws).
    while num > den:
        if not _bernoulli_exp_le1(1, 1, rng):
            return False
        num -= den
    return _bernoulli_exp_le1(num, den, rng)


def sample_bernoulli_exp(gamma: Rational, rng: RandomnessSource | None = None) -> bool:
    """Return True with probability exactly exp(-gamma), gamma >= 0 rational."""
    g = to_rational(gamma)
    return _bernoulli_exp(g.numerator, g.denominator, rng or SystemRandomness())


# --- CKS 2020, Algorithm 2: discrete Laplace ------------------------------------------------


def _discrete_laplace(s: int, t: int, rng: RandomnessSource) -> int:
    """Lap_Z(t/s): P[Y = y] proportional to exp(-|y| * s / t) (CKS 2020, Alg. 2).

    Runs in expected O(1) draws for any t: U is uniform below t and the geometric part counts
    whole multiples of t, instead of a geometric with mean ~t.
    """
    while True:
        u = rng.randbelow(t)  # U ~ Uniform{0, ..., t-1}
        if not _bernoulli_exp_le1(u, t, rng):  # D ~ Bernoulli(exp(-U/t)); reject if 0
            continue
        v = 0  # V ~ Geometric(1 - exp(-1)): count Bernoulli(exp(-1)) successes
        while _bernoulli_exp_le1(1, 1, rng):
            v += 1
        y = (u + t * v) // s  # X = U + t*V ~ Geometric(1 - exp(-1/t)); Y = floor(X / s)
        b = rng.randbelow(2)  # B ~ Bernoulli(1/2)
        if b == 1 and y == 0:  # reject (B=1, Y=0) so that 0 is not counted twice
            continue
        return -y if b else y


def sample_discrete_laplace(scale: Rational, rng: RandomnessSource | None = None) -> int:
    """Sample Lap_Z(scale): P[Y = y] proportional to exp(-|y| / scale); scale > 0 rational."""
    r = to_rational(scale)
    if r == 0:
        raise ValueError("discrete Laplace scale must be positive")
    # CKS Alg. 2 takes scale t/s with integers s, t.
    return _discrete_laplace(r.denominator, r.numerator, rng or SystemRandomness())


# --- CKS 2020, Algorithm 3: discrete Gaussian -----------------------------------------------


def _discrete_gaussian(a: int, b: int, t: int, rng: RandomnessSource) -> int:
    """N_Z(0, a/b) by rejection from Lap_Z(t), t = floor(sigma) + 1 (CKS 2020, Alg. 3)."""
    two_abt2 = 2 * a * b * t * t
    while True:
        y = _discrete_laplace(1, t, rng)  # Y ~ Lap_Z(t)
        # C ~ Bernoulli(exp(-(|Y| - sigma^2/t)^2 / (2 sigma^2))). With sigma^2 = a/b this
        # exponent is exactly (|Y| b t - a)^2 / (2 a b t^2), a ratio of integers.
        diff = abs(y) * b * t - a
        if _bernoulli_exp(diff * diff, two_abt2, rng):
            return y


def _gaussian_params(sigma2: Rational) -> tuple[int, int, int] | None:
    s2 = to_rational(sigma2)
    if s2 == 0:
        return None
    a, b = s2.numerator, s2.denominator
    # t = floor(sigma) + 1; floor(sqrt(x)) == isqrt(floor(x)) for real x >= 0.
    t = isqrt(a // b) + 1
    return a, b, t


def sample_discrete_gaussian(sigma2: Rational, rng: RandomnessSource | None = None) -> int:
    """Sample N_Z(0, sigma2): P[X = x] proportional to exp(-x^2 / (2 sigma2)).

    ``sigma2`` is the *parameter* sigma^2; the variance is below it (by 2e-7 relative at
    sigma = 1, 2e-4 at sigma = 0.8, 1e-15 at sigma = sqrt(2)). ``sigma2 == 0`` returns 0.
    ``rng`` defaults to the OS CSPRNG. Expected O(1) random draws per sample at any sigma.
    """
    params = _gaussian_params(sigma2)
    if params is None:
        return 0
    return _discrete_gaussian(*params, rng or SystemRandomness())


def sample_discrete_gaussian_vector(
    sigma2: Rational, size: int, rng: RandomnessSource | None = None
) -> list[int]:
    """Sample ``size`` independent N_Z(0, sigma2) values as Python ints (exact, no overflow).

    The parameter is parsed once; each draw is :func:`sample_discrete_gaussian`'s exact
    algorithm. Callers wanting a numpy array can ``np.asarray(..., dtype=np.int64)`` (safe
    while sigma < ~1e17).
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ValueError("size must be a non-negative int")
    params = _gaussian_params(sigma2)
    if params is None:
        return [0] * size
    source = rng or SystemRandomness()
    a, b, t = params
    return [_discrete_gaussian(a, b, t, source) for _ in range(size)]
