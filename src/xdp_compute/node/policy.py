"""The node's own noise policy: the noise a query task must carry here, recomputed (issue #12).

The gateway calibrates each query's distributed discrete Gaussian noise and sends every node its
share ``sigma_node2``; a node that added whatever it was sent gave exact counts to a gateway that
sent ``0/1``. So the node recomputes the calibration itself, from inputs it checks or owns:

- the plan, re-derived from its SQL against this node's own manifest (``validate_plan_for``),
  which fixes every measurement's sensitivity and number of cells;
- the (epsilon, delta) the task declares (``NoiseBasis``); the node charges its own ledger with
  what its calibration at that (epsilon, delta) spends, so declaring a larger epsilon to get
  less noise costs this node's budget accordingly;
- the secure-aggregation session's threshold t and roster size n (the very session the node
  Shamir-shares its seeds in: fewer than t survivors cannot unmask), and this node's own
  collusion margin c (manifest ``[node] max_colluding_nodes``; by default the gateway's
  default, 1 once n >= 3): the noise must hold with ``t - c`` honest shares (Kairouz, Liu,
  Steinke 2021 §5), whatever margin the gateway claims.

It then runs the same ``plan_noise`` and refuses a task whose ``sigma_node2`` is below its own for
any measurement — compared exactly, as Fractions. More noise than needed is accepted.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from fractions import Fraction

from xdp_compute.contract import NoiseBasis, SecAggSession
from xdp_compute.domain.manifest import DatasetSpec
from xdp_compute.domain.policy import NoiseShares, noise_shares
from xdp_compute.errors import BadRequest
from xdp_compute.privacy import Measurement, NoisePlan, plan_noise
from xdp_compute.query import QueryPlan

# The same slack as the gateway's per-query cap check (``domain.policy.evaluate``).
CAP_SLACK = 1e-12


class NoiseShortfall(BadRequest):
    """A task asks this node to add less noise than its own policy requires."""

    slug, title = "noise-shortfall", "Too little noise for the node's policy"


def measurements_of(plan: QueryPlan) -> list[Measurement]:
    """The calibration inputs of a plan: one measurement per aggregate, its sensitivity per cell
    (the same inputs as the gateway's planner, ``QueryService.prepare``)."""
    return [Measurement(name=mm.key, l2_sensitivity=mm.sensitivity, dim=len(plan.cells),
                        l1_sensitivity=mm.sensitivity) for mm in plan.measurements]


def own_noise_shares(session: SecAggSession, basis: NoiseBasis, max_colluding_nodes: int | None) -> NoiseShares:
    """Honest parties by this node's policy, in the worst case over the survivors.

    Any ``t`` surviving nodes span at least ``k`` parties, the fewest whose largest groups of
    nodes reach ``t`` (parties as declared in ``basis.parties``; an undeclared node is a party of
    its own); up to ``c`` of them collude (this node's margin; by default the gateway's default,
    1 once the roster has 3 or more parties), so ``k - c`` honest parties' shares carry the noise.
    """
    declared = basis.parties or {}
    members = sorted(set(session.participants))
    sizes = sorted(Counter(declared.get(u, f"node:{u}") for u in members).values(), reverse=True)
    k, covered = 0, 0
    for size in sizes:
        if covered >= session.threshold:
            break
        k, covered = k + 1, covered + size
    margin = noise_shares(len(sizes), k, max_colluding_nodes)
    return NoiseShares(len(sizes), k, margin.colluding)


def required_noise(plan: QueryPlan, basis: NoiseBasis, session: SecAggSession,
                   max_colluding_nodes: int | None) -> tuple[NoisePlan, NoiseShares]:
    """The noise this node's policy requires for ``plan`` at the declared (epsilon, delta)."""
    shares = own_noise_shares(session, basis, max_colluding_nodes)
    if shares.honest < 1:
        raise NoiseShortfall(f"this node tolerates {shares.colluding} colluding node(s); a secure-aggregation "
                             f"threshold of {session.threshold} node(s) ({shares.threshold} of {shares.nodes} "
                             "parties) leaves no honest noise share: "
                             "refused")
    return plan_noise(basis.epsilon, basis.delta, measurements_of(plan), shares.honest), shares


def _approx(f: Fraction) -> str:
    return f"{f.numerator}/{f.denominator} (~{float(f):.6g})"


def check_noise(required: NoisePlan, offered: Mapping[str, Fraction], shares: NoiseShares,
                basis: NoiseBasis) -> None:
    """Refuse ``offered`` if any measurement's variance is below ``required`` (exact comparison)."""
    short = []
    for m in required.measurements:
        got = offered.get(m.name)
        if got is None:
            raise NoiseShortfall(f"the task carries no noise scale for measurement {m.name!r}")
        if Fraction(got) < m.sigma_node2:
            short.append(f"{m.name!r}: sent sigma_node2 {_approx(Fraction(got))}, needs at least "
                         f"{_approx(m.sigma_node2)}")
    if short:
        raise NoiseShortfall(
            "too little noise for this node's policy — " + "; ".join(short)
            + f" (epsilon {basis.epsilon:g}, delta {basis.delta:g}: {shares.honest} honest share(s) — any "
            f"survivors span {shares.threshold} of the {shares.nodes} parties, {shares.colluding} colluding "
            f"tolerated by this node; the gateway counted on {basis.honest_shares}): refused, nothing computed")


def check_query_task(ds: DatasetSpec, plan: QueryPlan, sigma_node2: Mapping[str, Fraction],
                     basis: NoiseBasis | None, session: SecAggSession,
                     max_colluding_nodes: int | None) -> NoisePlan:
    """Everything this node checks of a query task before it reads a row; returns its own noise plan
    (whose (epsilon, delta) it charges). Public inputs only: a refusal cannot depend on the data."""
    if basis is None:
        raise NoiseShortfall("this node enforces its own noise policy: the task must declare the epsilon and "
                             "delta its noise was calibrated for (noise_basis); refused")
    required, shares = required_noise(plan, basis, session, max_colluding_nodes)
    if required.epsilon > ds.max_epsilon_per_query + CAP_SLACK:
        raise BadRequest(f"epsilon {required.epsilon:g} exceeds this node's per-query cap "
                         f"{ds.max_epsilon_per_query:g} for {ds.name!r} (manifest max_epsilon_per_query): refused")
    check_noise(required, sigma_node2, shares, basis)
    return required


__all__ = ["NoiseShortfall", "check_noise", "check_query_task", "measurements_of", "own_noise_shares",
           "required_noise"]
