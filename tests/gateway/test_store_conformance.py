"""One conformance suite for the store, run against SQLite and PostgreSQL; migrations match models."""

from __future__ import annotations

import concurrent.futures as cf
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import example_manifest

from xdp_compute.domain.manifest import parse_manifest_text
from xdp_compute.errors import BadRequest, BudgetExhausted, SchemaConflict, Unauthorized, XdpError
from xdp_compute.gateway import models as m
from xdp_compute.gateway.store import ReservationRequest, Store, new_id


@pytest.fixture(params=["sqlite", "postgres"])
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'conf.db'}"
    else:
        url = request.getfixturevalue("fresh_pg_db")
    s = Store.open(url)
    yield s
    s.close()


def _job(s: Any, principal_id: str) -> str:
    jid = new_id()
    s.add(m.Job(id=jid, principal_id=principal_id, kind="query", status="reserved", spec_json="{}",
                plan_json="{}", cost_json="{}", idempotency_key=None, created_at=0.0, updated_at=0.0,
                compute_seconds=0.0))
    s.flush()
    return jid


def test_migrations_match_models(any_store: Store) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    with any_store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), m.Base.metadata)
    assert diff == []


def test_tokens_hashed_and_checked(any_store: Store) -> None:
    tok = any_store.create_principal("analyst", "ann", "CN-FJ")
    assert any_store.authenticate(tok).name == "ann"
    with any_store.read() as s:
        assert all(tok not in p.token_hash for p in s.query(m.Principal).all())
    with pytest.raises(Unauthorized):
        any_store.authenticate(tok + "x")


def test_register_and_schema_clash_is_atomic(any_store: Store) -> None:
    h1 = any_store.authenticate(any_store.create_principal("holder", "h1", "CN-FJ"))
    h2 = any_store.authenticate(any_store.create_principal("holder", "h2", "CN-FJ"))
    ds = parse_manifest_text(example_manifest(), check_files=False).datasets[0]
    any_store.register_node(h1, "a", "CN-FJ", [ds.to_dict()])
    any_store.invite_member(h1, "patients", "h2")
    bad = parse_manifest_text(example_manifest().replace("max = 120", "max = 9"), check_files=False).datasets[0]
    with pytest.raises(SchemaConflict):
        any_store.register_node(h2, "b", "CN-FJ", [bad.to_dict()])
    assert [n["name"] for n in any_store.list_nodes()] == ["a"]


def test_concurrent_reservations_never_overspend(any_store: Store) -> None:
    h = any_store.authenticate(any_store.create_principal("holder", "h", "CN-FJ"))
    ds = parse_manifest_text(example_manifest(budget=1.0), check_files=False).datasets[0]
    any_store.register_node(h, "a", "CN-FJ", [ds.to_dict()])
    ledger_id = any_store.dataset_parts("patients")[0]["ledger_id"]
    analyst = any_store.authenticate(any_store.create_principal("analyst", "an", "CN-FJ"))

    def attempt(_: int) -> bool:
        try:
            with any_store.write() as s:
                any_store.ensure_analyst_budget(s, analyst.id, 100.0, 1.0)
                jid = _job(s, analyst.id)
                any_store.reserve(s, jid, analyst.id, [ReservationRequest(ledger_id, 0.1, 1e-9)], 0.1, 1e-9)
            return True
        except BudgetExhausted:
            return False

    with cf.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(attempt, range(40)))
    assert results.count(True) == 10
    part = any_store.dataset_parts("patients")[0]
    assert part["eps_reserved"] == pytest.approx(1.0) and part["eps_reserved"] <= 1.0 + 1e-9


def test_settle_commit_and_refund(any_store: Store) -> None:
    h = any_store.authenticate(any_store.create_principal("holder", "h", "CN-FJ"))
    ds = parse_manifest_text(example_manifest(budget=1.0), check_files=False).datasets[0]
    any_store.register_node(h, "a", "CN-FJ", [ds.to_dict()])
    ledger_id = any_store.dataset_parts("patients")[0]["ledger_id"]
    analyst = any_store.authenticate(any_store.create_principal("analyst", "an", "CN-FJ"))
    jobs = []
    for _ in range(2):
        with any_store.write() as s:
            any_store.ensure_analyst_budget(s, analyst.id, 100.0, 1.0)
            jid = _job(s, analyst.id)
            any_store.reserve(s, jid, analyst.id, [ReservationRequest(ledger_id, 0.3, 0.0)], 0.3, 0.0)
            jobs.append(jid)
    with any_store.write() as s:
        any_store.settle(s, jobs[0], commit=True)
        any_store.settle(s, jobs[1], commit=False)
    part = any_store.dataset_parts("patients")[0]
    assert part["eps_spent"] == pytest.approx(0.3) and part["eps_reserved"] == pytest.approx(0.0)
    assert any_store.analyst_budget(analyst.id)["epsilon_spent"] == pytest.approx(0.3)


def test_release_log_appends_and_rebuilds(any_store: Store) -> None:
    from xdp_compute.audit import TreeHeadSigner
    from xdp_compute.gateway.release import ReleaseGate, ReleaseLog

    signer = TreeHeadSigner.generate()
    log = ReleaseLog(any_store, signer)
    gate = ReleaseGate(any_store, log)
    for i in range(3):
        gate.record({"kind": "approval_given", "job_id": f"j{i}", "principal": "p"})
    root = log.tree.root()
    again = ReleaseLog(any_store, signer)
    assert again.tree.size == 3 and again.tree.root() == root and again.integrity_problem is None
    assert again.signer.key_id == log.signer.key_id


def test_node_names_differing_only_in_case_are_one_name(any_store: Store) -> None:
    h1 = any_store.authenticate(any_store.create_principal("holder", "h1", "CN-FJ"))
    h2 = any_store.authenticate(any_store.create_principal("holder", "h2", "CN-FJ"))
    ds = parse_manifest_text(example_manifest(), check_files=False).datasets[0]
    any_store.register_node(h1, "Clinic-0", "CN-FJ", [ds.to_dict()])
    any_store.invite_member(h1, "patients", "h2")
    for holder in (h1, h2):
        with pytest.raises(SchemaConflict, match="differs only in case from the registered node 'Clinic-0'"):
            any_store.register_node(holder, "clinic-0", "CN-FJ", [ds.to_dict()])
    any_store.register_node(h1, "Clinic-0", "CN-FJ", [ds.to_dict()])  # the same name re-registers
    assert [n["name"] for n in any_store.list_nodes()] == ["Clinic-0"]


@pytest.mark.parametrize("region", ["", "cn", "<script>", "CN-FJ\n", "ＣＮ", "CN-"])
def test_principal_regions_are_iso_codes(any_store: Store, region: str) -> None:
    with pytest.raises(BadRequest, match="ISO 3166"):
        any_store.create_principal("analyst", "ann", region)
    with any_store.read() as s:
        assert s.query(m.Principal).count() == 0


def test_two_holders_claiming_one_new_dataset_at_once_get_a_clean_refusal(any_store: Store) -> None:
    holders = [any_store.authenticate(any_store.create_principal("holder", f"h{i}", "CN-FJ")) for i in range(4)]
    ds = parse_manifest_text(example_manifest(), check_files=False).datasets[0]

    def claim(i: int) -> str:
        try:
            any_store.register_node(holders[i], f"node-{i}", "CN-FJ", [ds.to_dict()])
            return "owner"
        except XdpError as e:
            return f"refused {e.status}: {e.detail}"

    for _ in range(3):
        with cf.ThreadPoolExecutor(4) as pool:
            outcomes = list(pool.map(claim, range(4)))
        assert all(o == "owner" or o.startswith(("refused 403", "refused 409")) for o in outcomes), outcomes
        assert outcomes.count("owner") == 1, outcomes
        with any_store.write() as s:
            s.query(m.NodeDataset).delete()
            s.query(m.DatasetMember).delete()
            s.query(m.Node).delete()
            s.query(m.Dataset).delete()


def test_sqlite_commits_are_durable_before_they_return(tmp_path: Path) -> None:
    """A released answer's charge and log entry must survive an OS crash or a power cut: in WAL
    mode ``synchronous=NORMAL`` may lose the last commits (budget spent twice, an entry missing),
    so every connection, for reads and for writes, runs with FULL (2)."""
    s = Store.open(f"sqlite:///{tmp_path / 'durable.db'}")
    try:
        with s.read() as r, s.write() as w:
            for session in (r, w):
                conn = session.connection()
                assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2
                assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    finally:
        s.close()
