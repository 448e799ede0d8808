"""The exchange's service (issue #17): products, subscriptions, ``charge_call`` and the settlement
rule, on the store directly (the REST, SDK and CLI paths are tests/e2e/test_exchange_e2e.py)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import example_manifest

from xdp_compute.config import Settings
from xdp_compute.domain.manifest import parse_manifest_text
from xdp_compute.errors import BadRequest, Conflict, Forbidden, NotFound
from xdp_compute.gateway.exchange import (
    AllowanceUsedUp,
    ExchangeService,
    NotSubscribed,
    check_period,
    next_period,
    split_income,
    to_micros,
)
from xdp_compute.gateway.services import Services
from xdp_compute.gateway.store import PrincipalView, Store


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """The store on SQLite and on PostgreSQL: the counters are conditional UPDATEs on both."""
    url = f"sqlite:///{tmp_path / 'x.db'}" if request.param == "sqlite" else request.getfixturevalue("fresh_pg_db")
    s = Store.open(url)
    yield s
    s.close()


def decl() -> dict[str, Any]:
    return parse_manifest_text(example_manifest(), check_files=False).datasets[0].to_dict()


@pytest.fixture
def ex(store: Store) -> ExchangeService:
    return ExchangeService(Services(settings=Settings(db_url="sqlite://"), store=store))


def principal(store: Store, role: str, name: str) -> PrincipalView:
    return store.authenticate(store.create_principal(role, name, "CN-FJ"))


@pytest.fixture
def people(store: Store) -> dict[str, PrincipalView]:
    owner = principal(store, "holder", "siming")
    store.register_node(owner, "a", "CN-FJ", [decl()])
    return {"owner": owner, "other": principal(store, "holder", "huli"),
            "ana": principal(store, "analyst", "ana"), "bob": principal(store, "analyst", "bob")}


def query_product(ex: ExchangeService, owner: PrincipalView, **kw: Any) -> dict[str, Any]:
    body = {"dataset": "patients", "kind": "query", "title": "district counts", "unit_price": 100.0,
            "allowance": 1.0, "shapes": {"aggregates": ["count"], "group_by": ["district"]}, **kw}
    return ex.create_product(owner, body)


def test_only_the_owner_lists_and_the_listing_is_a_log_entry(ex: ExchangeService, people: dict[str, Any]) -> None:
    with pytest.raises(Forbidden, match="only the owner"):
        query_product(ex, people["other"])
    with pytest.raises(NotFound):
        ex.create_product(people["owner"], {"dataset": "nope", "kind": "query", "title": "t", "unit_price": 1.0,
                                            "allowance": 1.0})
    with pytest.raises(BadRequest, match="group_by.*income|income"):
        query_product(ex, people["owner"], shapes={"group_by": ["incomes"]})
    p = query_product(ex, people["owner"])
    entry = ex.svc.release_log.receipt(p["log_index"])["entry"]
    assert entry["kind"] == "product_listed" and entry["product_id"] == p["id"]
    assert entry["unit_price"] == 100.0 and entry["datasets"] == ["patients"]
    assert [x["id"] for x in ex.products(people["ana"])] == [p["id"]]


def test_a_lookup_product_needs_the_datasets_opt_in(ex: ExchangeService, people: dict[str, Any]) -> None:
    with pytest.raises(BadRequest, match="not open to hidden lookups"):
        ex.create_product(people["owner"], {"dataset": "patients", "kind": "lookup", "title": "who",
                                            "unit_price": 2.0, "allowance": 3, "columns": ["age"]})


def test_subscribe_approve_and_only_the_owner_decides(ex: ExchangeService, people: dict[str, Any]) -> None:
    p = query_product(ex, people["owner"])
    sub = ex.subscribe(people["ana"], p["id"])
    assert sub["status"] == "pending" and ex.subscribe(people["ana"], p["id"])["id"] == sub["id"]
    with pytest.raises(Conflict):
        ex.subscribe(people["owner"], p["id"])
    with pytest.raises(NotFound):
        ex.decide(people["other"], sub["id"], True, None)
    done = ex.decide(people["owner"], sub["id"], True, "ok")
    assert done["status"] == "approved"
    with pytest.raises(Conflict, match="already approved"):
        ex.decide(people["owner"], sub["id"], False, None)
    assert [s["id"] for s in ex.subscriptions(people["owner"])] == [sub["id"]]
    assert ex.subscriptions(people["bob"]) == []
    # A rejected subscription holds nothing and runs nothing; the decision and its reason are logged.
    bobs = ex.subscribe(people["bob"], p["id"])
    rejected = ex.decide(people["owner"], bobs["id"], False, "not for marketing")
    assert (rejected["status"], rejected["reason"]) == ("rejected", "not for marketing")
    with pytest.raises(NotSubscribed, match="rejected"):
        ex.check_query(people["bob"], bobs["id"], "patients", None, False, 0.1)
    with pytest.raises(NotFound):  # another analyst's subscription is not yours to use
        ex.check_query(people["bob"], sub["id"], "patients", None, False, 0.1)
    entry = ex.svc.release_log.receipt(ex.svc.release_log.committed_size - 1)["entry"]
    assert (entry["kind"], entry["decision"], entry["subscriber"]) == ("subscription_decided", "rejected", "bob")


def lookup_product(ex: ExchangeService, store: Store, owner: PrincipalView, calls: int) -> str:
    """A lookup product written straight to the store (the opt-in is the lookup part's manifest table)."""
    import json
    import time

    from xdp_compute.gateway import models as m

    with store.write() as s:
        s.add(m.Product(id="lk1", dataset_name="patients", owner_id=owner.id, kind="lookup", title="who",
                        description="", unit="call", unit_price=2.5, allowance=float(calls),
                        terms_json=json.dumps({"columns": ["age"]}), log_index=0, created_at=time.time()))
    return "lk1"


def test_charge_call_counts_exactly_the_allowance_under_concurrency(ex: ExchangeService, store: Store,
                                                                    people: dict[str, Any]) -> None:
    pid = lookup_product(ex, store, people["owner"], calls=5)
    with pytest.raises(NotFound):
        ex.charge_call(people["ana"].id, "nope", "lookup")
    with pytest.raises(NotFound):
        ex.charge_call(people["ana"].id, pid, "query")  # a product of another kind
    with pytest.raises(NotSubscribed):
        ex.charge_call(people["ana"].id, pid, "lookup")
    sub = ex.subscribe(people["ana"], pid)
    with pytest.raises(NotSubscribed, match="pending"):
        ex.charge_call(people["ana"].name, pid, "lookup")
    ex.decide(people["owner"], sub["id"], True, None)
    results: list[Any] = []

    def call() -> None:
        try:
            results.append(ex.charge_call(people["ana"].id, pid, "lookup"))
        except AllowanceUsedUp as e:
            results.append(e)

    threads = [threading.Thread(target=call) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    grants = [r for r in results if not isinstance(r, Exception)]
    assert len(grants) == 5 and sum(isinstance(r, AllowanceUsedUp) for r in results) == 3
    g = grants[0]
    assert (g.dataset, g.columns, g.unit_price, g.subscription_id) == ("patients", ("age",), 2.5, sub["id"])
    assert AllowanceUsedUp("x").status == 409
    assert ex.subscription_of(people["ana"], pid)["used"] == 5


def test_settlement_rule_splits_exactly_and_periods() -> None:
    shares = split_income(1_000_001, ["b", "a", "c"])
    assert shares == {"a": 333_334, "b": 333_334, "c": 333_333} and sum(shares.values()) == 1_000_001
    assert split_income(10, []) == {}
    assert to_micros(0.5, 100.0) == 50_000_000 and to_micros(1 / 3, 3.0) == 1_000_000
    assert next_period("2026-12") == "2027-01" and next_period("2026-01") == "2026-02"
    with pytest.raises(BadRequest):
        check_period("2026-13")
    with pytest.raises(BadRequest):
        check_period("26-1")


def job_under(store: Store, who: PrincipalView, sub_id: str, usage: int) -> str:
    """A running job row that carries a subscription hold, as ``ExchangeService.submit_query`` stores it."""
    import json
    import time

    from xdp_compute.gateway import models as m
    from xdp_compute.gateway.store import new_id

    jid = new_id()
    with store.write() as s:
        s.add(m.Job(id=jid, principal_id=who.id, kind="query", status="running",
                    spec_json=json.dumps({"subscription": {"id": sub_id, "usage": usage}}), created_at=time.time(),
                    updated_at=time.time()))
    return jid


def test_query_holds_never_exceed_the_allowance_and_are_metered_or_given_back(
        ex: ExchangeService, store: Store, people: dict[str, Any]) -> None:
    import time

    from xdp_compute.gateway.metered import meter_release, period_of
    from xdp_compute.gateway.release import FAILED

    p = query_product(ex, people["owner"])  # 100 per epsilon, 1.0 epsilon per subscriber
    sub = ex.subscribe(people["ana"], p["id"])["id"]
    ex.decide(people["owner"], sub, True, None)
    holds: list[Any] = []

    def hold() -> None:
        try:
            holds.append(ex.hold_query(people["ana"], sub, 0.3))
        except AllowanceUsedUp as e:
            holds.append(e)

    threads = [threading.Thread(target=hold) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids = [h for h in holds if isinstance(h, int)]
    assert len(ids) == 3 and ex.subscription_of(people["ana"], p["id"])["held"] == pytest.approx(0.9)

    # A job that releases nothing (a refusal) gives its hold back, once.
    failed = job_under(store, people["ana"], sub, ids[0])
    ex.svc.gate.refuse(failed, "ana", None, FAILED, "nodes went silent", refund=True)
    ex.svc.gate.refuse(failed, "ana", None, FAILED, "again", refund=True)
    assert ex.subscription_of(people["ana"], p["id"])["held"] == pytest.approx(0.6)

    # A released job is metered: used, priced, in this period, with its nodes' holders as parties.
    released = job_under(store, people["ana"], sub, ids[1])
    from xdp_compute.gateway import models as m

    with store.write() as s:
        charge = meter_release(s, s.get(m.Job, released), ["a"])
    assert charge is not None and charge["amount_micros"] == 30_000_000 and charge["period"] == period_of(time.time())
    # An idempotent retry's own hold goes back; the hold its job carries stays.
    ex.return_hold_unless_used(ids[2], released)
    ex.return_hold_unless_used(ids[1], released)
    state = ex.subscription_of(people["ana"], p["id"])
    assert (state["used"], state["held"]) == (pytest.approx(0.3), pytest.approx(0.0))
    [payer, earner] = ex.statements(people["ana"], period_of(time.time())) + \
        ex.statements(people["owner"], period_of(time.time()))
    assert (payer["side"], payer["total_micros"], earner["side"], earner["total_micros"]) == \
        ("subscriber", 30_000_000, "holder", 30_000_000)


def test_a_lookup_product_on_an_opted_in_dataset_takes_only_its_columns(ex: ExchangeService, store: Store) -> None:
    text = example_manifest().replace("[datasets.columns]", '[datasets.lookup]\nkey = "name"\ncolumns = ["age"]\ncapacity = 1000\n\n'
                                      "[datasets.columns]")
    owner = principal(store, "holder", "siming")
    store.register_node(owner, "a", "CN-FJ", [parse_manifest_text(text, check_files=False).datasets[0].to_dict()])
    body = {"dataset": "patients", "kind": "lookup", "title": "age by name", "unit_price": 2.0, "allowance": 10}
    with pytest.raises(BadRequest, match="not opened to lookups.*income"):
        ex.create_product(owner, {**body, "columns": ["age", "income"]})
    with pytest.raises(BadRequest, match="whole number"):
        ex.create_product(owner, {**body, "allowance": 2.5})
    p = ex.create_product(owner, body)
    assert (p["unit"], p["terms"]["columns"]) == ("call", ["age"])
