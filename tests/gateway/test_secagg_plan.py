"""Secure aggregation is planned before anything is reserved (issue #13 goal 4).

60 registered holders: the dry run shows the SecAgg+ session (n, k, t, the rates and the failure
bounds) and the noise counts on the parties any t nodes span; at rates no session can meet, the
dry run and the submission are refused with 409, and no ledger, analyst budget or job changes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from conftest import example_manifest
from fastapi.testclient import TestClient

from xdp_compute.config import Settings
from xdp_compute.crypto.secagg import secagg_plus_parameters
from xdp_compute.domain.manifest import parse_manifest_text
from xdp_compute.gateway import models as m
from xdp_compute.gateway.app import create_app
from xdp_compute.gateway.services import Services
from xdp_compute.gateway.store import Store

N = 60
SQL = "SELECT COUNT(*) AS n FROM patients"


def decl() -> dict[str, Any]:
    return parse_manifest_text(example_manifest(), check_files=False).datasets[0].to_dict()


def register(store: Store, n: int) -> str:
    """An owner's node and n-1 invited holders' nodes (one party each); returns an analyst token."""
    owner = store.authenticate(store.create_principal("holder", "owner", "CN-FJ"))
    store.register_node(owner, "node-000", "CN-FJ", [decl()])
    for i in range(1, n):
        token = store.create_principal("holder", f"h{i:03d}", "CN-FJ")
        store.invite_member(owner, "patients", f"h{i:03d}")
        store.register_node(store.authenticate(token), f"node-{i:03d}", "CN-FJ", [decl()])
    return store.create_principal("analyst", "ann", "CN-FJ")


def client(store: Store, **settings: Any) -> TestClient:
    s = Settings(db_url="sqlite://", max_body_bytes=1 << 20, **settings)
    return TestClient(create_app(s, Services(settings=s, store=store)), raise_server_exceptions=False)


@pytest.fixture
def holders(store: Store) -> Iterator[tuple[Store, str]]:
    yield store, register(store, N)


def snapshot(store: Store) -> tuple[Any, ...]:
    parts = store.dataset_parts("patients")
    with store.read() as s:
        counts = tuple(s.query(t).count() for t in (m.Job, m.Reservation, m.AnalystBudget, m.LogEntry))
        analyst = sorted(repr(sorted((k, v) for k, v in vars(b).items() if not k.startswith("_")))
                         for b in s.query(m.AnalystBudget).all())
    return (counts, analyst, sorted((p["node"], p["eps_spent"], p["eps_reserved"], p["delta_spent"]) for p in parts))


def test_dry_run_shows_the_secagg_plus_session(holders: tuple[Store, str]) -> None:
    store, analyst = holders
    with client(store) as api:
        r = api.post("/v1/queries", json={"sql": SQL, "epsilon": 0.5, "dry_run": True},
                     headers={"authorization": f"Bearer {analyst}"})
    assert r.status_code == 200, r.text
    plan = r.json()["plan"]
    sa = plan["secure_aggregation"]
    expect = secagg_plus_parameters(N, dropout_rate=0.05, corrupt_rate=1 / 3, colluding=1)
    assert sa["graph"].startswith("secagg+") and sa["nodes"] == N
    assert (sa["neighbours"], sa["threshold"]) == (expect.neighbours, expect.threshold)
    assert sa["neighbours"] < N - 1 and plan["secagg_threshold_nodes"] == sa["threshold"]
    assert (sa["dropout_rate"], sa["corrupt_rate"]) == (0.05, pytest.approx(1 / 3))
    assert sa["privacy_failure_bound"] < 2.0 ** -40 and sa["correctness_failure_bound"] < 2.0 ** -20
    # One node per holder: any t survivors are t parties, one of which may collude.
    assert plan["threshold"] == sa["threshold"] and plan["noise_shares"] == sa["threshold"] - 1
    assert plan["colluding_tolerated"] == 1
    assert any(d["rule"] == "secure_aggregation" and "SecAgg+" in d["reason"] for d in r.json()["decisions"])


def test_unconfigurable_job_is_refused_before_anything_is_reserved(holders: tuple[Store, str]) -> None:
    store, analyst = holders
    before = snapshot(store)
    h = {"authorization": f"Bearer {analyst}"}
    with client(store, secagg_dropout_rate=0.4, secagg_corrupt_rate=0.3) as api:
        for body in ({"sql": SQL, "epsilon": 0.5, "dry_run": True}, {"sql": SQL, "epsilon": 0.5}):
            r = api.post("/v1/queries", json=body, headers=h)
            assert r.status_code == 409, r.text
            problem = r.json()
            assert problem["type"].endswith("secagg-unconfigurable")
            assert "0.4 drop-out" in problem["detail"] and "0.3 corrupt" in problem["detail"]
            assert "XDP_SECAGG_DROPOUT_RATE" in problem["detail"]
    # No job, no reservation, no log entry; nothing reserved or spent on any node or the analyst.
    assert snapshot(store) == before


def test_small_jobs_keep_the_complete_graph(store: Store) -> None:
    analyst = register(store, 3)
    with client(store) as api:
        r = api.post("/v1/queries", json={"sql": SQL, "epsilon": 0.5, "dry_run": True},
                     headers={"authorization": f"Bearer {analyst}"})
    plan = r.json()["plan"]
    assert plan["secure_aggregation"]["graph"].startswith("complete")
    assert (plan["threshold"], plan["secagg_threshold_nodes"], plan["noise_shares"]) == (2, 2, 1)
