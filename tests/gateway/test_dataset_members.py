"""Dataset owners and members (issue #12: co-holders are strangers): the store on SQLite and
PostgreSQL, the members routes, and what a member's declaration can and cannot change."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import example_manifest

from xdp_compute.domain.manifest import parse_manifest_text
from xdp_compute.domain.policy import members_taking_part, secagg_node_threshold
from xdp_compute.errors import BadRequest, Conflict, Forbidden, NotFound, SchemaConflict
from xdp_compute.gateway.lifecycle import approval_holders
from xdp_compute.gateway.registration import RegistrationLimits, RegistrationRateLimited
from xdp_compute.gateway.store import Store, node_parts


@pytest.fixture(params=["sqlite", "postgres"])
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    url = f"sqlite:///{tmp_path / 'm.db'}" if request.param == "sqlite" else request.getfixturevalue("fresh_pg_db")
    s = Store.open(url)
    yield s
    s.close()


def decl(extra: str = "", **kw: Any) -> dict[str, Any]:
    text = example_manifest(**kw)
    if extra:
        text = text.replace("[datasets.columns]", extra + "\n\n[datasets.columns]")
    return parse_manifest_text(text, check_files=False).datasets[0].to_dict()


def holders(store: Store, *names: str) -> list[Any]:
    return [store.authenticate(store.create_principal("holder", n, "CN-FJ")) for n in names]


def test_a_stranger_is_refused_naming_the_owner(any_store: Store) -> None:
    owner, stranger = holders(any_store, "siming", "mallory")
    any_store.register_node(owner, "a", "CN-FJ", [decl()])
    with pytest.raises(Forbidden, match=r"owned by holder 'siming'.*xdp datasets invite patients mallory"):
        any_store.register_node(stranger, "m", "CN-FJ", [decl()])
    assert [p["node"] for p in any_store.dataset_parts("patients")] == ["a"]
    assert [n["name"] for n in any_store.list_nodes()] == ["a"]  # nothing of the refusal persisted


def test_invited_member_joins_under_the_owners_policy_with_its_own_budget(any_store: Store) -> None:
    owner, member = holders(any_store, "siming", "huli")
    any_store.register_node(owner, "a", "CN-FJ", [decl(budget=10.0, min_group=10)])
    any_store.invite_member(owner, "patients", "huli")
    blocking = decl('allowed_analysts = ["nobody"]\nallowed_regions = ["XX"]\nmax_epsilon_per_query = 100',
                    budget=0.01, min_group=0, approval=True)
    any_store.register_node(member, "b", "CN-FJ", [blocking])
    parts = {p["node"]: p for p in any_store.dataset_parts("patients")}
    b = parts["b"]
    assert b["role"] == "member" and parts["a"]["role"] == "owner" and b["owner_id"] == owner.id
    assert b["spec"]["allowed_analysts"] is None and b["spec"]["allowed_regions"] is None
    assert b["spec"]["require_approval"] is False and b["spec"]["min_group_size"] == 10
    assert b["spec"]["max_epsilon_per_query"] == parts["a"]["spec"]["max_epsilon_per_query"]
    assert b["eps_budget"] == 0.01 and b["spec"]["epsilon_budget"] == 0.01  # its own ledger
    info = any_store.dataset_membership("patients")
    assert info["owner"] == "siming" and [x["holder"] for x in info["members"]] == ["huli"]


def test_the_owners_later_policy_applies_to_members(any_store: Store) -> None:
    owner, member = holders(any_store, "siming", "huli")
    any_store.register_node(owner, "a", "CN-FJ", [decl()])
    any_store.invite_member(owner, "patients", "huli")
    any_store.register_node(member, "b", "CN-FJ", [decl()])
    any_store.register_node(owner, "a", "CN-FJ", [decl(approval=True, min_group=20)])
    b = next(p for p in any_store.dataset_parts("patients") if p["node"] == "b")
    assert b["spec"]["require_approval"] is True and b["spec"]["min_group_size"] == 20
    # ... and approvals are the owner's alone.
    assert approval_holders(any_store.dataset_parts("patients")) == [owner.id]


def test_a_member_cannot_change_the_schema_nor_declare_more_rows(any_store: Store) -> None:
    owner, member = holders(any_store, "siming", "huli")
    any_store.register_node(owner, "a", "CN-FJ", [decl(extra="max_rows = 1000")])
    any_store.invite_member(owner, "patients", "huli")
    with pytest.raises(SchemaConflict, match="max_rows"):
        any_store.register_node(member, "b", "CN-FJ", [decl(extra="max_rows = 1000000")])
    any_store.register_node(member, "b", "CN-FJ", [decl(extra="max_rows = 500")])
    bad = parse_manifest_text(example_manifest().replace("max = 120", "max = 9").replace(
        "[datasets.columns]", "max_rows = 500\n\n[datasets.columns]"), check_files=False).datasets[0]
    with pytest.raises(SchemaConflict, match="age"):
        any_store.register_node(member, "b", "CN-FJ", [bad.to_dict()])


def test_only_the_owner_or_an_admin_manages_members(any_store: Store) -> None:
    owner, _, other = holders(any_store, "siming", "huli", "jimei")
    admin = any_store.authenticate(any_store.create_principal("admin", "root", "CN-FJ"))
    any_store.register_node(owner, "a", "CN-FJ", [decl()])
    with pytest.raises(Forbidden, match="siming"):
        any_store.invite_member(other, "patients", "jimei")
    with pytest.raises(NotFound):
        any_store.invite_member(owner, "patients", "nobody-at-all")
    with pytest.raises(BadRequest):
        any_store.invite_member(owner, "patients", "siming")
    with pytest.raises(NotFound):
        any_store.invite_member(owner, "no-such-dataset", "huli")
    any_store.invite_member(admin, "patients", "huli")
    any_store.invite_member(owner, "Patients", "huli")  # idempotent, any letter case
    assert [x["holder"] for x in any_store.dataset_membership("patients")["members"]] == ["huli"]


def test_a_revoked_member_takes_part_in_nothing_and_cannot_reregister(any_store: Store) -> None:
    owner, member = holders(any_store, "siming", "huli")
    any_store.register_node(owner, "a", "CN-FJ", [decl()])
    any_store.invite_member(owner, "patients", "huli")
    any_store.register_node(member, "b", "CN-FJ", [decl()])
    any_store.revoke_member(owner, "patients", "huli")
    assert [p["node"] for p in any_store.dataset_parts("patients")] == ["a"]
    with pytest.raises(Forbidden):
        any_store.register_node(member, "b", "CN-FJ", [decl()])
    with pytest.raises(NotFound):
        any_store.revoke_member(owner, "patients", "huli")


def test_nodes_per_holder_are_capped(any_store: Store) -> None:
    owner, member = holders(any_store, "siming", "huli")
    any_store.register_node(owner, "a", "CN-FJ", [decl()], max_nodes_per_holder=2)
    any_store.register_node(owner, "a2", "CN-FJ", [decl()], max_nodes_per_holder=2)
    any_store.register_node(owner, "a2", "CN-FJ", [decl()], max_nodes_per_holder=2)  # re-registration
    with pytest.raises(Conflict, match="at most 2 node"):
        any_store.register_node(owner, "a3", "CN-FJ", [decl()], max_nodes_per_holder=2)
    any_store.invite_member(owner, "patients", "huli")
    any_store.register_node(member, "b", "CN-FJ", [decl()], max_nodes_per_holder=2)
    any_store.register_node(member, "b2", "CN-FJ", [decl()], max_nodes_per_holder=2)
    with pytest.raises(Conflict, match="'huli'"):
        any_store.register_node(member, "b3", "CN-FJ", [decl()], max_nodes_per_holder=2)


def test_migration_gives_existing_datasets_to_their_first_holder(tmp_path: Path) -> None:
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import text

    from xdp_compute.gateway.store import make_engine

    engine = make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parents[2] / "src/xdp_compute/gateway/migrations"))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001")
        for pid, t in (("p1", 1.0), ("p2", 2.0)):
            conn.execute(text("INSERT INTO principals VALUES (:i, :i, 'holder', 'CN-FJ', :h, 0, NULL, 0)"),
                         {"i": pid, "h": pid * 32})
            conn.execute(text("INSERT INTO nodes VALUES (:n, :n, :i, 'CN-FJ', 0, 0, :t)"),
                         {"n": "n" + pid, "i": pid, "t": t})
        conn.execute(text("INSERT INTO datasets VALUES ('patients', '{}', 0)"))
        for pid in ("p1", "p2"):
            conn.execute(text("INSERT INTO node_datasets (node_id, dataset_name, spec_json, eps_budget, delta_budget,"
                              " eps_spent, delta_spent, eps_reserved, delta_reserved) VALUES"
                              " (:n, 'patients', '{}', 1, 1, 0, 0, 0, 0)"), {"n": "n" + pid})
    engine.dispose()
    from xdp_compute.gateway.store import upgrade_database

    upgrade_database(f"sqlite:///{tmp_path / 'old.db'}")  # `xdp db upgrade`: Store.open migrates nothing
    store = Store.open(f"sqlite:///{tmp_path / 'old.db'}")
    try:
        info = store.dataset_membership("patients")
        assert info["owner_id"] == "p1" and info["member_ids"] == ["p2"]
    finally:
        store.close()


# ------------------------------------------------------------------ pure policy
def test_members_whose_own_budget_cannot_pay_do_not_take_part(store: Store) -> None:
    from xdp_compute.domain.policy import Requester

    owner, member = holders(store, "siming", "huli")
    store.register_node(owner, "a", "CN-FJ", [decl(budget=10.0)])
    store.invite_member(owner, "patients", "huli")
    store.register_node(member, "b", "CN-FJ", [decl(budget=0.01)])
    keep, out = members_taking_part(node_parts(store.dataset_parts("patients")), Requester("x", "analyst", "CN-FJ"),
                                    0.5, 1e-9, restricted_categories=("health",))
    assert [p.node for p in keep] == ["a"]
    assert out[0].rule == "participation" and out[0].allowed and "'b'" in out[0].reason
    # A member abroad holding restricted categories does not take part either (the owner's node
    # abroad would refuse the job instead).
    keep, out = members_taking_part(node_parts(store.dataset_parts("patients")), Requester("x", "analyst", "DE-BE"),
                                    0.001, 1e-9, restricted_categories=("health",))
    assert [p.node for p in keep] == ["a"] and "cross" in out[0].reason


@pytest.mark.parametrize("per_party, t_parties, c, expect", [
    ([1, 1, 1], 2, 1, 2),        # one node each: the roster's majority, as before
    ([2, 1, 1], 2, 1, 3),        # a colluding two-node holder alone cannot reach t
    ([4, 1, 1], 2, 1, 5),
    ([2, 2, 2, 2, 2], 3, 1, 6),  # any 6 survivors span at least 3 holders
    ([1, 1], 2, 0, 2),
])
def test_secagg_threshold_exceeds_any_too_small_coalition(per_party: list[int], t_parties: int, c: int,
                                                          expect: int) -> None:
    t = secagg_node_threshold(per_party, t_parties, c)
    assert t == expect and t <= sum(per_party)
    ranked = sorted(per_party, reverse=True)
    assert t > sum(ranked[:t_parties - 1]) and t > sum(ranked[:c])


def test_registration_rate_is_limited_per_holder() -> None:
    limits = RegistrationLimits(per_minute=5)
    for i in range(5):
        limits.take("h1", "h1", now=100.0 + i * 0.01)
    with pytest.raises(RegistrationRateLimited, match="5 registrations per minute"):
        limits.take("h1", "h1", now=100.1)
    limits.take("h2", "h2", now=100.1)  # another holder is not affected
    limits.take("h1", "h1", now=100.1 + 12.5)  # refilled at 5 per minute


# ------------------------------------------------------------------ REST
def test_members_routes_and_the_dry_run_counts_parties(api: Any, store: Store) -> None:
    member, third = holders(store, "huli", "jimei")
    o = store.create_principal("holder", "owner-rest", "CN-FJ")
    oh = store.authenticate(o)
    store.register_node(oh, "r1", "CN-FJ", [{**decl(), "name": "rest"}])
    h = {"authorization": f"Bearer {o}"}
    r = api.post("/v1/datasets/rest/members", json={"holder": "huli"}, headers=h)
    assert r.status_code == 201, r.text
    assert api.post("/v1/datasets/rest/members", json={"holder": "jimei"}, headers=h).status_code == 201
    stranger = {"authorization": "Bearer " + store.create_principal("holder", "mallory", "CN-FJ")}
    r = api.post("/v1/datasets/rest/members", json={"holder": "mallory"}, headers=stranger)
    assert r.status_code == 403 and "owner-rest" in r.json()["detail"]
    assert api.get("/v1/datasets/rest/members", headers=stranger).status_code == 403
    assert api.post("/v1/datasets/rest/members", json={"holder": "x", "extra": 1}, headers=h).status_code == 422
    store.register_node(member, "r2", "CN-FJ", [{**decl(), "name": "rest"}])
    store.register_node(third, "r3", "CN-FJ", [{**decl(), "name": "rest"}])
    analyst = {"authorization": "Bearer " + store.create_principal("analyst", "ann", "CN-FJ")}
    body = {"sql": "SELECT COUNT(*) AS n FROM rest", "epsilon": 0.5, "dry_run": True}
    before = api.post("/v1/queries", json=body, headers=analyst).json()["plan"]
    assert (before["parties"], before["threshold"], before["noise_shares"]) == (3, 2, 1)
    store.register_node(member, "r2b", "CN-FJ", [{**decl(), "name": "rest"}])  # a second node of huli
    after = api.post("/v1/queries", json=body, headers=analyst).json()["plan"]
    assert sorted(after["nodes"]) == ["r1", "r2", "r2b", "r3"]
    assert (after["parties"], after["threshold"], after["noise_shares"]) == (3, 2, 1)
    assert after["secagg_threshold_nodes"] == 3  # huli's two nodes alone cannot unmask
    got = api.get("/v1/datasets/rest", headers=analyst).json()
    assert got["owner"] == "owner-rest" and got["members"] == ["huli", "jimei"]
    assert {n["name"]: n["role"] for n in got["nodes"]}["r2b"] == "member"
    # Revoking removes huli's nodes from the next plan.
    assert api.delete("/v1/datasets/rest/members/huli", headers=h).status_code == 200
    plan = api.post("/v1/queries", json=body, headers=analyst).json()["plan"]
    assert sorted(plan["nodes"]) == ["r1", "r3"]
