"""Error bars for released aggregates, from the known noise distribution alone.

Every released number carries an interval (DESIGN.md). The noise is known exactly: each of the
``n_shares`` surviving nodes added N_Z(0, sigma_node2) per cell (see
:mod:`xdp_compute.privacy.accountant`). Intervals cover the *clipped* true value (the sum the
nodes computed before noise) with probability >= ``level`` over the noise, per cell (no
simultaneous coverage across cells). They are post-processing of released values and cost no
privacy.

COUNT / SUM cells (:func:`cell_interval`) -- the noise Z is a sum of n independent discrete
Gaussians, an integer with variance <= V = n * sigma_node2. The half-width is an integer k in
cell units, so the interval [raw - k, raw + k] contains the true value iff |Z| <= k:

* sigma_node2 >= 1: continuity-corrected normal, k = ceil(z * sqrt(V) - 1/2). A discrete
  Gaussian with sigma >= 1 matches the normal density sampled at the integers to ~1e-7
  relative (Poisson summation; CKS 2020), and so does a sum of them (KLS 2021, Thm. 1). The exact
  coverage P(|Z| <= k), computed by convolution in the tests, is >= level on the tested grid
  (sigma_node2 in [1, 100], n <= 10, level in [0.5, 0.999]).
* sigma_node2 < 1: no approximation. N_Z(0, s^2) is s^2-subgaussian (shown in CKS 2020), so
  Z is V-subgaussian and P(|Z| >= x) <= 2 exp(-x^2 / (2V)) (Chernoff). Z being an integer,
  P(|Z| > k) = P(|Z| >= k + 1) <= 1 - level once k + 1 >= sqrt(2 V ln(2 / (1 - level))).
  Always valid, somewhat conservative.

AVG / VARIANCE / STDDEV (:func:`avg_interval`, :func:`variance_interval`,
:func:`stddev_interval`) -- ratios of noisy cells, given by the delta method with plug-in
estimates and the cells' independent noise variances, then intersected with what the declared
bounds [lo, hi] of the column allow (AVG in [lo, hi]; VARIANCE in [0, ((hi - lo)/2)^2],
Popoviciu's inequality). Clipping an interval to a set that holds the true value never lowers
coverage. When the noisy COUNT is not clearly positive (its own interval reaches 0) the ratio
is meaningless and the interval is the whole allowed range (``method="bounds"``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction
from statistics import NormalDist

from xdp_compute.errors import BadRequest
from xdp_compute.privacy.accountant import NoisePlan

__all__ = [
    "Interval",
    "NoisyCell",
    "avg_interval",
    "cell_interval",
    "expected_avg_error",
    "expected_error",
    "noise_halfwidth",
    "stddev_interval",
    "variance_interval",
    "z_score",
]


@dataclass(frozen=True)
class NoisyCell:
    """One released cell: the noisy integer total and what is known about its noise.

    ``raw`` is the unmasked sum in integer units; ``scale`` is the real value of one unit
    (1 for COUNT, 2**-frac_bits for SUM, 2**-(2*frac_bits) for SUM of squares).
    ``n_shares`` is the number of nodes whose noise share is in the total (the survivors).
    """

    raw: int
    sigma_node2: float | Fraction
    n_shares: int
    scale: float = 1.0

    @property
    def value(self) -> float:
        """The noisy value in real units."""
        return self.raw * self.scale

    @property
    def noise_variance(self) -> float:
        """Upper bound on the noise variance, real units (n * sigma_node2 * scale^2)."""
        return self.n_shares * float(self.sigma_node2) * self.scale**2


@dataclass(frozen=True)
class Interval:
    """An estimate with its interval ``[low, high]`` at confidence ``level``.

    ``method`` says how it was derived: "normal", "subgaussian" (noise cells), "delta"
    (ratios) or "bounds" (no information beyond the declared bounds).
    """

    estimate: float
    low: float
    high: float
    level: float
    method: str

    def contains(self, x: float) -> bool:
        return self.low <= x <= self.high


def _check_level(level: float) -> None:
    if not (isinstance(level, (int, float)) and 0.0 < level < 1.0):
        raise BadRequest(f"confidence level must be in (0, 1), got {level!r}")


def z_score(level: float = 0.95) -> float:
    """Two-sided standard normal quantile: P(|N(0,1)| <= z) = level (1.95996... at 0.95)."""
    _check_level(level)
    return NormalDist().inv_cdf(0.5 + level / 2.0)


def noise_halfwidth(sigma_node2: float | Fraction, n_shares: int, level: float = 0.95) -> int:
    """Integer k with P(|Z| <= k) >= level for Z = sum of n_shares N_Z(0, sigma_node2) draws.

    See the module docstring for the two regimes (continuity-corrected normal when
    sigma_node2 >= 1, subgaussian tail bound below).
    """
    _check_level(level)
    if n_shares < 0:
        raise ValueError("n_shares must be >= 0")
    s2 = float(sigma_node2)
    if s2 < 0:
        raise ValueError("sigma_node2 must be >= 0")
    variance = n_shares * s2
    if variance == 0:
        return 0
    if s2 >= 1.0:
        return max(0, math.ceil(z_score(level) * math.sqrt(variance) - 0.5))
    tail = math.sqrt(2.0 * variance * math.log(2.0 / (1.0 - level)))
    return max(0, math.ceil(tail) - 1)


def _clip(x: float, lo: float | None, hi: float | None) -> float:
    if lo is not None and x < lo:
        return lo
    if hi is not None and x > hi:
        return hi
    return x


def cell_interval(
    cell: NoisyCell,
    level: float = 0.95,
    *,
    lower: float | None = None,
    upper: float | None = None,
) -> Interval:
    """Interval for a COUNT or SUM cell (real units).

    ``lower``/``upper`` are known limits of the true value (e.g. ``lower=0`` for a COUNT);
    the interval and the estimate are clipped to them (post-processing; coverage unchanged).
    """
    k = noise_halfwidth(cell.sigma_node2, cell.n_shares, level)
    method = "normal" if float(cell.sigma_node2) >= 1.0 else "subgaussian"
    low = (cell.raw - k) * cell.scale
    high = (cell.raw + k) * cell.scale
    low, high = _clip(low, lower, upper), _clip(high, lower, upper)
    return Interval(_clip(cell.value, lower, upper), low, high, level, method)


def _check_bounds(bounds: tuple[float, float]) -> tuple[float, float]:
    lo, hi = float(bounds[0]), float(bounds[1])
    if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
        raise BadRequest(f"column bounds must be finite with min <= max, got {bounds!r}")
    return lo, hi


def _count_is_informative(count: NoisyCell, z: float) -> bool:
    return count.value - z * math.sqrt(count.noise_variance) > 0 and count.value > 0


def avg_interval(
    sum_cell: NoisyCell,
    count_cell: NoisyCell,
    bounds: tuple[float, float],
    level: float = 0.95,
) -> Interval:
    """Interval for AVG = SUM / COUNT of a column clipped to ``bounds`` = (min, max).

    Delta method: Var(S/C) ~ (Var_S + A^2 Var_C) / C^2 with the plug-in A = S/C clipped to the
    bounds; the result is intersected with [min, max].
    """
    lo, hi = _check_bounds(bounds)
    z = z_score(level)
    if not _count_is_informative(count_cell, z):
        estimate = _clip(sum_cell.value / count_cell.value, lo, hi) if count_cell.value > 0 else (lo + hi) / 2
        return Interval(estimate, lo, hi, level, "bounds")
    c = count_cell.value
    a = _clip(sum_cell.value / c, lo, hi)
    sd = math.sqrt(sum_cell.noise_variance + a * a * count_cell.noise_variance) / c
    return Interval(a, max(lo, a - z * sd), min(hi, a + z * sd), level, "delta")


def variance_interval(
    sumsq_cell: NoisyCell,
    sum_cell: NoisyCell,
    count_cell: NoisyCell,
    bounds: tuple[float, float],
    level: float = 0.95,
) -> Interval:
    """Interval for the population VARIANCE = SUMSQ/C - (SUM/C)^2 of a clipped column.

    Delta method with gradient (1, -2 m1, 2 m1^2 - m2) / C w.r.t. (SUMSQ, SUM, COUNT), where
    m1 = SUM/C and m2 = SUMSQ/C are plug-ins clipped to what the bounds allow; the interval is
    intersected with [0, ((max - min)/2)^2].
    """
    lo, hi = _check_bounds(bounds)
    vmax = ((hi - lo) / 2.0) ** 2
    z = z_score(level)
    if not _count_is_informative(count_cell, z):
        return Interval(vmax / 2.0, 0.0, vmax, level, "bounds")
    c = count_cell.value
    m1 = _clip(sum_cell.value / c, lo, hi)
    m2 = _clip(sumsq_cell.value / c, 0.0, max(lo * lo, hi * hi))
    estimate = _clip(sumsq_cell.value / c - (sum_cell.value / c) ** 2, 0.0, vmax)
    var = (
        sumsq_cell.noise_variance
        + 4.0 * m1 * m1 * sum_cell.noise_variance
        + (2.0 * m1 * m1 - m2) ** 2 * count_cell.noise_variance
    ) / (c * c)
    sd = math.sqrt(var)
    return Interval(estimate, max(0.0, estimate - z * sd), min(vmax, estimate + z * sd), level, "delta")


def stddev_interval(
    sumsq_cell: NoisyCell,
    sum_cell: NoisyCell,
    count_cell: NoisyCell,
    bounds: tuple[float, float],
    level: float = 0.95,
) -> Interval:
    """Interval for STDDEV = sqrt(VARIANCE): the square root of :func:`variance_interval`.

    sqrt is increasing, so the endpoints map exactly (same coverage as the VARIANCE interval);
    unlike a delta method on sqrt it stays sensible near a variance of 0.
    """
    v = variance_interval(sumsq_cell, sum_cell, count_cell, bounds, level)
    return Interval(math.sqrt(v.estimate), math.sqrt(v.low), math.sqrt(v.high), level, v.method)


def expected_error(
    plan: NoisePlan,
    *,
    level: float = 0.95,
    n_shares: int | None = None,
    scales: Mapping[str, float] | None = None,
) -> dict[str, float]:
    """Half-width of each measurement's cell interval, in real units, for a dry run.

    It depends only on the noise, not on the data, so it is exact for COUNT and SUM cells.
    ``n_shares`` is the number of surviving nodes assumed (default: the plan's threshold t,
    the least noise any completed run can have; pass the node count for the no-dropout case).
    ``scales`` maps a measurement name to the real value of one integer unit (default 1.0).
    """
    shares = plan.parties_threshold if n_shares is None else n_shares
    scales = scales or {}
    return {
        m.name: noise_halfwidth(m.sigma_node2, shares, level) * float(scales.get(m.name, 1.0))
        for m in plan.measurements
    }


def expected_avg_error(
    plan: NoisePlan,
    sum_name: str,
    count_name: str,
    *,
    bounds: tuple[float, float],
    assumed_count: float | None,
    level: float = 0.95,
    n_shares: int | None = None,
    sum_scale: float = 1.0,
) -> float | None:
    """Expected half-width of an AVG interval if the group had ``assumed_count`` rows.

    AVG error depends on the unknown true count, so without an assumed count this returns
    None. With one, it is the delta-method half-width z * sqrt(Var_S + A^2 Var_C) / count at
    the worst mean A = max(|min|, |max|), capped at (max - min)/2 (the clipped interval can be
    no wider than the bounds).
    """
    lo, hi = _check_bounds(bounds)
    z = z_score(level)
    if assumed_count is None:
        return None
    if not assumed_count > 0:
        raise BadRequest(f"assumed_count must be > 0, got {assumed_count!r}")
    shares = plan.parties_threshold if n_shares is None else n_shares
    var_s = shares * float(plan[sum_name].sigma_node2) * sum_scale**2
    var_c = shares * float(plan[count_name].sigma_node2)
    a = max(abs(lo), abs(hi))
    return min((hi - lo) / 2.0, z * math.sqrt(var_s + a * a * var_c) / assumed_count)
