"""Exact samplers (CKS 2020, Algorithms 1-3) against their exact distributions.

All statistical checks use fixed seeds and reject at p < 1e-6, so a correct sampler passes
(for any seed) with probability > 1 - 1e-6 per check; power checks show the same tests do
reject a wrong distribution.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from fractions import Fraction

import numpy as np
import pytest
from scipy import stats

from xdp_compute.privacy.randomness import SeededRandomness
from xdp_compute.privacy.samplers import (
    sample_bernoulli_exp,
    sample_discrete_gaussian,
    sample_discrete_gaussian_vector,
    sample_discrete_laplace,
    to_rational,
)

ALPHA = 1e-6
SMALL = [Fraction(4, 25), Fraction(16, 25), Fraction(9)]  # sigma = 0.4, 0.8, 3
LARGE = 10**12  # sigma = 1e6

Cdf = Callable[[np.ndarray], np.ndarray]


# --- exact reference distributions ----------------------------------------------------------


def dg_pmf(sigma2: float) -> tuple[np.ndarray, np.ndarray]:
    """Exact N_Z(0, sigma2) pmf on a support wide enough that the rest is < 1e-300."""
    r = int(40 * math.sqrt(sigma2)) + 40
    x = np.arange(-r, r + 1)
    w = np.exp(-(x.astype(float) ** 2) / (2.0 * sigma2))
    return x, w / w.sum()


def chi2_pvalue_from_pmf(samples: list[int], support: np.ndarray, pmf: np.ndarray) -> float:
    """Chi-square GOF; outer values merged into tail bins so every expected count >= 5."""
    n = len(samples)
    counts = Counter(samples)
    obs = np.array([counts.get(int(v), 0) for v in support], dtype=float)
    assert obs.sum() == n, "sample outside the reference support"
    exp = pmf * n
    keep = np.nonzero(exp >= 5)[0]
    lo, hi = keep[0], keep[-1]
    o = np.concatenate([[obs[: lo + 1].sum()], obs[lo + 1 : hi], [obs[hi:].sum()]])
    e = np.concatenate([[exp[: lo + 1].sum()], exp[lo + 1 : hi], [exp[hi:].sum()]])
    e *= o.sum() / e.sum()
    return float(stats.chisquare(o, e).pvalue)


def ks_pvalue(samples: list[int], cdf: Cdf) -> float:
    """KS against a discrete CDF. Both CDFs are step functions on the integers, so the sup is
    attained at a sample point or just before one. The continuous KS null distribution is
    conservative for discrete data (rejects less often), so alpha is respected."""
    xs = np.sort(np.asarray(samples, dtype=np.int64))
    n = len(xs)
    uniq, counts = np.unique(xs, return_counts=True)
    ecdf_at = np.cumsum(counts) / n  # empirical CDF at each distinct sample value
    ecdf_before = np.concatenate([[0.0], ecdf_at[:-1]])  # empirical CDF at value - 1
    d1 = np.max(np.abs(ecdf_at - cdf(uniq)))
    d2 = np.max(np.abs(ecdf_before - cdf(uniq - 1)))
    return float(stats.kstwo.sf(max(d1, d2), n))


def exact_cdf_small(sigma2: float) -> Cdf:
    support, pmf = dg_pmf(sigma2)
    cum = np.cumsum(pmf)

    def cdf(k: np.ndarray) -> np.ndarray:
        idx = np.clip(k - support[0], -1, len(support) - 1)
        return np.where(idx < 0, 0.0, cum[np.maximum(idx, 0)])

    return cdf


def large_cdf(sigma2: float) -> Cdf:
    # For sigma = 1e6, sum_{x <= k} pmf(x) equals the continuity-corrected normal CDF up to
    # ~1e-12 (Poisson summation / midpoint rule), far below the tests' resolution.
    s = math.sqrt(sigma2)

    def cdf(k: np.ndarray) -> np.ndarray:
        return np.asarray(stats.norm.cdf((np.asarray(k, dtype=float) + 0.5) / s))

    return cdf


def exact_variance(sigma2: float) -> tuple[float, float]:
    """(variance, fourth moment) of N_Z(0, sigma2), exactly (it is below sigma2 for small sigma)."""
    x, p = dg_pmf(sigma2)
    xf = x.astype(float)
    return float((xf**2 * p).sum()), float((xf**4 * p).sum())


# --- Bernoulli(exp(-gamma)) -----------------------------------------------------------------


@pytest.mark.parametrize(
    "gamma", [Fraction(1, 3), Fraction(1), Fraction(5, 2), Fraction(7, 2), Fraction(10**9 + 7, 10**9)]
)
def test_bernoulli_exp_frequency(gamma: Fraction) -> None:
    rng = SeededRandomness(b"bern" + str(gamma).encode())
    n = 20_000
    hits = sum(sample_bernoulli_exp(gamma, rng) for _ in range(n))
    p = math.exp(-float(gamma))
    assert stats.binomtest(hits, n, p).pvalue > ALPHA


def test_bernoulli_exp_edges() -> None:
    rng = SeededRandomness(3)
    assert all(sample_bernoulli_exp(0, rng) for _ in range(200))
    # exp(-60) ~ 1e-26: never seen in 2000 draws unless the sampler is broken.
    assert not any(sample_bernoulli_exp(60, rng) for _ in range(2000))


# --- discrete Laplace -----------------------------------------------------------------------


@pytest.mark.parametrize("scale", [Fraction(3, 2), Fraction(7)])
def test_discrete_laplace_pmf(scale: Fraction) -> None:
    rng = SeededRandomness(b"lap" + str(scale).encode())
    samples = [sample_discrete_laplace(scale, rng) for _ in range(20_000)]
    r = int(60 * scale) + 60
    x = np.arange(-r, r + 1)
    w = np.exp(-np.abs(x) / float(scale))
    assert chi2_pvalue_from_pmf(samples, x, w / w.sum()) > ALPHA


# --- discrete Gaussian ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_samples() -> dict[Fraction, list[int]]:
    return {
        s2: sample_discrete_gaussian_vector(s2, 20_000, SeededRandomness(b"dg-small" + str(s2).encode()))
        for s2 in SMALL
    }


@pytest.fixture(scope="module")
def large_samples() -> list[int]:
    return sample_discrete_gaussian_vector(LARGE, 5_000, SeededRandomness(b"dg-large"))


@pytest.mark.parametrize("sigma2", SMALL)
def test_dg_small_sigma_chi_square_and_ks(small_samples: dict[Fraction, list[int]], sigma2: Fraction) -> None:
    samples = small_samples[sigma2]
    support, pmf = dg_pmf(float(sigma2))
    assert chi2_pvalue_from_pmf(samples, support, pmf) > ALPHA
    assert ks_pvalue(samples, exact_cdf_small(float(sigma2))) > ALPHA


def test_dg_large_sigma_chi_square_and_ks(large_samples: list[int]) -> None:
    cdf = large_cdf(LARGE)
    assert ks_pvalue(large_samples, cdf) > ALPHA
    # Chi-square over 40 equiprobable bins with integer edges.
    s = math.sqrt(LARGE)
    edges = np.round(stats.norm.ppf(np.linspace(0, 1, 41)[1:-1]) * s).astype(np.int64)
    probs = np.diff(np.concatenate([[0.0], cdf(edges), [1.0]]))
    obs = np.bincount(np.searchsorted(edges, np.asarray(large_samples), side="left"), minlength=40)
    assert stats.chisquare(obs, probs * len(large_samples)).pvalue > ALPHA


@pytest.mark.parametrize("sigma2", SMALL)
def test_dg_gof_has_power(sigma2: Fraction) -> None:
    """The GOF test above rejects a sampler whose sigma^2 is 25% off."""
    wrong = sample_discrete_gaussian_vector(sigma2 * Fraction(5, 4), 20_000, SeededRandomness(b"power"))
    support, pmf = dg_pmf(float(sigma2))
    assert chi2_pvalue_from_pmf(wrong, support, pmf) < ALPHA


@pytest.mark.parametrize("sigma2", SMALL)
def test_dg_small_sigma_symmetry(small_samples: dict[Fraction, list[int]], sigma2: Fraction) -> None:
    samples = small_samples[sigma2]
    counts = Counter(samples)
    pos = sum(v for k, v in counts.items() if k > 0)
    neg = sum(v for k, v in counts.items() if k < 0)
    assert stats.binomtest(pos, pos + neg, 0.5).pvalue > ALPHA
    # P(X = k) = P(X = -k) for each k: given n_k + n_-k, n_k ~ Binomial(., 1/2).
    ks = [k for k in counts if k > 0 and counts[k] + counts[-k] >= 20]
    chi = sum((counts[k] - counts[-k]) ** 2 / (counts[k] + counts[-k]) for k in ks)
    assert stats.chi2.sf(chi, len(ks)) > ALPHA


def test_dg_large_sigma_symmetry(large_samples: list[int]) -> None:
    pos = sum(1 for x in large_samples if x > 0)
    neg = sum(1 for x in large_samples if x < 0)
    assert stats.binomtest(pos, pos + neg, 0.5).pvalue > ALPHA


@pytest.mark.parametrize("sigma2", SMALL)
def test_dg_small_sigma_moments(small_samples: dict[Fraction, list[int]], sigma2: Fraction) -> None:
    samples = np.asarray(small_samples[sigma2], dtype=float)
    n = len(samples)
    var, m4 = exact_variance(float(sigma2))
    assert var <= float(sigma2)  # the discrete Gaussian's variance is at most sigma^2 ...
    if sigma2 < Fraction(1, 4):
        assert var < 0.6 * float(sigma2)  # ... by a lot at sigma = 0.4, so use the exact value
    # Normal-approximation bands at 6 standard errors (two-sided tail ~2e-9).
    assert abs(samples.mean()) <= 6 * math.sqrt(var / n)
    sample_var = float(np.mean(samples**2))  # the mean is exactly 0
    assert abs(sample_var - var) <= 6 * math.sqrt((m4 - var**2) / n)


def test_dg_large_sigma_moments(large_samples: list[int]) -> None:
    x = np.asarray(large_samples, dtype=float)
    n = len(x)
    var = float(LARGE)  # within 1e-8 relative of the exact variance at sigma = 1e6
    assert abs(x.mean()) <= 6 * math.sqrt(var / n)
    assert abs(float(np.mean(x**2)) - var) <= 6 * math.sqrt(2 * var**2 / n)


def test_dg_zero_sigma_is_zero() -> None:
    rng = SeededRandomness(0)
    assert sample_discrete_gaussian(0, rng) == 0
    assert sample_discrete_gaussian(0.0) == 0
    assert sample_discrete_gaussian(Fraction(0)) == 0
    assert sample_discrete_gaussian_vector(0, 5, rng) == [0] * 5
    assert sample_discrete_gaussian_vector(9, 0, rng) == []


def test_dg_seeded_is_reproducible_and_ints() -> None:
    a = sample_discrete_gaussian_vector(Fraction(10**18, 3), 50, SeededRandomness(b"r"))
    b = sample_discrete_gaussian_vector(Fraction(10**18, 3), 50, SeededRandomness(b"r"))
    assert a == b
    assert all(type(v) is int for v in a)
    assert len(set(a)) == 50


def test_dg_default_randomness_works() -> None:
    draws = sample_discrete_gaussian_vector(4, 200)
    assert all(isinstance(v, int) for v in draws)
    assert len(set(draws)) > 3
    assert isinstance(sample_discrete_gaussian(2.5), int)


def test_float_parameters_round_up_with_bounded_denominator() -> None:
    r = to_rational(0.64)
    assert r >= Fraction(0.64)
    assert r - Fraction(0.64) < Fraction(1, 2**32)
    assert r.denominator <= 2**32
    assert to_rational(1e18) == 10**18
    assert to_rational(Fraction(2, 3)) == Fraction(2, 3)
    assert to_rational(7) == 7


@pytest.mark.parametrize("bad", [-1, -0.5, Fraction(-1, 3), float("nan"), float("inf")])
def test_bad_parameters_rejected(bad: float) -> None:
    with pytest.raises(ValueError):
        sample_discrete_gaussian(bad)


def test_bad_types_and_sizes_rejected() -> None:
    with pytest.raises(TypeError):
        sample_discrete_gaussian("1")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        sample_discrete_gaussian(True)
    with pytest.raises(ValueError):
        sample_discrete_gaussian_vector(1, -1)
    with pytest.raises(ValueError):
        sample_discrete_laplace(0)


def test_dg_large_sigma_ks_has_power() -> None:
    """The large-sigma KS check rejects a sampler whose sigma is 25% off."""
    wrong = sample_discrete_gaussian_vector(LARGE * 25 // 16, 5_000, SeededRandomness(b"power-large"))
    assert ks_pvalue(wrong, large_cdf(LARGE)) < ALPHA
