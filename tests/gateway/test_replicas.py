"""Gateway replicas over one database (issue #18): one log sequence, leases, orphaned jobs.

Each "replica" here is its own Store (its own engine and connections) and its own ReleaseLog or
Services over the same database, as two gateway processes would be.
"""

from __future__ import annotations

import base64
import concurrent.futures as cf
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import example_manifest
from sqlalchemy import select

from xdp_compute.audit import TreeHeadSigner, verify_consistency
from xdp_compute.config import Settings
from xdp_compute.domain.manifest import parse_manifest_text
from xdp_compute.gateway import models as m
from xdp_compute.gateway.recovery import ORPHAN_REASON, recover_orphaned_jobs
from xdp_compute.gateway.release import ReleaseGate, ReleaseLog
from xdp_compute.gateway.services import Services
from xdp_compute.gateway.store import ReservationRequest, Store, new_id


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'replicas.db'}"
    return str(request.getfixturevalue("fresh_pg_db"))


def _stores(url: str, n: int = 2) -> list[Store]:
    return [Store.open(url) for _ in range(n)]


def test_two_replicas_append_one_sequence_with_one_head_per_size(db_url: str) -> None:
    stores = _stores(db_url)
    signer = TreeHeadSigner.generate()  # replicas share the log key
    logs = [ReleaseLog(s, signer) for s in stores]
    gates = [ReleaseGate(s, lg) for s, lg in zip(stores, logs, strict=True)]
    try:
        def append(i: int) -> int:
            return int(gates[i % 2].record({"kind": "approval_given", "job_id": f"j{i}", "principal": "p"})["index"])

        with cf.ThreadPoolExecutor(8) as pool:
            indices = list(pool.map(append, range(60)))
        assert sorted(indices) == list(range(60))  # no index twice, none missing
        with stores[0].read() as s:
            sizes = list(s.scalars(select(m.TreeHead.tree_size).order_by(m.TreeHead.tree_size)).all())
            leaves = [e.encode() for e in s.scalars(select(m.LogEntry.entry_json).order_by(m.LogEntry.idx)).all()]
        assert sizes == list(range(1, 61))
        # Each replica's tree, caught up, is the one tree of the stored entries.
        assert logs[0].committed_size == logs[1].committed_size == 60
        assert logs[0].tree.root() == logs[1].tree.root()
        assert logs[0].integrity_problem is None and logs[1].integrity_problem is None
        fresh = ReleaseLog(stores[0], signer)
        assert fresh.tree.root() == logs[0].tree.root() and fresh.tree.size == len(leaves)
        # Proofs and receipts for entries the other replica wrote.
        other = next(i for i in range(60) if i % 2 == 0)
        assert logs[1].receipt(indices[other])["log_index"] == indices[other]
        proof = logs[1].consistency_proof(10, 60)
        verify_consistency(10, 60, fresh.tree.root(10), fresh.tree.root(60), proof)  # raises if wrong
    finally:
        for s in stores:
            s.close()


def test_a_replica_appending_after_the_other_catches_up_first(db_url: str) -> None:
    stores = _stores(db_url)
    signer = TreeHeadSigner.generate()
    a, b = (ReleaseGate(s, ReleaseLog(s, signer)) for s in stores)
    try:
        a.record({"kind": "approval_given", "job_id": "x", "principal": "p"})
        a.record({"kind": "approval_given", "job_id": "y", "principal": "p"})
        # b's tree in memory is still empty; its append reads a's entries before its own.
        assert b.log.tree.size == 0
        assert b.record({"kind": "approval_given", "job_id": "z", "principal": "p"})["index"] == 2
        assert b.log.tree.root() == ReleaseLog(stores[0], signer).tree.root()
    finally:
        for s in stores:
            s.close()


def _services(url: str, key: str) -> Services:
    settings = Settings(db_url=url, log_key=key, data_dir=Path("/nonexistent-xdp-test"))
    return Services(settings=settings, store=Store.open(url))


def _running_job(svc: Services) -> tuple[str, int]:
    """A job this replica accepted and runs: lease first, then the row with its budget held."""
    store = svc.store
    holder = store.authenticate(store.create_principal("holder", "h", "CN-FJ"))
    ds = parse_manifest_text(example_manifest(budget=1.0), check_files=False).datasets[0]
    store.register_node(holder, "a", "CN-FJ", [ds.to_dict()])
    ledger = store.dataset_parts("patients")[0]["ledger_id"]
    analyst = store.authenticate(store.create_principal("analyst", "an", "CN-FJ"))
    job_id = new_id()
    assert svc.leases.take(job_id)
    with store.write() as s:
        s.add(m.Job(id=job_id, principal_id=analyst.id, kind="query", status="running",
                    spec_json=json.dumps({"digest": "d"}), plan_json="{}", cost_json=json.dumps({"epsilon": 0.25}),
                    idempotency_key=None, created_at=0.0, updated_at=0.0, compute_seconds=0.0))
        s.flush()
        store.ensure_analyst_budget(s, analyst.id, 100.0, 1.0)
        store.reserve(s, job_id, analyst.id, [ReservationRequest(ledger, 0.25, 0.0)], 0.25, 0.0)
    return job_id, ledger


@pytest.fixture
def two_replicas(fresh_pg_db: str) -> Iterator[tuple[Services, Services]]:
    key = base64.b64encode(os.urandom(32)).decode()
    a, b = _services(fresh_pg_db, key), _services(fresh_pg_db, key)
    yield a, b
    for svc in (a, b):
        svc.leases.close()
        svc.store.close()


def test_a_job_whose_replica_lives_is_not_recovered_and_one_whose_replica_died_is(
        two_replicas: tuple[Services, Services]) -> None:
    a, b = two_replicas
    job_id, ledger = _running_job(a)
    assert a.leases.enabled and b.leases.enabled
    assert recover_orphaned_jobs(b, grace=0) == []  # a holds the lease: a runs it
    assert recover_orphaned_jobs(a, grace=0) == []  # nor does a recover its own job
    # a dies: its lease connection closes and PostgreSQL drops the lock with it.
    a.leases._conn.close()
    assert recover_orphaned_jobs(b, grace=0) == [job_id]
    with b.store.read() as s:
        job = s.get(m.Job, job_id)
        assert job is not None and job.status == "failed"
        reservations = s.scalars(select(m.Reservation).where(m.Reservation.job_id == job_id)).all()
        entries = [json.loads(e) for e in s.scalars(select(m.LogEntry.entry_json).order_by(m.LogEntry.idx)).all()]
    assert {r.state for r in reservations} == {"committed"}  # charged: a noisy value may exist
    assert [(e["kind"], e["job_id"], e["reason"]) for e in entries] == [("failed", job_id, ORPHAN_REASON)]
    part = b.store.dataset_parts("patients")[0]
    assert part["ledger_id"] == ledger and part["eps_spent"] == pytest.approx(0.25) and part["eps_reserved"] == 0
    # Once only: a second sweep, on either replica, finds nothing.
    assert recover_orphaned_jobs(b, grace=0) == [] and recover_orphaned_jobs(a, grace=0) == []


def test_a_job_just_approved_is_left_to_its_starting_replica(two_replicas: tuple[Services, Services]) -> None:
    a, b = two_replicas
    job_id, _ = _running_job(a)
    with a.store.write() as s:
        job = s.get(m.Job, job_id)
        assert job is not None
        # Approved on some replica a moment ago: reserved, its runner not yet holding the lease.
        job.status, job.updated_at = "reserved", 1e12  # far in the future: inside any grace period
    a.leases.give_back(job_id)
    assert recover_orphaned_jobs(b, grace=10.0) == []
    assert recover_orphaned_jobs(b, grace=-2e12) == [job_id]


def test_leases_on_sqlite_hold_nothing(store: Store) -> None:
    from xdp_compute.gateway.leases import JobLeases

    leases = JobLeases(store)
    assert not leases.enabled and leases.take("j") and not leases.try_orphan("j")


def test_reservations_and_settlements_on_two_replicas_never_deadlock(db_url: str) -> None:
    """Holds listed in any order, settled while others reserve, from two stores at once: every
    transaction locks the ledger rows in one order (issue #18: a bench run hit a deadlock, 500)."""
    import random

    stores = _stores(db_url)
    try:
        first = stores[0]
        holder = first.authenticate(first.create_principal("holder", "h", "CN-FJ"))
        ds = parse_manifest_text(example_manifest(budget=1000.0), check_files=False).datasets[0]
        for i in range(3):  # three ledger rows: one holder's three nodes
            first.register_node(holder, f"n{i}", "CN-FJ", [ds.to_dict()])
        ledgers = [p["ledger_id"] for p in first.dataset_parts("patients")]
        analyst = first.authenticate(first.create_principal("analyst", "an", "CN-FJ"))
        rng = random.Random(7)
        orders = [rng.sample(ledgers, len(ledgers)) for _ in range(80)]

        def job(i: int) -> None:
            store = stores[i % 2]
            with store.write() as s:
                store.ensure_analyst_budget(s, analyst.id, 1e6, 1.0)
                jid = _job_row(s, analyst.id)
                store.reserve(s, jid, analyst.id, [ReservationRequest(x, 0.01, 0.0) for x in orders[i]], 0.01, 0.0)
            with store.write() as s:
                store.settle(s, jid, commit=i % 3 != 0)

        with cf.ThreadPoolExecutor(12) as pool:
            list(pool.map(job, range(len(orders))))  # a deadlock raises here
        parts = first.dataset_parts("patients")
        assert all(p["eps_reserved"] == pytest.approx(0.0, abs=1e-9) for p in parts)
    finally:
        for s in stores:
            s.close()


def _job_row(s: object, principal_id: str) -> str:
    jid = new_id()
    s.add(m.Job(id=jid, principal_id=principal_id, kind="query", status="reserved", spec_json="{}",  # type: ignore[attr-defined]
                plan_json="{}", cost_json="{}", idempotency_key=None, created_at=0.0, updated_at=0.0,
                compute_seconds=0.0))
    s.flush()  # type: ignore[attr-defined]
    return jid


def test_a_node_without_a_session_here_is_dropped_at_once() -> None:
    """The store may call a node online that only another replica hears from: this replica's
    call fails at once instead of waiting out its timeout."""
    import asyncio

    from xdp_compute.gateway.hub import NodeDropped, Task, TaskHub

    async def run() -> None:
        hub = TaskHub()
        with pytest.raises(NodeDropped, match="no session with this gateway"):
            await asyncio.wait_for(hub.call("elsewhere", Task("query_begin", "j"), timeout=600), 5)
        hub.registered("here")
        with pytest.raises(NodeDropped, match="did not answer"):  # a node of ours is waited for
            await hub.call("here", Task("query_begin", "j"), timeout=0.05)

    asyncio.run(run())


def test_a_node_takes_every_replica_address() -> None:
    from xdp_compute.node.agent import NodeFatal, gateway_addresses

    assert gateway_addresses("a:1, b:2,,a:1") == ["a:1", "b:2"]
    assert gateway_addresses("a:1") == ["a:1"]
    with pytest.raises(NodeFatal):
        gateway_addresses(" , ")
