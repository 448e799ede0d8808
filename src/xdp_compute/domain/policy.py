"""Dataset policy decisions for one job (pure): who may compute what, where, at which cost.

Every check yields a ``Decision`` with the rule's name and its reason, allowed or not, so a dry
run, a holder's approval screen and the release log all show the same reasoning.

The observable rule (DESIGN.md; issue #11): everything a principal other than the holder can
observe -- result, charge, remaining budget, progress, participation, model card, error,
refusal, refund -- is a function of public inputs (the plan, the manifests, declared metadata,
this policy) or is itself released through a charged DP mechanism. Every decision here takes
public inputs only (never a row, a count or a node's answer), and noise scales come from the
holders' declared bounds and this policy, never from a number the analyst chose.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from xdp_compute.domain.manifest import DatasetSpec
from xdp_compute.errors import PolicyDenied


@dataclass(frozen=True)
class Decision:
    rule: str
    allowed: bool
    reason: str
    node: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Requester:
    name: str
    role: str
    region: str


@dataclass(frozen=True)
class NodePart:
    """What policy needs to know of one node's part of a dataset."""

    node: str
    region: str
    spec: DatasetSpec
    epsilon_left: float
    delta_left: float


def evaluate(parts: list[NodePart], who: Requester, epsilon: float, delta: float, *,
             restricted_categories: tuple[str, ...], output: str) -> list[Decision]:
    """All policy decisions for ``who`` computing ``output`` over ``parts`` at (epsilon, delta)."""
    out: list[Decision] = []
    spec = parts[0].spec
    out.append(Decision("role", who.role in ("analyst",), f"principal {who.name!r} has role {who.role!r}"
                        + ("" if who.role == "analyst" else "; only analysts submit jobs")))
    if spec.classification == "core":
        out.append(Decision("classification", False,
                            "classification 'core' data is never released, not even as aggregates"))
    else:
        out.append(Decision("classification", True, f"classification {spec.classification!r} allows DP "
                                                     f"{output} releases"))
    for p in parts:
        s = p.spec
        if s.allowed_analysts is not None:
            ok = who.name in s.allowed_analysts
            out.append(Decision("allowed_analysts", ok, f"{who.name!r} is {'' if ok else 'not '}on the "
                                                        "allowed-analyst list", node=p.node))
        if s.allowed_regions is not None:
            ok = who.region in s.allowed_regions
            out.append(Decision("allowed_regions", ok, f"analyst region {who.region!r} is {'' if ok else 'not '}"
                                                       f"in {list(s.allowed_regions)}", node=p.node))
        restricted = sorted(set(s.categories) & set(restricted_categories))
        if restricted:
            ok = who.region == p.region
            out.append(Decision(
                "cross_border", ok,
                f"categories {restricted} are on the cross-border negative list; analyst region {who.region!r} "
                + ("matches" if ok else "differs from") + f" node region {p.region!r}", node=p.node))
        if epsilon > s.epsilon_budget + 1e-12:
            out.append(Decision("epsilon_cap", False, f"epsilon {epsilon:g} exceeds the dataset's whole budget "
                                                      f"{s.epsilon_budget:g} on this node", node=p.node))
        elif epsilon > s.max_epsilon_per_query + 1e-12:
            # The cap is the holder's declared policy, so this refusal depends on public inputs only.
            out.append(Decision("epsilon_cap", False, f"epsilon {epsilon:g} exceeds the per-query cap "
                                                      f"{s.max_epsilon_per_query:g} of this dataset "
                                                      "(manifest max_epsilon_per_query)", node=p.node))
        elif epsilon > p.epsilon_left + 1e-9 or delta > p.delta_left + 1e-15:
            out.append(Decision("budget", False, f"budget left epsilon={max(p.epsilon_left, 0):g}, "
                                                 f"delta={max(p.delta_left, 0):g} cannot afford epsilon={epsilon:g}, "
                                                 f"delta={delta:g}", node=p.node))
        else:
            out.append(Decision("budget", True, f"epsilon={epsilon:g} of {p.epsilon_left:g} left", node=p.node))
        if s.require_approval:
            out.append(Decision("approval", True, "the holder requires manual approval before computation",
                                node=p.node))
    return out


def enforce(decisions: list[Decision]) -> None:
    """Raise PolicyDenied (or BudgetExhausted) naming the first rule that denies."""
    from xdp_compute.errors import BudgetExhausted

    for d in decisions:
        if not d.allowed:
            where = f" (node {d.node})" if d.node else ""
            cls = BudgetExhausted if d.rule == "budget" else PolicyDenied
            raise cls(f"denied by rule {d.rule!r}{where}: {d.reason}", rule=d.rule,
                      decisions=[x.to_dict() for x in decisions])


def check_privacy_params(epsilon: Any, delta: Any, default_delta: float) -> tuple[float, float]:
    """Validate user-given (epsilon, delta); raise BadRequest naming the problem."""
    from xdp_compute.errors import BadRequest

    if isinstance(epsilon, bool) or not isinstance(epsilon, int | float) or not math.isfinite(epsilon) \
            or epsilon <= 0:
        raise BadRequest(f"epsilon must be a finite number > 0, got {epsilon!r}")
    if delta is None:
        delta = default_delta
    if isinstance(delta, bool) or not isinstance(delta, int | float) or not math.isfinite(delta) \
            or not 0 < delta < 1:
        raise BadRequest(f"delta must be in (0, 1), got {delta!r}")
    return float(epsilon), float(delta)


@dataclass(frozen=True)
class NoiseShares:
    """How many nodes' noise shares the calibration counts on, and why.

    ``threshold`` t survivors are needed to unmask; up to ``colluding`` c of them may hand their
    own noise share to the analyst (a holder that is also a customer, a node run by the
    analyst). Their shares are then known and subtract out, so the noise is calibrated for the
    ``honest = t - c`` shares that remain (Kairouz, Liu, Steinke 2021 §5: distributed DGauss
    with a dropout/collusion margin). Public inputs only: n, the secagg threshold, the policy.
    """

    nodes: int
    threshold: int
    colluding: int

    @property
    def honest(self) -> int:
        return self.threshold - self.colluding

    def decision(self) -> Decision:
        if self.honest < 1:
            return Decision("collusion", False, f"{self.colluding} colluding node(s) cannot be tolerated with "
                                                f"{self.nodes} node(s) and a threshold of {self.threshold}")
        return Decision("collusion", True, f"noise calibrated so that {self.honest} honest share(s) of the "
                                           f"{self.threshold} needed carry the target (tolerates "
                                           f"{self.colluding} colluding node(s); gateway policy "
                                           "max_colluding_nodes)")


def noise_shares(nodes: int, threshold: int, max_colluding_nodes: int | None) -> NoiseShares:
    """The collusion margin for ``nodes`` participants: the policy's ``max_colluding_nodes``, or by
    default 1 once there are 3 or more nodes (0 for 1-2 nodes, where any colluder is the only
    other holder and no margin leaves any noise)."""
    if max_colluding_nodes is None:
        c = 1 if nodes >= 3 else 0
    else:
        c = int(max_colluding_nodes)
    return NoiseShares(nodes, threshold, c)
