"""Attacks on the data exchange (issue #17) through the in-process REST app: every party an adversary.

Raw HTTP around the SDK with each role's token: authorization (who may list, approve, settle, read),
bad input (NaN, huge, out-of-range and path-like values), races (two settlements at once), and
money that must fit its integer columns. Real processes: tests/e2e/test_exchange_attacks_e2e.py.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
from conftest import example_manifest

from xdp_compute.domain.manifest import parse_manifest_text
from xdp_compute.gateway.exchange import ExchangeService
from xdp_compute.gateway.metered import period_of


def decl(node: str = "siming-hospital") -> dict[str, Any]:
    return parse_manifest_text(example_manifest(node=node), check_files=False).datasets[0].to_dict()


@pytest.fixture
def world(api: Any, services: Any) -> dict[str, Any]:
    """An owner (siming) of ``patients``, a co-holder (huli) that adds its rows as a member, a
    stranger holder, two analysts, an auditor and an admin; each with a bearer header."""
    store = services.store
    tokens = {name: store.create_principal(role, name, "CN-FJ") for role, name in
              [("holder", "siming"), ("holder", "huli"), ("holder", "jimei"), ("analyst", "ana"),
               ("analyst", "bob"), ("auditor", "aud"), ("admin", "root")]}
    who = {n: store.authenticate(t) for n, t in tokens.items()}
    store.register_node(who["siming"], "a", "CN-FJ", [decl("a")])
    store.invite_member(who["siming"], "patients", "huli")
    store.register_node(who["huli"], "b", "CN-FJ", [decl("b")])
    return {"h": {n: {"Authorization": f"Bearer {t}"} for n, t in tokens.items()}, "who": who,
            "ex": ExchangeService(services)}


PRODUCT = {"dataset": "patients", "kind": "query", "title": "district counts", "unit_price": 100.0,
           "allowance": 1.0, "shapes": {"aggregates": ["count"], "group_by": ["district"]}}


def listed(api: Any, w: dict[str, Any], **kw: Any) -> dict[str, Any]:
    r = api.post("/v1/products", json={**PRODUCT, **kw}, headers=w["h"]["siming"])
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


def subscribed(api: Any, w: dict[str, Any], product: str, analyst: str = "ana", approve: bool = True) -> str:
    r = api.post(f"/v1/products/{product}/subscribe", headers=w["h"][analyst])
    assert r.status_code == 201, r.text
    if approve:
        assert api.post(f"/v1/subscriptions/{r.json()['id']}/approve", headers=w["h"]["siming"]).status_code == 200
    return r.json()["id"]  # type: ignore[no-any-return]


def test_only_the_owner_lists_and_decides_whatever_token_is_sent(api: Any, world: dict[str, Any]) -> None:
    h = world["h"]
    for name, status in (("huli", 403), ("jimei", 403), ("ana", 403), ("aud", 403), ("root", 403)):
        r = api.post("/v1/products", json=PRODUCT, headers=h[name])
        assert r.status_code == status, (name, r.text)
        assert r.headers["content-type"].startswith("application/problem+json")
    p = listed(api, world)
    sub = subscribed(api, world, p["id"], approve=False)
    # The subscriber approving itself, a co-holder, a stranger holder, an auditor, an admin: none decides.
    for name in ("ana", "bob", "aud", "root"):
        assert api.post(f"/v1/subscriptions/{sub}/approve", headers=h[name]).status_code == 403, name
    for name in ("huli", "jimei"):  # another holder learns no more than for an id that does not exist
        r = api.post(f"/v1/subscriptions/{sub}/approve", headers=h[name])
        absent = api.post("/v1/subscriptions/0123456789abcdef/approve", headers=h[name])
        assert (r.status_code, absent.status_code) == (404, 404), name
        assert r.json()["type"] == absent.json()["type"]
    assert api.get("/v1/subscriptions", headers=h["ana"]).json()[0]["status"] == "pending"
    # Holders subscribe to nothing; the owner never to its own product.
    assert api.post(f"/v1/products/{p['id']}/subscribe", headers=h["siming"]).status_code == 403


def test_a_co_holder_neither_registers_nor_lists_and_only_admins_settle(api: Any, world: dict[str, Any]) -> None:
    h = world["h"]
    body = {"dataset": "patients", "description": "mine now", "licence": "any"}
    for name in ("huli", "jimei"):
        r = api.post("/v1/assets", json=body, headers=h[name])
        assert r.status_code == 403 and "only the owner" in r.json()["detail"], r.text
    for name in ("ana", "siming", "aud"):
        assert api.post("/v1/statements", json={"period": period_of(0)}, headers=h[name]).status_code == 403


def test_each_party_reads_only_its_own_subscriptions_and_statements(api: Any, world: dict[str, Any]) -> None:
    h, ex, who = world["h"], world["ex"], world["who"]
    p = listed(api, world)
    subscribed(api, world, p["id"], "ana")
    subscribed(api, world, p["id"], "bob")
    assert [s["subscriber"] for s in api.get("/v1/subscriptions", headers=h["ana"]).json()] == ["ana"]
    assert api.get("/v1/subscriptions", headers=h["huli"]).json() == []  # a co-holder: not its product
    assert len(api.get("/v1/subscriptions", headers=h["siming"]).json()) == 2
    bobs = api.get("/v1/subscriptions", headers=h["bob"]).json()[0]["id"]
    # ana uses bob's subscription id: refused as if it did not exist, nothing held on bob's.
    r = api.post("/v1/queries", json={"sql": "SELECT district, COUNT(*) FROM patients GROUP BY district",
                                      "epsilon": 0.1, "subscription": bobs}, headers=h["ana"])
    assert r.status_code == 404, r.text
    assert ex.subscription_of(who["bob"], p["id"])["held"] == 0.0
    metered(ex, who, p["id"], ["ana", "bob"])
    period = period_of(__import__("time").time())
    seen = {n: api.get(f"/v1/statements?period={period}", headers=h[n]).json() for n in h}
    assert [s["party"] for s in seen["ana"]] == ["ana"] and [s["party"] for s in seen["bob"]] == ["bob"]
    assert [s["party"] for s in seen["siming"]] == ["siming"]
    assert seen["huli"] == [] and seen["jimei"] == []
    assert len(seen["aud"]) == len(seen["root"]) == 3


def metered(ex: ExchangeService, who: dict[str, Any], product: str, analysts: list[str]) -> None:
    """One metered use per analyst: a hold metered as the release gate meters it."""
    import json
    import time

    from xdp_compute.gateway import models as m
    from xdp_compute.gateway.metered import meter_release
    from xdp_compute.gateway.store import new_id

    for a in analysts:
        sub = ex.subscription_of(who[a], product)["id"]
        usage = ex.hold_query(who[a], sub, 0.25)
        with ex.store.write() as s:
            job = m.Job(id=new_id(), principal_id=who[a].id, kind="query", status="running",
                        spec_json=json.dumps({"subscription": {"id": sub, "usage": usage}}), created_at=time.time(),
                        updated_at=time.time())
            s.add(job)
            s.flush()
            meter_release(s, job, ["a"])


@pytest.mark.parametrize("body, status", [
    ('{"dataset":"patients","kind":"query","title":"t","unit_price":NaN,"allowance":1}', 422),
    ('{"dataset":"patients","kind":"query","title":"t","unit_price":1,"allowance":Infinity}', 422),
    ('{"dataset":"patients","kind":"query","title":"t","unit_price":-1,"allowance":1}', 422),
    ('{"dataset":"patients","kind":"query","title":"t","unit_price":1,"allowance":0}', 422),
    ('{"dataset":"patients","kind":"query","title":"t","unit_price":1e300,"allowance":1}', 422),
    ('{"dataset":"../patients","kind":"query","title":"t","unit_price":1,"allowance":1}', 422),
    ('{"dataset":"patients","kind":"query","title":"' + "x" * 5000 + '","unit_price":1,"allowance":1}', 422),
    ('{"dataset":"patients","kind":"query","title":"t","unit_price":"1","allowance":1}', 422),
])
def test_bad_listings_are_clean_4xx(api: Any, world: dict[str, Any], body: str, status: int) -> None:
    r = api.post("/v1/products", content=body, headers={**world["h"]["siming"], "content-type": "application/json"})
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")


def test_a_price_times_allowance_past_what_money_columns_hold_is_refused(api: Any, world: dict[str, Any]) -> None:
    """Micro-units are 64-bit integers (PostgreSQL BIGINT): a subscription's whole allowance at the
    unit price must fit with room for many subscribers, or metering a release would fail after the
    job computed (its privacy budget spent, nothing delivered)."""
    r = api.post("/v1/products", json={**PRODUCT, "unit_price": 1e12, "allowance": 1e9}, headers=world["h"]["siming"])
    assert r.status_code == 400 and "unit_price" in r.json()["detail"], r.text
    assert api.get("/v1/products", headers=world["h"]["ana"]).json() == []
    listed(api, world, unit_price=1e6, allowance=1000.0)  # a billion units a subscription is fine


@pytest.mark.parametrize("period, status", [("2026-13", 400), ("2026-00", 400), ("../..", 422), ("2026-1", 422),
                                            ("20261-01", 422), ("0000-01", 400)])
def test_bad_periods_are_clean_4xx(api: Any, world: dict[str, Any], period: str, status: int) -> None:
    r = api.get("/v1/statements", params={"period": period}, headers=world["h"]["aud"])
    assert r.status_code == status, r.text
    r = api.post("/v1/statements", json={"period": period}, headers=world["h"]["root"])
    assert r.status_code == status, r.text


def test_long_and_odd_ids_are_404_not_500(api: Any, world: dict[str, Any]) -> None:
    h = world["h"]
    for pid in ("x" * 5000, "%2e%2e", "' OR 1=1 --"):
        assert api.get(f"/v1/products/{pid}", headers=h["ana"]).status_code in (404, 422)
        assert api.post(f"/v1/products/{pid}/subscribe", headers=h["ana"]).status_code in (404, 422)
        assert api.post(f"/v1/subscriptions/{pid}/approve", headers=h["siming"]).status_code in (404, 422)
    assert api.get("/v1/assets/" + "x" * 5000 + "/history", headers=h["ana"]).status_code in (404, 422)


def test_two_settlements_of_one_period_at_once_issue_it_once(api: Any, world: dict[str, Any]) -> None:
    h, ex, who = world["h"], world["ex"], world["who"]
    p = listed(api, world)
    subscribed(api, world, p["id"], "ana")
    metered(ex, who, p["id"], ["ana"])
    period = period_of(__import__("time").time())
    statuses: list[int] = []
    barrier = threading.Barrier(4)

    def settle() -> None:
        barrier.wait()
        statuses.append(api.post("/v1/statements", json={"period": period}, headers=h["root"]).status_code)

    threads = [threading.Thread(target=settle) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(statuses) == [201, 409, 409, 409], statuses
    issued = api.get(f"/v1/statements?period={period}", headers=h["aud"]).json()
    assert len(issued) == 2 and all(s["issued"] for s in issued)
    # A use metered after the settlement lands in the next period, never in the settled one.
    metered(ex, who, p["id"], ["ana"])
    again = api.get(f"/v1/statements?period={period}", headers=h["aud"]).json()
    assert [s["total_micros"] for s in again] == [s["total_micros"] for s in issued]


def dry(api: Any, w: dict[str, Any], sql: str, sub: str | None, who: str = "ana") -> Any:
    body: dict[str, Any] = {"sql": sql, "epsilon": 0.1, "dry_run": True}
    if sub is not None:
        body["subscription"] = sub
    return api.post("/v1/queries", json=body, headers=w["h"][who])


@pytest.mark.parametrize("sql, why", [
    ("SELECT district, SUM(age) FROM patients GROUP BY district", "aggregate sum"),
    ("SELECT district, SUM(age) AS xdp_group_size FROM patients GROUP BY district", None),  # the hidden count's name
    ("SELECT district, COUNT(*), SUM(age) AS n FROM patients GROUP BY district", "aggregate sum"),
    ("SELECT age AS district, COUNT(*) FROM patients GROUP BY age", None),
    ("SELECT district AS d, COUNT(*) FROM patients GROUP BY district", "OK"),
    ("SELECT COUNT(*) FROM patients WHERE age > 30", "WHERE on 'age'"),
    ("SELECT COUNT(*) FROM patients WHERE district = 'Huli' AND (age > 30 OR age < 5)", "WHERE on 'age'"),
    ("SELECT COUNT(*) FROM (SELECT * FROM patients) t", None),
    ("SELECT COUNT(*) FROM patients WHERE age IN (SELECT age FROM patients)", None),
])
def test_a_query_outside_the_products_shapes_is_refused_before_anything_is_held(
        api: Any, world: dict[str, Any], sql: str, why: str | None) -> None:
    ex, who = world["ex"], world["who"]
    p = listed(api, world, shapes={"aggregates": ["count"], "group_by": ["district"], "filters": ["district"]})
    sub = subscribed(api, world, p["id"])
    r = dry(api, world, sql, sub)
    if why == "OK":
        assert r.status_code == 200, r.text
    else:
        assert 400 <= r.status_code < 500, r.text
        if why is not None:
            assert why in r.json()["detail"], r.text
    state = ex.subscription_of(who["ana"], p["id"])
    assert (state["used"], state["held"]) == (0.0, 0.0)  # a dry run is free, a refusal holds nothing


def test_subscriptions_do_not_cross_datasets_kinds_or_analysts(api: Any, world: dict[str, Any]) -> None:
    h = world["h"]
    p = listed(api, world)
    sub = subscribed(api, world, p["id"])
    # Without a subscription the sold dataset is refused (403), a dry run stays free.
    r = api.post("/v1/queries", json={"sql": "SELECT district, COUNT(*) FROM patients GROUP BY district",
                                      "epsilon": 0.1}, headers=h["ana"])
    assert r.status_code == 403 and r.json()["type"].endswith("/not-subscribed"), r.text
    assert dry(api, world, "SELECT district, COUNT(*) FROM patients GROUP BY district", None).status_code == 200
    # bob with ana's approved id; ana with a pending one; a product id passed as a subscription id.
    assert dry(api, world, "SELECT COUNT(*) FROM patients", sub, "bob").status_code == 404
    pending = subscribed(api, world, p["id"], "bob", approve=False)
    assert dry(api, world, "SELECT COUNT(*) FROM patients", pending, "bob").status_code == 403
    assert dry(api, world, "SELECT COUNT(*) FROM patients", p["id"]).status_code == 404
    # Past the allowance in one query: 409 before anything is held.
    r = api.post("/v1/queries", json={"sql": "SELECT COUNT(*) FROM patients", "epsilon": 1.5, "dry_run": True,
                                      "subscription": sub}, headers=h["ana"])
    assert r.status_code == 409 and r.json()["type"].endswith("/allowance-used-up"), r.text


def test_an_owner_with_no_node_of_its_own_cannot_register_an_empty_commitment(
        api: Any, world: dict[str, Any], services: Any) -> None:
    """The owner's node no longer holds a part of the dataset while a member's still does (the row
    is removed by hand here: no route does it today): a registration would commit to no rows at
    all (the SHA-256 of an empty map), the same for any data."""
    from sqlalchemy import delete

    from xdp_compute.gateway import models as m

    store = services.store
    with store.write() as s:
        node = s.query(m.Node).filter_by(name="a").one()
        s.execute(delete(m.NodeDataset).where(m.NodeDataset.node_id == node.id))
    assert [p["node"] for p in store.dataset_parts("patients")] == ["b"]
    r = api.post("/v1/assets", json={"dataset": "patients", "description": "d", "licence": "l"},
                 headers=world["h"]["siming"])
    assert r.status_code == 409 and "no node" in r.json()["detail"], r.text
    assert api.get("/v1/assets", headers=world["h"]["aud"]).json() == []


def test_a_job_that_fails_outside_the_log_gives_its_hold_back_once(
        api: Any, world: dict[str, Any], services: Any) -> None:
    """A job waiting for approvals carries its hold; it later fails while the release log cannot be
    written (``JobLifecycle.fail_unlogged``: failed, logged and refunded only at the next start).
    Its hold must not block the subscription meanwhile, nor go back twice when recovery logs it."""
    import json
    import time

    from xdp_compute.gateway import models as m
    from xdp_compute.gateway.recovery import log_unlogged_failures
    from xdp_compute.gateway.store import new_id

    ex, who = world["ex"], world["who"]
    p = listed(api, world)  # 1.0 epsilon per subscriber
    sub = subscribed(api, world, p["id"])
    usage = ex.hold_query(who["ana"], sub, 0.75)
    jid = new_id()
    with services.store.write() as s:
        s.add(m.Job(id=jid, principal_id=who["ana"].id, kind="query", status="awaiting_approval",
                    spec_json=json.dumps({"subscription": {"id": sub, "usage": usage}}), created_at=time.time(),
                    updated_at=time.time()))
    ex.return_hold_unless_used(usage, jid)  # submit_query's answer was 202: the job carries the hold
    assert ex.subscription_of(who["ana"], p["id"])["held"] == 0.75
    with services.store.write() as s:  # what fail_unlogged writes
        job = s.get(m.Job, jid)
        job.status, job.error_json = "failed", json.dumps({"detail": "job failed: x", "unlogged": True})
    r = api.post("/v1/queries", json={"sql": "SELECT COUNT(*) FROM patients", "epsilon": 0.5, "dry_run": True,
                                      "subscription": sub}, headers=world["h"]["ana"])
    assert r.status_code == 200, r.text
    assert ex.subscription_of(who["ana"], p["id"])["held"] == 0.0
    second = ex.hold_query(who["ana"], sub, 0.75)
    log_unlogged_failures(services)  # the next start logs the failure: the hold is not given twice
    state = ex.subscription_of(who["ana"], p["id"])
    assert (state["held"], state["used"]) == (0.75, 0.0) and second != usage


@pytest.mark.parametrize("db", ["sqlite", "postgres"])
def test_racing_settlements_and_calls_on_both_stores(request: pytest.FixtureRequest, tmp_path: Any, db: str) -> None:
    """On SQLite and PostgreSQL: six settlements of one period at once issue it once (the others
    409), and calls metered meanwhile land either in it (before) or in the next period (after),
    so the issued statements equal the period's usage exactly."""
    import json
    import time

    from xdp_compute.config import Settings
    from xdp_compute.errors import Conflict
    from xdp_compute.gateway import models as m
    from xdp_compute.gateway.exchange import AllowanceUsedUp, next_period
    from xdp_compute.gateway.services import Services
    from xdp_compute.gateway.store import Store

    url = f"sqlite:///{tmp_path / 'x.db'}" if db == "sqlite" else request.getfixturevalue("fresh_pg_db")
    store = Store.open(url)
    try:
        ex = ExchangeService(Services(settings=Settings(db_url="sqlite://"), store=store))
        who = {n: store.authenticate(store.create_principal(r, n, "CN-FJ"))
               for r, n in (("holder", "siming"), ("analyst", "ana"), ("admin", "root"))}
        store.register_node(who["siming"], "a", "CN-FJ", [decl("a")])
        with store.write() as s:
            s.add(m.Product(id="lk1", dataset_name="patients", owner_id=who["siming"].id, kind="lookup", title="who",
                            description="", unit="call", unit_price=2.5, allowance=40.0,
                            terms_json=json.dumps({"columns": ["age"]}), log_index=0, created_at=time.time()))
        sub = ex.subscribe(who["ana"], "lk1")["id"]
        ex.decide(who["siming"], sub, True, None)
        ex.charge_call(who["ana"].id, "lk1", "lookup")
        period = period_of(time.time())
        out: list[Any] = []
        barrier = threading.Barrier(12)

        def settle() -> None:
            barrier.wait()
            try:
                out.append(len(ex.issue(who["root"], period)))
            except Conflict as e:
                out.append(e)

        def call() -> None:
            barrier.wait()
            for _ in range(3):
                try:
                    out.append(ex.charge_call(who["ana"].id, "lk1", "lookup"))
                except AllowanceUsedUp as e:  # pragma: no cover - 40 calls are more than enough
                    out.append(e)

        threads = [threading.Thread(target=settle) for _ in range(6)] + [threading.Thread(target=call) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        settled = [x for x in out if isinstance(x, int)]
        assert settled == [2] and sum(isinstance(x, Conflict) for x in out) == 5, out
        with store.read() as s:
            by_period: dict[str, int] = {}
            for u in s.scalars(__import__("sqlalchemy").select(m.Usage)).all():
                by_period[u.period] = by_period.get(u.period, 0) + u.amount_micros
        issued = ex.statements(who["root"], period)
        assert all(x["issued"] for x in issued)
        assert [x["total_micros"] for x in issued] == [by_period[period]] * 2
        assert by_period[period] + by_period.get(next_period(period), 0) == 19 * 2_500_000
    finally:
        store.close()


@pytest.mark.parametrize("db", ["sqlite", "postgres"])
def test_a_hold_given_back_while_its_job_releases_is_still_metered(request: pytest.FixtureRequest, tmp_path: Any,
                                                                  db: str) -> None:
    """An analyst drops its request while the job is in the release gate: the request's error path
    gives the hold back (``return_hold_unless_used``) while the gate's thread meters it. Whichever
    comes first, a released job is metered once (units used, money charged) and the held count
    never goes below zero or counts twice."""
    import json
    import time

    from xdp_compute.config import Settings
    from xdp_compute.gateway import models as m
    from xdp_compute.gateway.metered import give_back, meter_release
    from xdp_compute.gateway.services import Services
    from xdp_compute.gateway.store import Store, new_id

    url = f"sqlite:///{tmp_path / 'x.db'}" if db == "sqlite" else request.getfixturevalue("fresh_pg_db")
    store = Store.open(url)
    try:
        ex = ExchangeService(Services(settings=Settings(db_url="sqlite://"), store=store))
        who = {n: store.authenticate(store.create_principal(r, n, "CN-FJ"))
               for r, n in (("holder", "siming"), ("analyst", "ana"))}
        store.register_node(who["siming"], "a", "CN-FJ", [decl("a")])
        p = ex.create_product(who["siming"], {**PRODUCT, "allowance": 100.0})
        sub = ex.subscribe(who["ana"], p["id"])["id"]
        ex.decide(who["siming"], sub, True, None)

        def job_with(usage: int) -> str:
            jid = new_id()
            with store.write() as s:
                s.add(m.Job(id=jid, principal_id=who["ana"].id, kind="query", status="running",
                            spec_json=json.dumps({"subscription": {"id": sub, "usage": usage}}),
                            created_at=time.time(), updated_at=time.time()))
            return jid

        def release(jid: str) -> None:
            with store.write() as s:
                meter_release(s, s.get(m.Job, jid), ["a"])

        # The give-back first, then the release: still metered.
        usage = ex.hold_query(who["ana"], sub, 0.5)
        jid = job_with(usage)
        with store.write() as s:
            give_back(s, usage)
        release(jid)
        # Then racing, ten times.
        for _ in range(10):
            usage = ex.hold_query(who["ana"], sub, 0.5)
            jid = job_with(usage)
            barrier = threading.Barrier(2)

            def back(u: int = usage, barrier: threading.Barrier = barrier) -> None:
                barrier.wait()
                with store.write() as s:
                    give_back(s, u)

            def meter(j: str = jid, barrier: threading.Barrier = barrier) -> None:
                barrier.wait()
                release(j)

            threads = [threading.Thread(target=back), threading.Thread(target=meter)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        state = ex.subscription_of(who["ana"], p["id"])
        assert (state["used"], state["held"]) == (pytest.approx(5.5), pytest.approx(0.0))
        with store.read() as s:
            rows = s.scalars(__import__("sqlalchemy").select(m.Usage)).all()
            assert [u.state for u in rows] == ["metered"] * 11
            assert sum(u.amount_micros for u in rows) == 11 * 50_000_000
    finally:
        store.close()


def test_a_dropped_request_leaves_the_hold_with_its_running_job(api: Any, world: dict[str, Any],
                                                                 services: Any) -> None:
    """The request's error path does not free the allowance while its job still runs; once the job
    fails without a logged refusal, the hold goes back (``reclaim_ended``); once it is released, it
    is metered."""
    import json
    import time

    from xdp_compute.gateway import models as m
    from xdp_compute.gateway.store import new_id

    ex, who = world["ex"], world["who"]
    p = listed(api, world)
    sub = subscribed(api, world, p["id"])
    usage = ex.hold_query(who["ana"], sub, 0.75)
    jid = new_id()
    with services.store.write() as s:
        s.add(m.Job(id=jid, principal_id=who["ana"].id, kind="query", status="running",
                    spec_json=json.dumps({"subscription": {"id": sub, "usage": usage}}), created_at=time.time(),
                    updated_at=time.time()))
    ex.return_hold_unless_used(usage)  # submit_query's except path: the job is still running
    assert ex.subscription_of(who["ana"], p["id"])["held"] == 0.75
    r = api.post("/v1/queries", json={"sql": "SELECT COUNT(*) FROM patients", "epsilon": 0.5, "dry_run": True,
                                      "subscription": sub}, headers=world["h"]["ana"])
    assert r.status_code == 409, r.text  # the allowance is still the running job's
    with services.store.write() as s:
        s.get(m.Job, jid).status = "failed"
    r = api.post("/v1/queries", json={"sql": "SELECT COUNT(*) FROM patients", "epsilon": 0.5, "dry_run": True,
                                      "subscription": sub}, headers=world["h"]["ana"])
    assert r.status_code == 200, r.text
    assert ex.subscription_of(who["ana"], p["id"])["held"] == 0.0


def test_a_hold_no_job_ever_carried_goes_back_after_a_while(api: Any, world: dict[str, Any], services: Any) -> None:
    """A gateway that stops between holding and creating the job leaves a hold no job carries: it
    goes back once it is older than any request takes (``ORPHAN_AFTER_SECONDS``); an old hold a
    running job carries stays."""
    import json
    import time

    from xdp_compute.gateway import models as m
    from xdp_compute.gateway.metered import ORPHAN_AFTER_SECONDS
    from xdp_compute.gateway.store import new_id

    ex, who = world["ex"], world["who"]
    p = listed(api, world)
    sub = subscribed(api, world, p["id"])
    orphan = ex.hold_query(who["ana"], sub, 0.5)
    carried = ex.hold_query(who["ana"], sub, 0.25)
    old = time.time() - ORPHAN_AFTER_SECONDS - 5
    with services.store.write() as s:
        for u in (orphan, carried):
            s.get(m.Usage, u).created_at = old
        s.add(m.Job(id=new_id(), principal_id=who["ana"].id, kind="query", status="running",
                    spec_json=json.dumps({"subscription": {"id": sub, "usage": carried}}), created_at=old + 0.01,
                    updated_at=old))
    fresh = ex.hold_query(who["ana"], sub, 0.5)  # reclaims first: the orphan's 0.5 makes room for this
    state = ex.subscription_of(who["ana"], p["id"])
    assert state["held"] == pytest.approx(0.75) and fresh not in (orphan, carried)
    with services.store.read() as s:
        assert [s.get(m.Usage, u).state for u in (orphan, carried, fresh)] == ["returned", "held", "held"]
