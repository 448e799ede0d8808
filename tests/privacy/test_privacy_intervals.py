"""Error bars: exact coverage of the noise half-width, derived statistics, simulated coverage."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from scipy import stats

from xdp_compute.errors import BadRequest
from xdp_compute.privacy.accountant import Measurement, plan_noise
from xdp_compute.privacy.intervals import (
    NoisyCell,
    avg_interval,
    cell_interval,
    expected_avg_error,
    expected_error,
    noise_halfwidth,
    stddev_interval,
    variance_interval,
    z_score,
)
from xdp_compute.privacy.randomness import SeededRandomness
from xdp_compute.privacy.samplers import sample_discrete_gaussian

# --- exact coverage of the integer half-width -----------------------------------------------


def sum_of_dg_pmf(sigma2: float, n: int) -> np.ndarray:
    """Exact pmf of a sum of n independent N_Z(0, sigma2), centred at index len // 2."""
    r = int(40 * math.sqrt(sigma2)) + 40
    x = np.arange(-r, r + 1, dtype=float)
    p = np.exp(-(x**2) / (2 * sigma2))
    p /= p.sum()
    out = np.array([1.0])
    for _ in range(n):
        out = np.convolve(out, p)
    return out


GRID = [
    (s2, n) for n in (1, 2, 3, 5, 10) for s2 in (0.05, 0.3, 0.7, 0.99, 1.0, 1.3, 2.0, 3.7, 10.0, 41.0, 100.0)
]


@pytest.mark.parametrize("level", [0.5, 0.9, 0.95, 0.99, 0.999])
def test_halfwidth_exact_coverage(level: float) -> None:
    for s2, n in GRID:
        pmf = sum_of_dg_pmf(s2, n)
        c = len(pmf) // 2
        k = noise_halfwidth(s2, n, level)
        coverage = pmf[c - k : c + k + 1].sum()
        assert coverage >= level, (s2, n, k, coverage)
        if s2 >= 10:
            # Normal regime is not needlessly wide: at most one step above the exact minimum.
            assert pmf[c - k + 2 : c + k - 1].sum() < level, (s2, n, k)


def test_halfwidth_regimes_and_edges() -> None:
    assert noise_halfwidth(0, 3) == 0
    assert noise_halfwidth(5, 0) == 0
    z = z_score(0.95)
    assert z == pytest.approx(1.959963984540054, rel=1e-12)
    v = 3 * 1e6
    assert noise_halfwidth(1e6, 3) == math.ceil(z * math.sqrt(v) - 0.5)
    # Below sigma_node = 1: subgaussian bound sqrt(2 V ln(2 / 0.05)), integer-rounded.
    assert noise_halfwidth(0.5, 4) == math.ceil(math.sqrt(2 * 2.0 * math.log(40))) - 1
    with pytest.raises(BadRequest):
        z_score(1.0)
    with pytest.raises(BadRequest):
        noise_halfwidth(1, 1, level=0)


# --- single cells and derived statistics ----------------------------------------------------


def test_cell_interval_units_and_clipping() -> None:
    cell = NoisyCell(raw=1000 * 256, sigma_node2=Fraction(10**6), n_shares=3, scale=1 / 256)
    iv = cell_interval(cell)
    k = noise_halfwidth(10**6, 3)
    assert iv.estimate == pytest.approx(1000.0)
    assert iv.low == pytest.approx(1000 - k / 256)
    assert iv.high == pytest.approx(1000 + k / 256)
    assert iv.method == "normal"
    assert iv.contains(1000.0)
    count = NoisyCell(raw=-2, sigma_node2=16, n_shares=3)
    civ = cell_interval(count, lower=0)
    assert civ.low == 0 and civ.estimate == 0 and civ.high == -2 + noise_halfwidth(16, 3)
    assert cell_interval(NoisyCell(5, 0.5, 3)).method == "subgaussian"


BOUNDS = (0.0, 100.0)


def test_avg_interval_delta_method() -> None:
    s = NoisyCell(raw=50_000 * 256, sigma_node2=4e8, n_shares=3, scale=1 / 256)
    c = NoisyCell(raw=1000, sigma_node2=50, n_shares=3)
    iv = avg_interval(s, c, BOUNDS)
    var_s, var_c = 3 * 4e8 / 256**2, 150.0
    sd = math.sqrt(var_s + 50.0**2 * var_c) / 1000
    assert iv.estimate == pytest.approx(50.0)
    assert iv.high - iv.estimate == pytest.approx(z_score(0.95) * sd)
    assert iv.method == "delta"
    # A lower level gives a narrower interval.
    assert avg_interval(s, c, BOUNDS, level=0.5).high < iv.high


def test_avg_interval_clips_to_bounds_and_falls_back() -> None:
    c = NoisyCell(raw=10, sigma_node2=50, n_shares=3)
    s = NoisyCell(raw=990 * 256, sigma_node2=4e8, n_shares=3, scale=1 / 256)
    iv = avg_interval(s, c, BOUNDS)  # count 10 +- ~24: not informative
    assert (iv.low, iv.high, iv.method) == (0.0, 100.0, "bounds")
    assert iv.estimate == 99.0
    iv = avg_interval(s, NoisyCell(raw=-3, sigma_node2=50, n_shares=3), BOUNDS)
    assert (iv.low, iv.high, iv.estimate) == (0.0, 100.0, 50.0)
    near_top = avg_interval(
        NoisyCell(raw=99_900 * 256, sigma_node2=4e8, n_shares=3, scale=1 / 256),
        NoisyCell(raw=1000, sigma_node2=50, n_shares=3),
        BOUNDS,
    )
    assert near_top.high == 100.0 and near_top.low < 99.9
    with pytest.raises(BadRequest):
        avg_interval(s, c, (5.0, 1.0))


def test_variance_and_stddev_intervals() -> None:
    c = NoisyCell(raw=2000, sigma_node2=50, n_shares=3)
    s = NoisyCell(raw=100_000, sigma_node2=1e4, n_shares=3)  # mean 50
    q = NoisyCell(raw=5_800_000, sigma_node2=1e6, n_shares=3)  # E[x^2] 2900 -> var 400
    v = variance_interval(q, s, c, BOUNDS)
    assert v.estimate == pytest.approx(400.0)
    assert 0 <= v.low < 400 < v.high <= 2500
    sd = stddev_interval(q, s, c, BOUNDS)
    assert sd.estimate == pytest.approx(20.0)
    assert sd.low == pytest.approx(math.sqrt(v.low)) and sd.high == pytest.approx(math.sqrt(v.high))
    # Popoviciu: the variance of values in [0, 100] is at most 50^2.
    wild = variance_interval(NoisyCell(raw=10**8, sigma_node2=1e6, n_shares=3), s, c, BOUNDS)
    assert wild.estimate == 2500.0 and wild.high == 2500.0
    lost = variance_interval(q, s, NoisyCell(raw=0, sigma_node2=50, n_shares=3), BOUNDS)
    assert (lost.low, lost.high, lost.method) == (0.0, 2500.0, "bounds")


# --- expected error for dry runs ------------------------------------------------------------


def test_expected_error_matches_plan() -> None:
    plan = plan_noise(
        1.0, 1e-6, [Measurement("count", 1, l1_sensitivity=1), Measurement("sum", 100 * 256)], 3
    )
    err = expected_error(plan, scales={"sum": 1 / 256})
    assert err["count"] == noise_halfwidth(plan["count"].sigma_node2, 3)
    assert err["sum"] == pytest.approx(noise_halfwidth(plan["sum"].sigma_node2, 3) / 256)
    more = expected_error(plan, n_shares=5)
    assert more["count"] > err["count"]
    assert expected_avg_error(plan, "sum", "count", bounds=BOUNDS, assumed_count=None) is None
    a100 = expected_avg_error(plan, "sum", "count", bounds=BOUNDS, assumed_count=100, sum_scale=1 / 256)
    a10k = expected_avg_error(plan, "sum", "count", bounds=BOUNDS, assumed_count=10_000, sum_scale=1 / 256)
    assert a100 is not None and a10k is not None
    assert a10k == pytest.approx(a100 / 100)
    tiny = expected_avg_error(plan, "sum", "count", bounds=BOUNDS, assumed_count=1, sum_scale=1 / 256)
    assert tiny == 50.0  # capped at half the range
    with pytest.raises(BadRequest):
        expected_avg_error(plan, "sum", "count", bounds=BOUNDS, assumed_count=0)


# --- simulated coverage: 3 parties, 400 repetitions -----------------------------------------

N_PARTIES, REPS, FRAC_BITS = 3, 400, 8
LO, HI = 0.0, 100.0
ALPHA_EACH = 1e-7  # 10 binomial checks below: < 1e-6 overall for a correct implementation


@pytest.fixture(scope="module")
def simulation() -> dict[str, list[tuple[float, dict[float, tuple[float, float]]]]]:
    """Run REPS federated queries; return per statistic the true value and intervals by level."""
    unit = 2**FRAC_BITS
    plan = plan_noise(
        1.0,
        1e-6,
        [
            Measurement("count", 1, l1_sensitivity=1),
            Measurement("sum", HI * unit, l1_sensitivity=HI * unit),
            Measurement("sumsq", HI**2 * unit**2, l1_sensitivity=HI**2 * unit**2),
        ],
        N_PARTIES,
    )
    data_rng = np.random.default_rng(20240611)
    noise_rng = SeededRandomness(b"interval-coverage")
    scales = {"count": 1.0, "sum": 1.0 / unit, "sumsq": 1.0 / unit**2}
    out: dict[str, list[tuple[float, dict[float, tuple[float, float]]]]] = {
        k: [] for k in ("count", "sum", "avg", "variance", "stddev")
    }
    for _ in range(REPS):
        totals = {"count": 0, "sum": 0, "sumsq": 0}
        noisy = {"count": 0, "sum": 0, "sumsq": 0}
        for _party in range(N_PARTIES):
            n_rows = int(data_rng.integers(200, 1500))
            values = np.clip(data_rng.normal(60.0, 25.0, n_rows), LO, HI)
            fixed = np.round(values * unit).astype(np.int64)  # fixed point, clipped
            local = {"count": n_rows, "sum": int(fixed.sum()), "sumsq": int((fixed * fixed).sum())}
            for name, value in local.items():
                totals[name] += value
                noisy[name] += value + sample_discrete_gaussian(plan[name].sigma_node2, noise_rng)
        cells = {
            name: NoisyCell(noisy[name], plan[name].sigma_node2, N_PARTIES, scales[name]) for name in noisy
        }
        true_count = totals["count"]
        true_sum = totals["sum"] / unit
        true_avg = true_sum / true_count
        true_var = totals["sumsq"] / unit**2 / true_count - true_avg**2
        by_level: dict[str, dict[float, tuple[float, float]]] = {k: {} for k in out}
        for level in (0.95, 0.5):
            for name, iv in (
                ("count", cell_interval(cells["count"], level, lower=0)),
                ("sum", cell_interval(cells["sum"], level)),
                ("avg", avg_interval(cells["sum"], cells["count"], (LO, HI), level)),
                (
                    "variance",
                    variance_interval(cells["sumsq"], cells["sum"], cells["count"], (LO, HI), level),
                ),
                ("stddev", stddev_interval(cells["sumsq"], cells["sum"], cells["count"], (LO, HI), level)),
            ):
                by_level[name][level] = (iv.low, iv.high)
        truths = {
            "count": float(true_count),
            "sum": true_sum,
            "avg": true_avg,
            "variance": true_var,
            "stddev": math.sqrt(true_var),
        }
        for name, rows in out.items():
            rows.append((truths[name], by_level[name]))
    return out


@pytest.mark.parametrize("stat", ["count", "sum", "avg", "variance"])
@pytest.mark.parametrize("level", [0.95, 0.5])
def test_simulated_coverage(
    simulation: dict[str, list[tuple[float, dict[float, tuple[float, float]]]]], stat: str, level: float
) -> None:
    hits = sum(lo <= truth <= hi for truth, ivs in simulation[stat] for lo, hi in [ivs[level]])
    # Lower band: coverage >= level (exactly so for COUNT/SUM; delta method for ratios).
    assert hits >= stats.binom.ppf(ALPHA_EACH, REPS, level)
    # Upper band (informative at level 0.5): intervals are not needlessly wide. COUNT/SUM round
    # the half-width up to an integer, which adds a few points of coverage at this noise level.
    assert hits <= stats.binom.isf(ALPHA_EACH, REPS, min(1.0, level + 0.05))


def test_simulated_stddev_coverage_equals_variance(
    simulation: dict[str, list[tuple[float, dict[float, tuple[float, float]]]]],
) -> None:
    for level in (0.95, 0.5):
        v = [lo <= t <= hi for t, ivs in simulation["variance"] for lo, hi in [ivs[level]]]
        s = [lo <= t <= hi for t, ivs in simulation["stddev"] for lo, hi in [ivs[level]]]
        assert v == s
