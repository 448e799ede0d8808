"""A hidden lookup's call on the store (issue #17 follow-up): held before the node is asked, metered
once it answered, given back if it did not. ``gateway/lookup.py`` drives these; the REST path is
tests/e2e/test_lookup_attacks_e2e.py."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_exchange import decl, principal

from xdp_compute.config import Settings
from xdp_compute.gateway import models as m
from xdp_compute.gateway.exchange import AllowanceUsedUp, ExchangeService
from xdp_compute.gateway.metered import give_back, meter_call
from xdp_compute.gateway.services import Services
from xdp_compute.gateway.store import Store


@pytest.fixture(params=["sqlite", "postgres"])
def ex(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ExchangeService]:
    url = f"sqlite:///{tmp_path / 'x.db'}" if request.param == "sqlite" else request.getfixturevalue("fresh_pg_db")
    store = Store.open(url)
    yield ExchangeService(Services(settings=Settings(db_url="sqlite://"), store=store))
    store.close()


def subscribed(ex: ExchangeService, calls: int) -> tuple[str, Any]:
    owner, ana = principal(ex.store, "holder", "siming"), principal(ex.store, "analyst", "ana")
    ex.store.register_node(owner, "a", "CN-FJ", [decl()])
    with ex.store.write() as s:
        s.add(m.Product(id="lk1", dataset_name="patients", owner_id=owner.id, kind="lookup", title="who",
                        description="", unit="call", unit_price=2.5, allowance=float(calls),
                        terms_json=json.dumps({"columns": ["age"]}), log_index=0, created_at=time.time()))
    sub = ex.subscribe(ana, "lk1")["id"]
    ex.decide(owner, sub, True, None)
    return sub, ana


def test_holds_count_exactly_the_allowance_under_concurrency_and_a_give_back_frees_one(ex: ExchangeService) -> None:
    sub, ana = subscribed(ex, calls=5)
    out: list[Any] = []
    barrier = threading.Barrier(8)

    def call() -> None:
        barrier.wait()
        try:
            out.append(ex.hold_units(sub, 1.0))
        except AllowanceUsedUp as e:
            out.append(e)

    threads = [threading.Thread(target=call) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    holds = [x for x in out if isinstance(x, int)]
    assert len(holds) == 5 and sum(isinstance(x, AllowanceUsedUp) for x in out) == 3
    # The node answered three calls and failed two: three metered, two given back.
    with ex.store.write() as s:
        metered = [meter_call(s, h) for h in holds[:3]]
        for h in holds[3:]:
            give_back(s, h)
    assert [x["calls_left"] for x in metered] == [0.0, 0.0, 0.0]  # two units still held while metering
    assert all(x["unit_price"] == 2.5 and x["subscription"] == sub for x in metered)
    state = ex.subscription_of(ana, "lk1")
    assert (state["used"], state["held"], state["left"]) == (3.0, 0.0, 2.0)
    with ex.store.read() as s:
        rows = {u.id: u for u in s.query(m.Usage).all()}
    assert [rows[h].state for h in holds] == ["metered"] * 3 + ["returned"] * 2
    assert all(rows[h].amount_micros == 2_500_000 and rows[h].period for h in holds[:3])
    # A given-back unit is not metered afterwards (the answer would go uncounted): the caller answers nothing.
    with ex.store.write() as s:
        assert meter_call(s, holds[3]) is None and meter_call(s, holds[0]) is None
    assert ex.subscription_of(ana, "lk1")["used"] == 3.0
