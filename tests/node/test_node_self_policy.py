"""Nodes enforce their own policy (issue #12, item 3): noise recomputed here, their own ledger and journal."""

from __future__ import annotations

import json
import re
from fractions import Fraction
from pathlib import Path

import pytest
from test_node_tasks import BASIS, SQL, Node, _node, _plan, _secure_sum, _sigmas

from xdp_compute.contract import NoiseBasis, QueryBegin, SecAggSession, encode
from xdp_compute.domain.manifest import parse_manifest_text
from xdp_compute.errors import BadRequest, BudgetExhausted
from xdp_compute.node.ledger import JOURNAL_FILE, LedgerUnreadable, NodeLedger, read_journal
from xdp_compute.node.policy import NoiseShortfall, check_query_task, measurements_of, own_noise_shares
from xdp_compute.privacy import plan_noise
from xdp_compute.query import QueryPlan

IDS = ["id-h0", "id-h1", "id-h2"]


def _session(threshold: int = 2, participants: list[str] | None = None) -> SecAggSession:
    return SecAggSession(session_id="job-1:sum", participants=participants or IDS, vector_length=6,
                         threshold=threshold)


@pytest.fixture
def node(tmp_path: Path) -> Node:
    return _node(tmp_path, "h0", 40, seed=0)


def _own(node: Node, plan: QueryPlan, basis: NoiseBasis = BASIS, session: SecAggSession | None = None,
         sigmas: dict[str, Fraction] | None = None) -> object:
    return check_query_task(node.manifest.datasets[0], plan, sigmas if sigmas is not None else _sigmas(plan), basis,
                            session or _session(), node.manifest.max_colluding_nodes)


# ---------------------------------------------------------------------------------------------
# the node's own calibration


def test_exactly_the_required_noise_or_more_is_accepted(node: Node) -> None:
    plan = _plan(node)
    own = _own(node, plan)
    assert {m.name: m.sigma_node2 for m in own.measurements} == _sigmas(plan)  # type: ignore[attr-defined]
    _own(node, plan, sigmas={k: v * 2 for k, v in _sigmas(plan).items()})
    _own(node, plan, sigmas={k: v + Fraction(1, 10**40) for k, v in _sigmas(plan).items()})


@pytest.mark.parametrize("below", [Fraction(1, 10**40), Fraction(0)])
def test_one_fraction_below_the_required_noise_is_refused(node: Node, below: Fraction) -> None:
    plan = _plan(node)
    for key in _sigmas(plan):
        sig = dict(_sigmas(plan))
        sig[key] = sig[key] - below if below else Fraction(0)
        with pytest.raises(NoiseShortfall, match="too little noise.*" + re.escape(repr(key))):
            _own(node, plan, sigmas=sig)


def test_the_float_just_below_is_refused_too(node: Node) -> None:
    import math

    plan = _plan(node)
    sig = dict(_sigmas(plan))
    key = next(iter(sig))
    just_below = Fraction(math.nextafter(float(sig[key]), 0.0))
    assert just_below < sig[key]
    with pytest.raises(NoiseShortfall):
        _own(node, plan, sigmas={**sig, key: just_below})


def test_a_gateway_claiming_more_honest_shares_than_the_node_allows_is_refused(node: Node) -> None:
    # 3 nodes, threshold 2: by the node's default margin (1 colluder at n >= 3) one honest share
    # carries the noise. A gateway calibrating for 2 honest shares (no margin) sends too little.
    plan = _plan(node)
    lax = plan_noise(BASIS.epsilon, BASIS.delta, measurements_of(plan), 2)
    sigmas = {m.name: m.sigma_node2 for m in lax.measurements}
    claim = NoiseBasis(epsilon=1.0, delta=1e-6, honest_shares=2, colluding=0)
    with pytest.raises(NoiseShortfall, match="gateway counted on 2"):
        _own(node, plan, basis=claim, sigmas=sigmas)


def test_a_node_whose_own_policy_tolerates_no_colluder_accepts_two_honest_shares(tmp_path: Path) -> None:
    node = _node(tmp_path, "h0", 40, seed=0)
    text = node.manifest.path.read_text().replace('region = "CN-FJ"', 'region = "CN-FJ"\nmax_colluding_nodes = 0', 1)
    manifest = parse_manifest_text(text, base_dir=node.manifest.base_dir)
    plan = _plan(node)
    lax = plan_noise(BASIS.epsilon, BASIS.delta, measurements_of(plan), 2)
    check_query_task(manifest.datasets[0], plan, {m.name: m.sigma_node2 for m in lax.measurements},
                     NoiseBasis(epsilon=1.0, delta=1e-6, honest_shares=2, colluding=0), _session(),
                     manifest.max_colluding_nodes)


def test_parties_are_counted_by_holder_in_the_worst_case() -> None:
    # 4 nodes, two of one holder; threshold 3: any 3 survivors span at least 2 of the 3 parties,
    # and the default margin (3 parties) is 1 colluder: one honest share.
    session = _session(3, ["a", "b", "c", "d"])
    basis = NoiseBasis(epsilon=1.0, delta=1e-6, honest_shares=1, colluding=1,
                       parties={"a": "H1", "b": "H1", "c": "H2", "d": "H3"})
    shares = own_noise_shares(session, basis, None)
    assert (shares.nodes, shares.threshold, shares.colluding, shares.honest) == (3, 2, 1, 1)
    # Undeclared: four parties, any 3 survivors span 3 of them, one colluder: two honest shares.
    assert own_noise_shares(session, BASIS, None).honest == 2


def test_a_threshold_leaving_no_honest_share_is_refused(node: Node) -> None:
    with pytest.raises(NoiseShortfall, match="no honest noise share"):
        _own(node, _plan(node), session=_session(1))


def test_a_task_without_a_noise_basis_is_refused(node: Node) -> None:
    ids = [node.executor.node_id, "id-x", "id-y"]
    plan = _plan(node)
    header, blobs = encode(QueryBegin(plan=plan.to_dict(), sigma_node2=_sigmas(plan),
                                      secagg=_session(2, ids)))
    out = node.executor.handle("query_begin", "job-1", header, blobs)
    assert not out.ok and "noise_basis" in out.error
    assert read_journal(node.manifest.state_path) == []  # refused before anything was charged


def test_an_epsilon_above_the_node_cap_is_refused(node: Node) -> None:
    plan = _plan(node)
    big = NoiseBasis(epsilon=3.0, delta=1e-6, honest_shares=1, colluding=1)
    sigmas = {m.name: m.sigma_node2 for m in plan_noise(3.0, 1e-6, measurements_of(plan), 1).measurements}
    with pytest.raises(BadRequest, match="per-query cap"):
        _own(node, plan, basis=big, sigmas=sigmas)


# ---------------------------------------------------------------------------------------------
# the node's own ledger and journal


def _charge(ledger: NodeLedger, node: Node, job: str, eps: float, digest: str = "d1") -> object:
    return ledger.charge(node.manifest.datasets[0], job_id=job, kind="query", principal="ana", plan_digest=digest,
                         epsilon=eps, delta=1e-7)


def test_the_ledger_refuses_past_the_node_budget_and_survives_a_restart(node: Node) -> None:
    ledger = NodeLedger(node.manifest.state_path)  # budget 10 in the manifest
    for i in range(5):
        _charge(ledger, node, f"job-{i}", 2.0)
    with pytest.raises(BudgetExhausted, match="own ledger.*spent epsilon 10 of its 10"):
        _charge(ledger, node, "job-5", 0.01)
    again = NodeLedger(node.manifest.state_path)  # a restarted node reads its journal
    assert again.spent("patients").epsilon == pytest.approx(10.0)
    with pytest.raises(BudgetExhausted):
        _charge(again, node, "job-6", 0.01)
    assert [e.job_id for e in again.entries()] == [f"job-{i}" for i in range(5)]


def test_a_job_is_charged_once_and_its_id_cannot_carry_another_task(node: Node) -> None:
    ledger = NodeLedger(node.manifest.state_path)
    first = _charge(ledger, node, "job-1", 1.0)
    assert _charge(ledger, node, "job-1", 1.0) == first  # the gateway asked again
    assert NodeLedger(node.manifest.state_path).spent("patients").epsilon == 1.0
    with pytest.raises(BadRequest, match="already charged"):
        _charge(ledger, node, "job-1", 1.0, digest="another-plan")


def test_a_torn_last_line_is_cut_and_a_corrupt_line_refuses_everything(node: Node) -> None:
    ledger = NodeLedger(node.manifest.state_path)
    _charge(ledger, node, "job-1", 1.0)
    path = node.manifest.state_path / JOURNAL_FILE
    with path.open("ab") as f:
        f.write(b'{"job_id": "job-2", "ep')  # a crash mid-write: never acknowledged
    fresh = NodeLedger(node.manifest.state_path)
    _charge(fresh, node, "job-3", 1.0)
    assert [json.loads(x)["job_id"] for x in path.read_text().splitlines()] == ["job-1", "job-3"]
    with path.open("ab") as f:
        f.write(b"not json\n")
    with pytest.raises(LedgerUnreadable):
        _charge(NodeLedger(node.manifest.state_path), node, "job-4", 1.0)


def test_query_begin_is_journaled_with_principal_plan_and_cost(tmp_path: Path) -> None:
    nodes = [_node(tmp_path, f"h{i}", 30, seed=i) for i in range(3)]
    plan = _plan(nodes[0])
    _secure_sum(nodes, lambda s: QueryBegin(plan=plan.to_dict(), sigma_node2=_sigmas(plan), secagg=s,
                                            noise_basis=BASIS, principal="ana"), threshold=2)
    own = plan_noise(BASIS.epsilon, BASIS.delta, measurements_of(plan), 1)
    for n in nodes:
        [entry] = read_journal(n.manifest.state_path)
        assert (entry.job_id, entry.kind, entry.dataset, entry.principal) == ("job-1", "query", "patients", "ana")
        assert entry.plan_digest == plan.digest() and entry.epsilon == own.epsilon and entry.delta == own.delta
    # The same session is not begun again once its masked input has left (one charge, one release).
    header, blobs = encode(QueryBegin(plan=plan.to_dict(), sigma_node2=_sigmas(plan),
                                      secagg=SecAggSession(session_id="job-1:sum",
                                                           participants=[n.executor.node_id for n in nodes],
                                                           vector_length=plan.vector_length, threshold=2),
                                      noise_basis=BASIS, principal="ana"))
    out = nodes[0].executor.handle("query_begin", "job-1", header, blobs)
    assert not out.ok and "already sent" in out.error


def test_query_begin_past_the_node_budget_is_refused_before_any_row_is_read(node: Node) -> None:
    ledger = node.executor.node.ledger
    _charge(ledger, node, "earlier", 9.9)
    plan = _plan(node)
    ids = [node.executor.node_id, "id-x", "id-y"]
    header, blobs = encode(QueryBegin(plan=plan.to_dict(), sigma_node2=_sigmas(plan), secagg=_session(2, ids),
                                      noise_basis=BASIS))
    out = node.executor.handle("query_begin", "job-1", header, blobs)
    assert not out.ok and "own ledger" in out.error
    assert [e.job_id for e in read_journal(node.manifest.state_path)] == ["earlier"]
    assert SQL  # the plan's SQL groups by district: refused whatever the rows
