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
    member: bool = False  # an invited holder's node (not the owner's): see ``members_taking_part``


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


# Policy fields that are the dataset owner's (issue #12, co-holders are strangers). A member's
# node carries the owner's values whatever its own manifest says, so a member can neither
# loosen them (a larger per-query cap, fewer allowed regions checks) nor block the owner's
# dataset with them (``allowed_analysts = ["nobody"]``, its own ``require_approval``).
# ``classification`` and ``categories`` are schema and must match the owner's to join at all;
# ``epsilon_budget``/``delta`` stay each member's own: they bound the member's own ledger.
OWNER_POLICY_FIELDS = ("min_group_size", "require_approval", "allowed_analysts", "allowed_regions",
                       "max_epsilon_per_query", "max_rows")


def owner_policy(spec: dict[str, Any]) -> dict[str, Any]:
    """The owner's policy fields of a dataset declaration (``DatasetSpec.to_dict()``)."""
    return {k: spec[k] for k in OWNER_POLICY_FIELDS if k in spec}


def under_owner_policy(spec: dict[str, Any], policy: dict[str, Any]) -> dict[str, Any]:
    """A member's declaration with the owner's policy fields in place of its own."""
    return {**spec, **{k: v for k, v in policy.items() if k in OWNER_POLICY_FIELDS}}


def members_taking_part(parts: list[NodePart], who: Requester, epsilon: float, delta: float, *,
                        restricted_categories: tuple[str, ...]) -> tuple[list[NodePart], list[Decision]]:
    """Split off the members' nodes that cannot take part in this job, and say why.

    A member's own budget bounds its own rows only: when it cannot pay (or its node's region
    is barred by the cross-border rule), that node simply does not take part, instead of
    refusing the owner's job. The reasons are public facts (declared budgets, charges of
    released jobs, declared regions), so leaving a node out follows the observable rule.
    The owner's nodes are never split off: their refusals refuse the job.
    """
    keep: list[NodePart] = []
    out: list[Decision] = []
    for p in parts:
        why = None
        if p.member:
            restricted = sorted(set(p.spec.categories) & set(restricted_categories))
            if epsilon > p.spec.epsilon_budget + 1e-12 or epsilon > p.epsilon_left + 1e-9 \
                    or delta > p.delta_left + 1e-15:
                why = (f"its own budget (epsilon left {max(p.epsilon_left, 0):g} of {p.spec.epsilon_budget:g}, "
                       f"delta left {max(p.delta_left, 0):g}) cannot pay epsilon={epsilon:g}, delta={delta:g}")
            elif restricted and who.region != p.region:
                why = (f"categories {restricted} may not cross from its region {p.region!r} to the analyst's "
                       f"{who.region!r}")
        if why is not None:
            out.append(Decision("participation", True, f"member node {p.node!r} does not take part: {why}",
                                node=p.node))
        else:
            keep.append(p)
    return keep, out


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
    """How many parties' noise shares the calibration counts on, and why.

    A party is a holder, however many nodes it runs (issue #12: five no-noise Sybil nodes of
    one holder used to count as five shares and cut the honest holders' noise). ``threshold``
    t parties must be among the survivors to release; up to ``colluding`` c of them may hand
    their own noise to the analyst (a holder that is also a customer). Their shares are then
    known and subtract out, so the noise is calibrated for the ``honest = t - c`` parties that
    remain (Kairouz, Liu, Steinke 2021 §5: distributed DGauss with a dropout/collusion margin).
    Every node adds a full party share (the conservative choice: an honest party with one
    surviving node still carries its share), so extra nodes of one holder only add noise.
    Public inputs only: the parties, the threshold, the policy.
    """

    nodes: int  # parties (distinct holders); the name predates ownership
    threshold: int
    colluding: int

    @property
    def honest(self) -> int:
        return self.threshold - self.colluding

    def decision(self) -> Decision:
        if self.honest < 1:
            return Decision("collusion", False, f"{_parties(self.colluding)} colluding cannot be tolerated with "
                                                f"{_parties(self.nodes)} and a threshold of {self.threshold}")
        return Decision("collusion", True, f"noise calibrated so that {self.honest} honest "
                                           f"{'party' if self.honest == 1 else 'parties'} of the {self.threshold} "
                                           "needed carry the target (a holder is one party however many nodes it "
                                           f"runs; tolerates {_parties(self.colluding)} colluding; gateway policy "
                                           "max_colluding_nodes)")


def _parties(k: int) -> str:
    return f"{k} {'party' if k == 1 else 'parties'}"


def noise_shares(nodes: int, threshold: int, max_colluding_nodes: int | None) -> NoiseShares:
    """The collusion margin for ``nodes`` parties (distinct holders): the policy's
    ``max_colluding_nodes``, or by default 1 once there are 3 or more parties (0 for 1-2, where
    any colluder is the only other holder and no margin leaves any noise)."""
    if max_colluding_nodes is None:
        c = 1 if nodes >= 3 else 0
    else:
        c = int(max_colluding_nodes)
    return NoiseShares(nodes, threshold, c)


def secagg_node_threshold(nodes_per_party: list[int], party_threshold: int, colluding: int) -> int:
    """Shamir threshold, in nodes, for one secure-aggregation session over these parties.

    - Bonawitz et al. 2017 §4 (security): the server with fewer than t clients learns nothing
      beyond the sum; ``colluding`` parties control all their nodes, so t exceeds the nodes of
      the ``colluding`` largest parties.
    - Any t surviving nodes must span ``party_threshold`` parties (a Sybil's nodes alone never
      unmask a sum): t exceeds the nodes of the ``party_threshold - 1`` largest parties.
    - And t is at least the roster's majority (``crypto.secagg.default_threshold``).
    The result may exceed the roster when one holder runs most nodes: then no job can run, which
    the per-holder node cap prevents.
    """
    ranked = sorted(nodes_per_party, reverse=True)
    need = max(party_threshold - 1, colluding, 0)
    return max(sum(ranked) // 2 + 1, sum(ranked[:need]) + 1)


def parties_spanned(nodes_per_party: list[int], node_threshold: int) -> int:
    """The fewest parties whose nodes can make up ``node_threshold`` survivors (largest first).

    With a SecAgg+ graph (Bell et al. 2020) the threshold is per neighbourhood, so a release is
    guaranteed to sum only ``node_threshold`` nodes (every survivor checks |U3| >= t before it
    signs U3, Round 3), not a majority of the roster; those nodes may belong to this few parties.
    The noise then counts on this many parties' shares (minus the collusion margin), the same
    worst case each node recomputes (``node.policy.own_noise_shares``).
    """
    covered = 0
    for k, size in enumerate(sorted(nodes_per_party, reverse=True), start=1):
        covered += size
        if covered >= node_threshold:
            return k
    return len(nodes_per_party)
