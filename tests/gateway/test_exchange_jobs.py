"""Scores and trainings under scoring and model products (issue #17), over REST in process.

No node runs here: every case is refused before anything is reserved (or is a dry run), and each
asserts that nothing was held on the subscription, reserved on the ledger or created as a job. The
metered runs are tests/e2e/test_exchange_jobs_e2e.py.
"""

from __future__ import annotations

from typing import Any

import pytest
from conftest import example_manifest

from xdp_compute.domain.manifest import parse_manifest_text
from xdp_compute.gateway import models as m
from xdp_compute.gateway.exchange import ExchangeService

MAX_ROWS = 700  # the node's declared max_rows: what one score is metered for
SCORE = {"dataset": "patients", "features": ["age"], "group_by": ["district"], "epsilon": 0.5}
TRAIN = {"dataset": "patients", "model": "logreg", "features": ["age", "income"], "label": "sick", "rounds": 1,
         "target_epsilon": 1.0}


@pytest.fixture
def x(api: Any, store: Any, services: Any) -> dict[str, Any]:
    text = example_manifest(budget=10.0).replace(
        'name     = { type = "text",     uses = [] }',
        'name     = { type = "text",     uses = [] }\nsick     = { type = "bool", uses = ["aggregate"] }'
    ).replace("min_group_size", f"max_rows = {MAX_ROWS}\nmin_group_size")
    owner_token = store.create_principal("holder", "siming", "CN-FJ")
    owner = store.authenticate(owner_token)
    store.register_node(owner, "siming-hospital", "CN-FJ", [parse_manifest_text(text, check_files=False)
                                                            .datasets[0].to_dict()])
    ana, bob = (store.create_principal("analyst", n, "CN-FJ") for n in ("ana", "bob"))
    return {"owner": owner, "ex": ExchangeService(services), "store": store, "api": api,
            "ana": {"authorization": "Bearer " + ana}, "bob": {"authorization": "Bearer " + bob},
            "ana_p": store.authenticate(ana), "bob_p": store.authenticate(bob)}


def product(x: dict[str, Any], kind: str, allowance: float, **kw: Any) -> str:
    body = {"dataset": "patients", "kind": kind, "title": f"{kind} on patients", "unit_price": 0.01,
            "allowance": allowance, **kw}
    return str(x["ex"].create_product(x["owner"], body)["id"])


def subscribed(x: dict[str, Any], product_id: str, who: str = "ana", approve: bool = True) -> str:
    sub = x["ex"].subscribe(x[f"{who}_p"], product_id)
    if approve:
        x["ex"].decide(x["owner"], sub["id"], True, None)
    return str(sub["id"])


def nothing_reserved(x: dict[str, Any]) -> None:
    """No job, no budget reserved or spent on the ledger, no subscription units held or used."""
    with x["store"].read() as s:
        assert s.query(m.Job).count() == 0
        subs = s.query(m.Subscription).all()
        assert all(sub.held == 0 and sub.used == 0 for sub in subs)
    [part] = x["store"].lookup_parts("patients")
    assert part["eps_reserved"] == 0 and part["eps_spent"] == 0


def post(x: dict[str, Any], path: str, body: dict[str, Any], who: str = "ana") -> Any:
    return x["api"].post(path, json=body, headers=x[who])


@pytest.mark.parametrize("kind", ["query", "scoring", "model"])
def test_a_dataset_that_sells_jobs_refuses_unsubscribed_scores_and_trainings(x: dict[str, Any], kind: str) -> None:
    product(x, kind, 10.0)
    for path, body in (("/v1/scores", SCORE), ("/v1/trainings", TRAIN)):
        r = post(x, path, body)
        assert r.status_code == 403, r.text
        assert r.json()["type"].endswith("not-subscribed") and "under a subscription" in r.json()["detail"]
    # A score is a DP query of feature sums: with its scores sold, the same sums are not free either.
    # (A model product leaves queries alone: no query computes a trained model.)
    if kind != "model":
        r = post(x, "/v1/queries", {"sql": "SELECT district, SUM(age) FROM patients GROUP BY district",
                                    "epsilon": 0.5})
        assert r.status_code == 403, r.text
    nothing_reserved(x)
    # Dry runs stay free.
    r = post(x, "/v1/scores", {**SCORE, "dry_run": True})
    assert r.status_code == 200 and r.json()["score_sql"].startswith("SELECT district")


def test_a_score_under_its_subscription_is_refused_before_anything_is_reserved(x: dict[str, Any]) -> None:
    scoring = product(x, "scoring", 2.5 * MAX_ROWS, columns=["age", "district"])
    query = product(x, "query", 1.0)
    mine = subscribed(x, scoring)
    bobs = subscribed(x, scoring, "bob")
    pending = subscribed(x, query, approve=False)
    cases = [
        ({"subscription": bobs}, 404, "no subscription"),  # another analyst's subscription
        ({"subscription": scoring}, 404, "no subscription"),  # a product id is not a subscription
        ({"subscription": pending}, 403, "pending"),
        ({"features": ["income"], "subscription": mine}, 400, "income"),  # outside the product's columns
        ({"where": "age > 30", "features": ["age"], "group_by": [], "subscription": mine}, 200, ""),
    ]
    for change, status, words in cases[:4]:
        r = post(x, "/v1/scores", {**SCORE, **change})
        assert r.status_code == status, r.text
        assert words in r.json()["detail"]
        assert r.headers["content-type"].startswith("application/problem+json")
    x["ex"].decide(x["owner"], pending, True, None)
    r = post(x, "/v1/scores", {**SCORE, "subscription": pending})  # a query product's subscription
    assert r.status_code == 400 and "scoring product" in r.json()["detail"], r.text
    nothing_reserved(x)
    # The dry run under the subscription says what the score would be metered for, and holds nothing.
    r = post(x, "/v1/scores", {**SCORE, "dry_run": True, "subscription": mine})
    assert r.status_code == 200, r.text
    assert r.json()["subscription"] == {"id": mine, "units": float(MAX_ROWS)}
    nothing_reserved(x)


def test_the_rows_metered_are_the_declared_size_whatever_the_where(x: dict[str, Any]) -> None:
    """The observable rule: the units do not depend on how many rows exist or match."""
    mine = subscribed(x, product(x, "scoring", 10 * MAX_ROWS))
    units = set()
    for where in (None, "age > 200", "age >= 0", "district = 'Huli'"):
        r = post(x, "/v1/scores", {**SCORE, "where": where, "dry_run": True, "subscription": mine})
        assert r.status_code == 200, r.text
        units.add(r.json()["subscription"]["units"])
    assert units == {float(MAX_ROWS)}


def test_past_the_allowance_a_score_is_refused_with_nothing_reserved(x: dict[str, Any]) -> None:
    mine = subscribed(x, product(x, "scoring", MAX_ROWS - 1))  # less than one score's rows
    r = post(x, "/v1/scores", {**SCORE, "subscription": mine})
    assert r.status_code == 409 and r.json()["type"].endswith("allowance-used-up"), r.text
    assert f"needs {MAX_ROWS}" in r.json()["detail"]
    nothing_reserved(x)


def test_a_training_under_its_subscription_is_checked_and_its_hold_given_back_on_refusal(
        x: dict[str, Any]) -> None:
    model = product(x, "model", 1.0, columns=["age", "income", "sick"])
    scoring = product(x, "scoring", 10 * MAX_ROWS)
    mine, bobs, wrong = subscribed(x, model), subscribed(x, model, "bob"), subscribed(x, scoring)
    for change, status, words in (
            ({"subscription": bobs}, 404, "no subscription"),
            ({"subscription": wrong}, 400, "model product"),  # a scoring subscription for a training
            ({"features": ["age", "district"], "subscription": mine}, 400, "district"),
            ({"where": "district = 'Huli'", "subscription": mine}, 400, "district")):  # WHERE column outside
        r = post(x, "/v1/trainings", {**TRAIN, **change})
        assert r.status_code == status, r.text
        assert words in r.json()["detail"]
    nothing_reserved(x)
    # Held, then the policy refuses it (past the per-dataset cap): the hold goes back, nothing is used.
    r = post(x, "/v1/trainings", {**TRAIN, "target_epsilon": 50.0, "subscription": mine})
    assert r.status_code == 403 and "epsilon_cap" in r.text, r.text
    state = x["ex"].subscription_of(x["ana_p"], model)
    assert (state["held"], state["used"], state["left"]) == (0.0, 0.0, 1.0)


def test_subscription_field_is_validated_at_the_border(x: dict[str, Any]) -> None:
    for path, body in (("/v1/scores", SCORE), ("/v1/trainings", TRAIN)):
        for bad in ("", "x" * 65, 7):
            r = post(x, path, {**body, "subscription": bad})
            assert r.status_code == 422, r.text


def test_a_score_that_fails_after_its_hold_gives_it_back(x: dict[str, Any]) -> None:
    """Held, its job created, then secure aggregation aborts (no node answers here): the refusal
    gives the hold back in its own transaction, and nothing is metered."""
    scoring = product(x, "scoring", 3 * MAX_ROWS)
    mine = subscribed(x, scoring)
    r = post(x, "/v1/scores", {**SCORE, "subscription": mine})
    assert r.status_code == 503 and r.json()["type"].endswith("protocol-aborted"), r.text
    state = x["ex"].subscription_of(x["ana_p"], scoring)
    assert (state["held"], state["used"], state["left"]) == (0.0, 0.0, 3.0 * MAX_ROWS)
    with x["store"].read() as s:
        [usage] = s.query(m.Usage).all()
        [job] = s.query(m.Job).all()
    assert (usage.state, usage.amount_micros, job.status) == ("returned", 0, "failed")
