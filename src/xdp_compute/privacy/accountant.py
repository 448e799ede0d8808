"""zCDP accounting and noise calibration for distributed-discrete-Gaussian SQL aggregates.

Pieces, each citing its source:

* :func:`rho_to_epsilon` / :func:`epsilon_delta_to_rho` -- the tight rho-zCDP -> (eps, delta)
  conversion of Canonne, Kamath, Steinke 2020 (arXiv 2004.00010, Corollary 13) and its inverse.
* :func:`ddg_rho` -- privacy of a sum of n independent discrete Gaussians (Kairouz, Liu,
  Steinke, "The Distributed Discrete Gaussian Mechanism for Federated Learning with Secure
  Aggregation", ICML 2021, arXiv 2102.06387, Theorem 1 / Proposition 14).
* :func:`plan_noise` -- calibrates the noise of one SQL query: one measurement per aggregate
  (COUNT, SUM, SUM of squares, ...), each a vector over GROUP BY cells.

Neighbouring datasets differ by adding or removing one row. A row lands in at most one cell of
each measurement (GROUP BY partitions rows), so a measurement's sensitivity is one cell's
sensitivity, whatever its number of cells; the number of cells only enters through the small
``tau * dim`` correction of the distributed bound.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from xdp_compute.errors import BadRequest

__all__ = [
    "Measurement",
    "MeasurementNoise",
    "NoisePlan",
    "ddg_rho",
    "ddg_tau",
    "epsilon_delta_to_rho",
    "plan_noise",
    "rho_to_epsilon",
]


# --- zCDP <-> (eps, delta) ------------------------------------------------------------------


def _check_delta(delta: float) -> None:
    if not (isinstance(delta, (int, float)) and 0.0 < delta < 1.0):
        raise BadRequest(f"delta must be a number in (0, 1), got {delta!r}")


def _eps_at_order(rho: float, log_inv_delta: float, alpha: float) -> float:
    """CKS 2020, Corollary 13, at one Renyi order alpha > 1.

    A rho-zCDP mechanism is (eps, delta)-DP for every alpha > 1 with
    eps = alpha*rho + (log(1/delta) - log(alpha)) / (alpha - 1) + log(1 - 1/alpha).
    Any single alpha gives a valid (if not optimal) eps.
    """
    am1 = alpha - 1.0
    return alpha * rho + (log_inv_delta - math.log(alpha)) / am1 + math.log1p(-1.0 / alpha)


def _best_order(rho: float, log_inv_delta: float) -> tuple[float, float]:
    """Return (alpha, eps) minimising :func:`_eps_at_order` over alpha in (1, inf).

    Coarse grid over log(alpha - 1), then golden-section refinement around the best point.
    Numerical imperfection can only make eps larger than the infimum, never invalid.
    """

    def f(u: float) -> float:
        return _eps_at_order(rho, log_inv_delta, 1.0 + math.exp(u))

    lo_u, hi_u, n = -12.0, 40.0, 209
    step = (hi_u - lo_u) / (n - 1)
    grid = [lo_u + i * step for i in range(n)]
    values = [f(u) for u in grid]
    i_best = min(range(n), key=values.__getitem__)
    a, b = grid[max(i_best - 1, 0)], grid[min(i_best + 1, n - 1)]
    invphi = (math.sqrt(5.0) - 1.0) / 2.0
    c, d = b - invphi * (b - a), a + invphi * (b - a)
    fc, fd = f(c), f(d)
    for _ in range(80):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - invphi * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + invphi * (b - a)
            fd = f(d)
    best_u, best_eps = grid[i_best], values[i_best]
    for u, val in ((c, fc), (d, fd)):
        if val < best_eps:
            best_u, best_eps = u, val
    return 1.0 + math.exp(best_u), best_eps


def rho_to_epsilon(rho: float, delta: float) -> float:
    """Smallest eps such that rho-zCDP implies (eps, delta)-DP (CKS 2020, Corollary 13).

    eps = inf_{alpha > 1} alpha*rho + (log(1/delta) - log alpha)/(alpha - 1) + log(1 - 1/alpha),
    evaluated numerically (the returned value is always a valid upper bound). Tighter than the
    classic rho + 2*sqrt(rho*log(1/delta)) of Bun-Steinke 2016.
    """
    _check_delta(delta)
    if not (isinstance(rho, (int, float)) and math.isfinite(rho) and rho >= 0):
        raise BadRequest(f"rho must be a finite number >= 0, got {rho!r}")
    if rho == 0:
        return 0.0
    _, eps = _best_order(float(rho), math.log(1.0 / delta))
    return max(eps, 0.0)


def epsilon_delta_to_rho(epsilon: float, delta: float) -> float:
    """Largest rho whose (:func:`rho_to_epsilon`) conversion at ``delta`` is <= ``epsilon``.

    Bisection on rho (the conversion is increasing in rho); the returned rho always satisfies
    ``rho_to_epsilon(rho, delta) <= epsilon``. Memoised: a pure function of its two numbers that
    the planner and every node evaluate for each query (~6 ms of bisection each time).
    """
    _check_epsilon(epsilon)
    _check_delta(delta)
    return _rho_for(float(epsilon), float(delta))


@functools.lru_cache(maxsize=4096)
def _rho_for(epsilon: float, delta: float) -> float:
    lo, hi = 0.0, max(1.0, float(epsilon))
    while rho_to_epsilon(hi, delta) <= epsilon:
        lo, hi = hi, 2.0 * hi
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if mid <= lo or mid >= hi:
            break
        if rho_to_epsilon(mid, delta) <= epsilon:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-13 * hi:
            break
    return lo


def _check_epsilon(epsilon: float) -> None:
    if not (
        isinstance(epsilon, (int, float))
        and not isinstance(epsilon, bool)
        and math.isfinite(epsilon)
        and epsilon > 0
    ):
        raise BadRequest(f"epsilon must be a finite number > 0, got {epsilon!r}")


# --- Distributed discrete Gaussian (Kairouz, Liu, Steinke 2021) -----------------------------


def ddg_tau(sigma_node2: float, n_parties: int) -> float:
    """KLS 2021, Theorem 1: tau = 10 * sum_{k=1}^{n-1} exp(-2 pi^2 sigma^2 k / (k+1)).

    Measures how far a sum of n discrete Gaussians N_Z(0, sigma^2) is from N_Z(0, n sigma^2);
    negligible (< 1e-40) once sigma^2 >= 10.
    """
    s2 = float(sigma_node2)
    return 10.0 * sum(math.exp(-2.0 * math.pi**2 * s2 * k / (k + 1)) for k in range(1, n_parties))


def ddg_rho(
    sensitivity_l2: float,
    sensitivity_l1: float | None,
    sigma_node2: float | Fraction,
    n_parties: int,
    dim: int,
) -> float:
    """zCDP rho of releasing (true vector + sum of n parties' N_Z(0, sigma_node2)^dim noise).

    Kairouz, Liu, Steinke 2021 (arXiv 2102.06387), Proposition 14 / Theorem 1: with
    tau = :func:`ddg_tau`, for all alpha >= 1 the Renyi divergence is at most alpha * rho with

        rho = min( D2^2/(2 n s^2) + tau*d,
                   (D2^2/(n s^2) + 2 D1 tau/(sqrt(n) s) + tau^2 d) / 2,     [if D1 given]
                   (D2/(sqrt(n) s) + tau sqrt(d))^2 / 2 )

    i.e. the theorem's (1/2)eps^2-concentrated DP with rho = eps^2/2. The first term's
    alpha-free ``tau*d`` is bounded by ``alpha*tau*d`` for alpha >= 1. Requires
    sigma_node >= 1/2 when n >= 2 (returns ``inf`` below that, so calibration moves away from
    it); for n = 1 it is the plain discrete Gaussian bound D2^2/(2 s^2) (CKS 2020, Thm. 4).
    Sensitivities are in the same integer units as the noise. ``sensitivity_l1=None`` skips
    the L1 term (always valid).
    """
    if n_parties < 1 or dim < 1:
        raise ValueError("n_parties and dim must be >= 1")
    if sensitivity_l2 < 0 or (sensitivity_l1 is not None and sensitivity_l1 < 0):
        raise ValueError("sensitivities must be >= 0")
    s2 = float(sigma_node2)
    if s2 <= 0:
        return math.inf
    if n_parties >= 2 and s2 < 0.25:
        return math.inf
    d2sq = float(sensitivity_l2) ** 2
    n = n_parties
    tau = ddg_tau(s2, n)
    scale = math.sqrt(n * s2)  # sqrt(n) * sigma
    terms = [
        d2sq / (2.0 * n * s2) + tau * dim,
        0.5 * (float(sensitivity_l2) / scale + tau * math.sqrt(dim)) ** 2,
    ]
    if sensitivity_l1 is not None:
        terms.append(0.5 * (d2sq / (n * s2) + 2.0 * float(sensitivity_l1) * tau / scale + tau**2 * dim))
    return min(terms)


# --- Planner --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Measurement:
    """One noisy vector a query releases (e.g. the COUNT per group), before noise.

    ``l2_sensitivity`` (and optional ``l1_sensitivity``) are in the integer units the nodes sum
    in: 1 for COUNT, max(|lo|, |hi|) * 2**frac_bits for SUM of values clipped to [lo, hi].
    ``dim`` is the number of cells (GROUP BY groups). One row changes at most one cell, so for
    such measurements l1 == l2; pass it to use the (slightly tighter) L1 term.
    """

    name: str
    l2_sensitivity: float
    dim: int = 1
    l1_sensitivity: float | None = None


@dataclass(frozen=True)
class MeasurementNoise:
    """Calibrated noise for one measurement.

    ``sigma_node2`` is what EACH node passes to the sampler, per cell; any ``t`` surviving
    shares sum to ``sigma_total2 = t * sigma_node2`` (more survivors only add noise).
    ``rho`` is this measurement's actual zCDP cost with t shares.
    """

    name: str
    l2_sensitivity: float
    l1_sensitivity: float | None
    dim: int
    sigma_total2: Fraction
    sigma_node2: Fraction
    rho: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "l2_sensitivity": self.l2_sensitivity,
            "l1_sensitivity": self.l1_sensitivity,
            "dim": self.dim,
            "sigma_total2": str(self.sigma_total2),
            "sigma_node2": str(self.sigma_node2),
            "rho": self.rho,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MeasurementNoise:
        l1 = data.get("l1_sensitivity")
        return cls(
            name=str(data["name"]),
            l2_sensitivity=float(data["l2_sensitivity"]),
            l1_sensitivity=None if l1 is None else float(l1),
            dim=int(data["dim"]),
            sigma_total2=Fraction(str(data["sigma_total2"])),
            sigma_node2=Fraction(str(data["sigma_node2"])),
            rho=float(data["rho"]),
        )


@dataclass(frozen=True)
class NoisePlan:
    """Noise for every measurement of one query, and what the query costs.

    ``epsilon``/``delta`` are the spent (eps, delta): eps is recomputed from ``rho`` and is never
    above the requested eps. Charge the ledger with these.
    """

    measurements: tuple[MeasurementNoise, ...]
    rho: float
    epsilon: float
    delta: float
    parties_threshold: int
    requested_epsilon: float
    _by_name: dict[str, MeasurementNoise] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_name", {m.name: m for m in self.measurements})

    def __getitem__(self, name: str) -> MeasurementNoise:
        """Noise of the measurement called ``name`` (KeyError if none)."""
        return self._by_name[name]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form; Fractions as exact "p/q" strings."""
        return {
            "measurements": [m.to_dict() for m in self.measurements],
            "rho": self.rho,
            "epsilon": self.epsilon,
            "delta": self.delta,
            "parties_threshold": self.parties_threshold,
            "requested_epsilon": self.requested_epsilon,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NoisePlan:
        return cls(
            measurements=tuple(MeasurementNoise.from_dict(m) for m in data["measurements"]),
            rho=float(data["rho"]),
            epsilon=float(data["epsilon"]),
            delta=float(data["delta"]),
            parties_threshold=int(data["parties_threshold"]),
            requested_epsilon=float(data["requested_epsilon"]),
        )


def _round_up_rational(x: float) -> Fraction:
    """Round x > 0 up to a Fraction with ~2^-24 relative precision and a power-of-2 denominator."""
    exp2 = math.frexp(x)[1]  # x in [2^(e-1), 2^e)
    k = max(0, 24 - exp2)
    scaled = Fraction(x) * (1 << k)
    return Fraction(math.ceil(scaled), 1 << k)


@functools.lru_cache(maxsize=1024)
def _calibrate_sigma_node2(m: Measurement, rho_target: float, t: int) -> Fraction:
    """Smallest sigma_node2 (rounded up) with ddg_rho(..., t parties) <= rho_target.

    Remembered (a pure function of hashable inputs; the answer is an immutable Fraction): the
    bisection is most of ``plan_noise``'s ~0.5 ms, which the gateway and every node run for
    each query, mostly with the same few budgets and plans (issue #13).
    """

    def rho_of(s2: float) -> float:
        return ddg_rho(m.l2_sensitivity, m.l1_sensitivity, s2, t, m.dim)

    # Every term of ddg_rho is >= D2^2/(2 t s2), so below this there is no solution.
    lo = m.l2_sensitivity**2 / (2.0 * t * rho_target)
    hi = max(lo, 0.25) * 1.0001 if t >= 2 else lo * 1.0001
    while rho_of(hi) > rho_target:
        lo, hi = hi, hi * 2.0
        if not math.isfinite(hi):
            raise BadRequest("cannot calibrate noise: the privacy budget is too small")
    # Invariant: rho_of(hi) <= rho_target (rho_of decreases in s2: tau and every term do).
    for _ in range(200):
        mid = math.sqrt(lo * hi) if lo > 0 else 0.5 * hi
        if not lo < mid < hi:
            break
        if rho_of(mid) <= rho_target:
            hi = mid
        else:
            lo = mid
        if hi - lo <= 1e-12 * hi:
            break
    s2 = _round_up_rational(hi)
    # Guard the invariant after rounding (rounding up only lowers rho; belt and braces).
    while rho_of(float(s2)) > rho_target:
        s2 = _round_up_rational(float(s2) * (1.0 + 1e-9))
    return s2


def _validate_measurements(measurements: Sequence[Measurement]) -> None:
    if not measurements:
        raise BadRequest("a query must release at least one measurement")
    seen: set[str] = set()
    for m in measurements:
        if not isinstance(m, Measurement):
            raise BadRequest(f"not a Measurement: {m!r}")
        if m.name in seen:
            raise BadRequest(f"duplicate measurement name {m.name!r}")
        seen.add(m.name)
        for label, value in (("l2_sensitivity", m.l2_sensitivity), ("l1_sensitivity", m.l1_sensitivity)):
            if value is None and label == "l1_sensitivity":
                continue
            if (
                not isinstance(value, (int, float))
                or isinstance(value, bool)
                or not math.isfinite(value)
                or value <= 0
            ):
                raise BadRequest(
                    f"measurement {m.name!r}: {label} must be a finite number > 0, got {value!r}"
                )
        if m.l1_sensitivity is not None and m.l1_sensitivity < m.l2_sensitivity * (1 - 1e-12):
            raise BadRequest(f"measurement {m.name!r}: l1_sensitivity cannot be below l2_sensitivity")
        if isinstance(m.dim, bool) or not isinstance(m.dim, int) or m.dim < 1:
            raise BadRequest(f"measurement {m.name!r}: dim must be an int >= 1, got {m.dim!r}")


def plan_noise(
    epsilon: float,
    delta: float,
    measurements: Sequence[Measurement],
    parties_threshold: int,
) -> NoisePlan:
    """Calibrate distributed discrete Gaussian noise for one query within (epsilon, delta).

    1. rho = :func:`epsilon_delta_to_rho` (epsilon, delta): the query's zCDP budget.
    2. Split rho equally: each measurement gets rho / m (zCDP composes additively). Equal rho
       means equal signal-to-noise (sigma / sensitivity) for every aggregate.
    3. For each measurement find by bisection the smallest per-node sigma_node2 such that the
       sum of only ``t = parties_threshold`` shares meets its rho share (:func:`ddg_rho` with
       n = t). More survivors add independent noise, which is post-processing, so the bound
       holds for any >= t survivors; fewer than t survivors must abort the aggregation.
    4. Report the rho actually spent (sum of the measurements', <= budget) and the eps it
       converts to (<= the requested eps).

    Raises :class:`~xdp_compute.errors.BadRequest` on invalid input.
    """
    _check_epsilon(epsilon)
    _check_delta(delta)
    if isinstance(parties_threshold, bool) or not isinstance(parties_threshold, int) or parties_threshold < 1:
        raise BadRequest(f"parties_threshold must be an int >= 1, got {parties_threshold!r}")
    _validate_measurements(measurements)

    rho_budget = epsilon_delta_to_rho(epsilon, delta)
    if rho_budget <= 0:
        raise BadRequest("the privacy budget is too small to release anything")
    rho_each = rho_budget / len(measurements)
    t = parties_threshold

    noises: list[MeasurementNoise] = []
    for m in measurements:
        s2 = _calibrate_sigma_node2(m, rho_each, t)
        rho_m = ddg_rho(m.l2_sensitivity, m.l1_sensitivity, s2, t, m.dim)
        noises.append(
            MeasurementNoise(
                name=m.name,
                l2_sensitivity=float(m.l2_sensitivity),
                l1_sensitivity=None if m.l1_sensitivity is None else float(m.l1_sensitivity),
                dim=m.dim,
                sigma_total2=s2 * t,
                sigma_node2=s2,
                rho=rho_m,
            )
        )
    rho_spent = min(sum(n.rho for n in noises), rho_budget)
    # rho_spent <= rho_budget and eps(alpha, rho) is increasing in rho for each alpha, so the
    # alpha that certified rho_budget <= epsilon also certifies rho_spent: min() is valid.
    eps_spent = min(rho_to_epsilon(rho_spent, delta), float(epsilon))
    return NoisePlan(
        measurements=tuple(noises),
        rho=rho_spent,
        epsilon=eps_spent,
        delta=float(delta),
        parties_threshold=t,
        requested_epsilon=float(epsilon),
    )
