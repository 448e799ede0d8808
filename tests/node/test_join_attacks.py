"""Attacks on a holder's side of a private join by a deviating gateway (issue #16, node/tasks/join.py).

The gateway builds the join plan; a holder cannot re-derive it from the SQL alone (it knows only
its own manifest), so it checks its side of the plan against its manifest. These tests hand a
node plans the honest planner never makes, and check the node refuses each before it charges or
reads a row.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from join_data import KEY_BITS, prepared, write_nodes

from xdp_compute.contract.tasks import JoinBegin, JoinKeys, JoinSeed
from xdp_compute.crypto.paillier import generate_keypair
from xdp_compute.errors import BadRequest, InvalidKey, XdpError
from xdp_compute.node.tasks.join import check_join_side
from xdp_compute.query.plan import CellTotal
from xdp_compute.query.where import Compare

SQL = "SELECT i.tier, SUM(i.claim) FROM hospital h JOIN insurer i ON h.citizen = i.citizen GROUP BY i.tier"
SQL_A_GROUPS = ("SELECT h.district, SUM(i.claim) FROM hospital h JOIN insurer i ON h.citizen = i.citizen "
                "GROUP BY h.district")


@pytest.fixture(scope="module")
def public() -> Any:
    return generate_keypair(KEY_BITS)[0]


@pytest.fixture
def nodes(tmp_path: Path) -> Any:
    _, h, i = write_nodes(tmp_path, 7, 10, 10, 5, 20)
    h.node_id, i.node_id = "hospital-node", "insurer-node"
    yield h, i
    h.close()
    i.close()


def test_a_plan_grouping_by_the_join_key_is_refused(nodes: Any, public: Any) -> None:
    # The gateway makes A's cells guessed keys: each cell's indicator would say "this person is here".
    h, _ = nodes
    plan = prepared(SQL_A_GROUPS, *nodes, public, 4.0).plan
    ds = h.manifest.datasets[0]
    key = ds.column("citizen")
    forged = dataclasses.replace(plan.a, groups=("citizen",), cells=(("C0700000001",), ("C0700000002",)),
                                 columns=(key, *plan.a.columns))
    with pytest.raises(BadRequest, match="join key"):
        check_join_side(ds, plan, forged, is_b=False)


def test_a_plan_grouping_or_filtering_against_the_holders_uses_is_refused(nodes: Any, public: Any) -> None:
    h, i = nodes
    plan = prepared(SQL_A_GROUPS, h, i, public, 4.0).plan
    hds, ids = h.manifest.datasets[0], i.manifest.datasets[0]
    # age may be aggregated and filtered, not grouped: cells of single ages would be the gateway's choice.
    age = hds.column("age")
    forged = dataclasses.replace(plan.a, groups=("age",), cells=tuple((str(a),) for a in range(3)),
                                 columns=(age,))
    with pytest.raises(BadRequest, match="group"):
        check_join_side(hds, plan, forged, is_b=False)
    # tier may be grouped, not filtered.
    tier = ids.column("tier")
    forged_b = dataclasses.replace(plan.b, where=Compare("tier", "=", "gold"),
                                   columns=tuple({c.name: c for c in (*plan.b.columns, tier)}.values()))
    with pytest.raises(BadRequest, match="filter"):
        check_join_side(ids, plan, forged_b, is_b=True)


def test_cells_other_than_the_declared_values_are_refused(nodes: Any, public: Any) -> None:
    h, i = nodes
    plan = prepared(SQL_A_GROUPS, h, i, public, 4.0).plan
    hds = h.manifest.datasets[0]
    forged = dataclasses.replace(plan.a, cells=(("north",),))  # one value left out: "south" rows go nowhere
    with pytest.raises(BadRequest, match="cells"):
        check_join_side(hds, plan, forged, is_b=False)


def test_a_measurement_of_a_column_without_aggregate_use_is_refused(nodes: Any, public: Any) -> None:
    _, i = nodes
    plan = prepared(SQL, *nodes, public, 4.0).plan
    ids = i.manifest.datasets[0]
    # tier is a category: forge COUNT(tier) on a column the holder does not open to aggregates.
    m = CellTotal("count", "tier", 1.0, 0)
    forged = dataclasses.replace(plan, inner=dataclasses.replace(plan.inner, measurements=(*plan.inner.measurements, m)))
    with pytest.raises(BadRequest, match="aggregate"):
        check_join_side(ids, forged, forged.b, is_b=True)


@pytest.mark.parametrize("field,value", [("query_epsilon", -1.0), ("query_epsilon", 0.0), ("query_delta", -1e-6),
                                         ("query_delta", 1.0), ("card_delta", 0.0), ("card_epsilon", -0.5)])
def test_a_plan_with_an_epsilon_or_delta_out_of_range_charges_nothing(nodes: Any, public: Any, field: str,
                                                                     value: float) -> None:
    h, i = nodes
    plan = prepared(SQL, h, i, public, 4.0).plan
    forged = dataclasses.replace(plan, **{field: value})
    ds = i.manifest.datasets[0]
    before = i.node.ledger.spent(ds.name)
    with pytest.raises(XdpError):
        i.join.keys("j", JoinKeys(plan=forged.to_dict(), side="B", peer="hospital-node", public_key=public.to_dict()))
    assert i.node.ledger.spent(ds.name) == before


@pytest.mark.parametrize("n", [3 * 5, 2**61 - 1, (2**1024 + 643) * 7])
def test_a_node_refuses_a_crafted_paillier_key(nodes: Any, public: Any, n: int) -> None:
    # A tiny n (noise added mod n wraps), a prime n (anyone decrypts), n with a small factor.
    h, i = nodes
    plan = prepared(SQL, h, i, public, 4.0).plan
    with pytest.raises(InvalidKey):
        i.join.keys("j", JoinKeys(plan=plan.to_dict(), side="B", peer="hospital-node",
                                  public_key={"scheme": "paillier", "n": str(n)}))


def test_holders_given_different_plans_by_the_gateway_stop_before_reading_a_row(nodes: Any, public: Any) -> None:
    # The gateway shows A one plan and B another (here: another epsilon, so different noise and
    # charges). Each plan passes its holder's own checks; the holders compare digests in the sealed
    # seed round and stop.
    h, i = nodes
    plan = prepared(SQL, h, i, public, 4.0).plan
    other = dataclasses.replace(plan, query_epsilon=plan.query_epsilon / 2)
    ka = h.join.keys("j", JoinKeys(plan=plan.to_dict(), side="A", peer="insurer-node", public_key=public.to_dict()))
    kb = i.join.keys("j", JoinKeys(plan=other.to_dict(), side="B", peer="hospital-node", public_key=public.to_dict()))
    sa = h.join.seed("j", JoinSeed(peer_key=kb.key, peer_signature=kb.signature, peer_certificate=kb.certificate))
    sb = i.join.seed("j", JoinSeed(peer_key=ka.key, peer_signature=ka.signature, peer_certificate=ka.certificate))
    for node, sealed in ((h, sb.sealed), (i, sa.sealed)):
        with pytest.raises(BadRequest, match="another plan"):
            node.join.begin("j", JoinBegin(sealed=sealed))


def test_with_a_pki_a_key_the_gateway_substitutes_is_refused(tmp_path: Path, public: Any) -> None:
    """The sealed channel's keys are signed by the nodes' certificates: a gateway that puts its own key
    in place of B's (to read A's blinded keys and play B, docs/private-joins.md "Attacks tried") is
    refused, unsigned, signed for another side, or signed for another job."""
    from nacl.public import PrivateKey

    from xdp_compute.crypto.pki import PkiPaths, init_pki, issue_node_certificate
    from xdp_compute.domain.manifest import load_manifest
    from xdp_compute.node.executors import TaskExecutor
    from xdp_compute.node.identity import NodeIdentity

    _, h0, i0 = write_nodes(tmp_path, 8, 10, 10, 5, 20)
    h0.close()
    i0.close()
    paths = init_pki(tmp_path / "pki")
    ex = {}
    for node, folder in (("hospital-node", "h"), ("insurer-node", "i")):
        cert, key = issue_node_certificate(paths.root, node, f"{node}-holder")
        ex[node] = TaskExecutor(load_manifest(tmp_path / folder / "node.toml"),
                                NodeIdentity(PkiPaths(paths.root).ca_cert, cert, key))
        ex[node].node_id = node
    h, i = ex["hospital-node"], ex["insurer-node"]
    try:
        plan = prepared(SQL, h, i, public, 4.0).plan
        ka = h.join.keys("j", JoinKeys(plan=plan.to_dict(), side="A", peer="insurer-node", public_key=public.to_dict()))
        kb = i.join.keys("j", JoinKeys(plan=plan.to_dict(), side="B", peer="hospital-node", public_key=public.to_dict()))
        assert ka.signature and kb.signature
        mine = bytes(PrivateKey.generate().public_key)
        for forged, words in ((JoinSeed(peer_key=mine, peer_signature=b"", peer_certificate=b""), "not signed"),
                              (JoinSeed(peer_key=mine, peer_signature=kb.signature, peer_certificate=kb.certificate),
                               "does not verify"),
                              (JoinSeed(peer_key=ka.key, peer_signature=ka.signature, peer_certificate=ka.certificate),
                               "does not verify")):  # A's own key reflected back as B's
            with pytest.raises(InvalidKey, match=words):
                h.join.seed("j", forged)
        h.join.seed("j", JoinSeed(peer_key=kb.key, peer_signature=kb.signature, peer_certificate=kb.certificate))
    finally:
        h.close()
        i.close()
