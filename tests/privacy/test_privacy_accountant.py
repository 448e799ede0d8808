"""zCDP conversions, the distributed discrete Gaussian bound and the query noise planner."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest
from scipy import optimize, stats

from xdp_compute.errors import BadRequest
from xdp_compute.privacy.accountant import (
    Measurement,
    NoisePlan,
    ddg_rho,
    ddg_tau,
    epsilon_delta_to_rho,
    plan_noise,
    rho_to_epsilon,
)
from xdp_compute.privacy.randomness import SeededRandomness
from xdp_compute.privacy.samplers import sample_discrete_gaussian_vector

RHOS = [1e-6, 1e-3, 0.02, 0.5, 3.0, 50.0]
DELTAS = [1e-5, 1e-9]


def gaussian_exact_epsilon(rho: float, delta: float) -> float:
    """Exact eps of the Gaussian mechanism with sensitivity 1 and rho = 1/(2 sigma^2)
    (Balle & Wang 2018): delta(eps) = Phi(1/(2s) - eps s) - e^eps Phi(-1/(2s) - eps s)."""
    s = 1.0 / math.sqrt(2.0 * rho)

    def f(eps: float) -> float:
        a = stats.norm.cdf(1 / (2 * s) - eps * s)
        b = math.exp(eps + stats.norm.logcdf(-1 / (2 * s) - eps * s))
        return a - b - delta

    return float(optimize.brentq(f, 0.0, 1000.0, xtol=1e-14))


@pytest.mark.parametrize("rho", RHOS)
@pytest.mark.parametrize("delta", DELTAS)
def test_rho_to_epsilon_is_valid_and_tight(rho: float, delta: float) -> None:
    eps = rho_to_epsilon(rho, delta)
    # Valid: no rho-zCDP mechanism can beat the Gaussian mechanism's exact curve.
    assert eps >= gaussian_exact_epsilon(rho, delta)
    # Tighter than the classic Bun-Steinke conversion, and close to the exact Gaussian curve.
    assert eps <= rho + 2 * math.sqrt(rho * math.log(1 / delta))
    assert eps <= 1.25 * gaussian_exact_epsilon(rho, delta)


@pytest.mark.parametrize("rho", RHOS)
def test_rho_to_epsilon_matches_brute_force_infimum(rho: float) -> None:
    delta = 1e-6
    alpha = 1.0 + np.exp(np.linspace(-12, 30, 400_001))
    eps_grid = alpha * rho + (math.log(1 / delta) - np.log(alpha)) / (alpha - 1) + np.log1p(-1 / alpha)
    brute = float(eps_grid.min())
    got = rho_to_epsilon(rho, delta)
    assert got <= brute * (1 + 1e-9) + 1e-15
    assert got >= brute * (1 - 1e-6)


def test_rho_to_epsilon_monotone() -> None:
    eps = [rho_to_epsilon(r, 1e-6) for r in np.geomspace(1e-5, 10, 60)]
    assert all(a < b for a, b in itertools.pairwise(eps))
    assert rho_to_epsilon(0.1, 1e-3) < rho_to_epsilon(0.1, 1e-9)
    assert rho_to_epsilon(0, 1e-6) == 0.0


@pytest.mark.parametrize("eps", [0.01, 0.3, 1.0, 4.0, 20.0])
@pytest.mark.parametrize("delta", [1e-5, 1e-8])
def test_epsilon_delta_to_rho_inverts(eps: float, delta: float) -> None:
    rho = epsilon_delta_to_rho(eps, delta)
    assert rho_to_epsilon(rho, delta) <= eps
    assert rho_to_epsilon(rho * (1 + 1e-8), delta) >= eps * (1 - 1e-9)
    assert rho_to_epsilon(rho, delta) >= eps * (1 - 1e-9)


@pytest.mark.parametrize(
    ("eps", "delta"),
    [
        (0, 1e-6),
        (-1, 1e-6),
        (math.inf, 1e-6),
        (math.nan, 1e-6),
        (1, 0),
        (1, 1),
        (1, 1.5),
        (1, -0.1),
        (True, 1e-6),
    ],
)
def test_conversion_rejects_bad_input(eps: float, delta: float) -> None:
    with pytest.raises(BadRequest):
        epsilon_delta_to_rho(eps, delta)


def test_rho_to_epsilon_rejects_bad_rho() -> None:
    for bad in (-1.0, math.inf, math.nan):
        with pytest.raises(BadRequest):
            rho_to_epsilon(bad, 1e-6)


# --- distributed discrete Gaussian ----------------------------------------------------------


def test_tau_formula() -> None:
    s2, n = 0.5, 4
    expected = 10 * sum(math.exp(-2 * math.pi**2 * s2 * k / (k + 1)) for k in (1, 2, 3))
    assert ddg_tau(s2, n) == pytest.approx(expected, rel=1e-15)
    assert ddg_tau(s2, 1) == 0.0
    assert ddg_tau(10.0, 50) < 1e-40


def test_ddg_single_party_is_discrete_gaussian_bound() -> None:
    # n = 1: tau = 0, the CKS 2020 discrete Gaussian bound Delta^2 / (2 sigma^2), any sigma > 0.
    assert ddg_rho(3, 3, 0.1, 1, 1) == pytest.approx(9 / 0.2)
    assert ddg_rho(3, None, 4.5, 1, 7) == pytest.approx(1.0)


def test_ddg_large_sigma_matches_gaussian_with_total_variance() -> None:
    rho = ddg_rho(5, 5, 100.0, 8, 10)
    assert rho == pytest.approx(25 / (2 * 8 * 100.0), rel=1e-12)


def test_ddg_terms_hand_computed() -> None:
    d2, d1, s2, n, d = 2.0, 3.0, 0.6, 3, 5
    tau = ddg_tau(s2, n)
    assert tau > 1e-3  # the correction matters at this small sigma
    t1 = d2**2 / (2 * n * s2) + tau * d
    t2 = 0.5 * (d2**2 / (n * s2) + 2 * d1 * tau / math.sqrt(n * s2) + tau**2 * d)
    t3 = 0.5 * (d2 / math.sqrt(n * s2) + tau * math.sqrt(d)) ** 2
    assert ddg_rho(d2, d1, s2, n, d) == pytest.approx(min(t1, t2, t3), rel=1e-14)
    assert ddg_rho(d2, None, s2, n, d) == pytest.approx(min(t1, t3), rel=1e-14)
    # The tau terms make the bound strictly worse than the ideal N_Z(0, n s2).
    assert ddg_rho(d2, d1, s2, n, d) > d2**2 / (2 * n * s2)


def test_ddg_requires_sigma_half_for_several_parties() -> None:
    assert ddg_rho(1, 1, 0.2, 2, 1) == math.inf
    assert math.isfinite(ddg_rho(1, 1, 0.25, 2, 1))


def test_ddg_monotone_in_sigma() -> None:
    values = [ddg_rho(1, 1, s2, 5, 20) for s2 in np.geomspace(0.25, 100, 80)]
    assert all(a > b for a, b in itertools.pairwise(values))


# --- planner --------------------------------------------------------------------------------

FRAC_BITS = 8
SUM_SENS = 100 * 2**FRAC_BITS


def count_sum_plan(eps: float = 1.0, delta: float = 1e-6, t: int = 3, dim: int = 5) -> NoisePlan:
    return plan_noise(
        eps,
        delta,
        [
            Measurement("count", 1, dim=dim, l1_sensitivity=1),
            Measurement("sum", SUM_SENS, dim=dim, l1_sensitivity=SUM_SENS),
        ],
        t,
    )


def test_plan_spends_within_budget_and_nearly_all_of_it() -> None:
    plan = count_sum_plan()
    budget = epsilon_delta_to_rho(1.0, 1e-6)
    assert plan.rho <= budget
    assert plan.rho >= budget * (1 - 1e-5)
    assert plan.epsilon <= 1.0
    assert plan.epsilon >= 1.0 * (1 - 1e-5)
    assert plan.delta == 1e-6
    assert plan.requested_epsilon == 1.0
    for m in plan.measurements:
        assert m.rho <= budget / 2  # equal split across the two measurements
        assert m.rho == pytest.approx(budget / 2, rel=1e-5)


def test_plan_sigma_is_calibrated_for_t_parties_and_minimal() -> None:
    t = 3
    plan = count_sum_plan(t=t)
    budget_each = epsilon_delta_to_rho(1.0, 1e-6) / 2
    for m in plan.measurements:
        assert isinstance(m.sigma_node2, Fraction)
        assert m.sigma_total2 == m.sigma_node2 * t
        rho_t = ddg_rho(m.l2_sensitivity, m.l1_sensitivity, m.sigma_node2, t, m.dim)
        assert rho_t <= budget_each
        assert rho_t == pytest.approx(m.rho)
        # 0.01% less noise would overspend: the search found the smallest sigma.
        smaller = float(m.sigma_node2) * (1 - 1e-4)
        assert ddg_rho(m.l2_sensitivity, m.l1_sensitivity, smaller, t, m.dim) > budget_each
        # With enough noise tau is negligible, so this is the Gaussian calibration.
        assert float(m.sigma_total2) == pytest.approx(m.l2_sensitivity**2 / (2 * budget_each), rel=1e-4)
    ratio = float(plan["sum"].sigma_total2 / plan["count"].sigma_total2)
    assert ratio == pytest.approx(SUM_SENS**2, rel=1e-4)


def test_plan_noise_grows_as_budget_shrinks_and_split_grows() -> None:
    big, small = count_sum_plan(eps=2.0), count_sum_plan(eps=0.5)
    assert small["count"].sigma_total2 > big["count"].sigma_total2
    three = plan_noise(1.0, 1e-6, [Measurement(n, 1) for n in ("a", "b", "c")], 3)
    one = plan_noise(1.0, 1e-6, [Measurement("a", 1)], 3)
    assert float(three["a"].sigma_total2) == pytest.approx(3 * float(one["a"].sigma_total2), rel=1e-4)


def test_plan_small_noise_regime_accounts_for_tau() -> None:
    # A huge budget pushes sigma_node below 1, where the DDG correction is not negligible.
    plan = plan_noise(60.0, 1e-6, [Measurement("count", 1, dim=1000, l1_sensitivity=1)], 10)
    m = plan["count"]
    rho_each = epsilon_delta_to_rho(60.0, 1e-6)
    assert float(m.sigma_node2) >= 0.25
    assert ddg_rho(1, 1, m.sigma_node2, 10, 1000) <= rho_each
    # Needs more noise than the ideal Gaussian N(0, sigma_total2) calibration would suggest.
    assert float(m.sigma_total2) > 1 / (2 * rho_each) * 1.01


def test_plan_single_party() -> None:
    plan = plan_noise(1.0, 1e-6, [Measurement("count", 1)], 1)
    m = plan["count"]
    assert m.sigma_total2 == m.sigma_node2
    assert m.rho == pytest.approx(1 / (2 * float(m.sigma_node2)))


def test_plan_roundtrips_through_dict_and_feeds_the_sampler() -> None:
    plan = count_sum_plan()
    again = NoisePlan.from_dict(plan.to_dict())
    assert again == plan
    assert again["sum"].sigma_node2 == plan["sum"].sigma_node2
    draws = sample_discrete_gaussian_vector(again["count"].sigma_node2, 5, SeededRandomness(1))
    assert len(draws) == 5
    with pytest.raises(KeyError):
        plan["nope"]


@pytest.mark.parametrize(
    ("eps", "delta", "measurements", "t"),
    [
        (0.0, 1e-6, [Measurement("c", 1)], 3),
        (math.inf, 1e-6, [Measurement("c", 1)], 3),
        (math.nan, 1e-6, [Measurement("c", 1)], 3),
        (1.0, 0.0, [Measurement("c", 1)], 3),
        (1.0, 1.0, [Measurement("c", 1)], 3),
        (1.0, 1e-6, [], 3),
        (1.0, 1e-6, [Measurement("c", 0)], 3),
        (1.0, 1e-6, [Measurement("c", -2)], 3),
        (1.0, 1e-6, [Measurement("c", math.inf)], 3),
        (1.0, 1e-6, [Measurement("c", 1, l1_sensitivity=0)], 3),
        (1.0, 1e-6, [Measurement("c", 2, l1_sensitivity=1)], 3),
        (1.0, 1e-6, [Measurement("c", 1, dim=0)], 3),
        (1.0, 1e-6, [Measurement("c", 1), Measurement("c", 2)], 3),
        (1.0, 1e-6, [Measurement("c", 1)], 0),
        (1.0, 1e-6, [("c", 1)], 3),
    ],
)
def test_plan_rejects_bad_input(eps: float, delta: float, measurements: list[Measurement], t: int) -> None:
    with pytest.raises(BadRequest) as info:
        plan_noise(eps, delta, measurements, t)
    assert info.value.status == 400
    assert info.value.detail


def test_remembered_calibration_is_the_calibration() -> None:
    """Issue #13: ``_calibrate_sigma_node2`` is memoised; a remembered answer equals a fresh one,
    and plans built from it are the same plans."""
    from xdp_compute.privacy import accountant

    ms = [accountant.Measurement("count", 1.0, 3, 1.0), accountant.Measurement("sum", 65536.0 * 1000, 3)]
    accountant._calibrate_sigma_node2.cache_clear()
    first = accountant.plan_noise(0.5, 1e-7, ms, 3)
    assert accountant._calibrate_sigma_node2.cache_info().misses == 2
    again = accountant.plan_noise(0.5, 1e-7, ms, 3)
    assert accountant._calibrate_sigma_node2.cache_info().hits == 2 and again == first
    rho_each = accountant.epsilon_delta_to_rho(0.5, 1e-7) / 2
    for m in ms:
        assert accountant._calibrate_sigma_node2.__wrapped__(m, rho_each, 3) == \
            accountant._calibrate_sigma_node2(m, rho_each, 3)
