"""Scores and trainings under scoring and model products, end to end (issue #17).

A real gateway and two holders' nodes on loopback (``clinic-0-holder`` owns ``visits``,
``clinic-1-holder`` adds its rows as a member). The tests run in order: scores metered per row of
the plan's declared size, one small training metered per call, raw-REST attacks, and the
statements of the period, whose totals equal the metered usage.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from e2e_helpers import Hospitals, start_hospitals

from xdp_compute.domain.manifest import DEFAULT_MAX_ROWS
from xdp_compute.errors import BadRequest, Conflict, Forbidden

pytestmark = pytest.mark.slow
ROWS_PER_SCORE = 2 * DEFAULT_MAX_ROWS  # two nodes, each declaring the default max_rows
ROW_PRICE = 1e-6
TRAIN = {"model": "linreg", "features": ["age"], "label": "cost", "rounds": 1, "target_epsilon": 1.0}


@pytest.fixture(scope="module")
def h(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hospitals]:
    hospitals = start_hospitals(tmp_path_factory.mktemp("exjobs"), n=2, rows=200, budget=100.0, min_group=5)
    try:
        yield hospitals
    finally:
        hospitals.cluster.close()


def owner(h: Hospitals) -> Any:
    return h.cluster.client(h.tokens["clinic-0"])


def rest(h: Hospitals, token: str, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(h.cluster.url + path, json=body, headers={"authorization": f"Bearer {token}"}, timeout=300)


def budget_of(c: Any) -> tuple[float, float]:
    b = c.budget("visits")
    return b.analyst["epsilon_spent"], b.analyst["epsilon_reserved"]


STATE: dict[str, Any] = {}


def test_scores_run_under_a_scoring_product_metered_per_declared_row(h: Hospitals) -> None:
    with owner(h) as c:
        product = c.create_product("visits", "scoring", "Visit scores", unit_price=ROW_PRICE,
                                   allowance=2.5 * ROWS_PER_SCORE, columns=["age", "cost", "clinic"])
    assert product.unit == "row"
    with h.analyst() as a:
        # Its owner sells scores on `visits` now: outside a subscription a score is refused (403).
        with pytest.raises(Forbidden, match="under a subscription"):
            a.score("visits", features=["age"], weights=[0.1], epsilon=0.5)
        sub = a.subscribe(product.id)
    with owner(h) as c:
        c.approve_subscription(sub.id)
    with h.analyst() as a:
        scored = [a.score("visits", features=["age", "cost"], weights=[0.1, 0.01], group_by=["clinic"],
                          epsilon=0.5, subscription=sub.id) for _ in range(2)]
        spent, reserved = budget_of(a)
        # A third would pass the allowance (2.5 scores' rows): refused, nothing reserved or held.
        with pytest.raises(Conflict, match=f"needs {ROWS_PER_SCORE}"):
            a.score("visits", features=["age"], weights=[0.1], epsilon=0.5, subscription=sub.id)
        assert budget_of(a) == (spent, reserved)
        [state] = [s for s in a.subscriptions() if s.id == sub.id]
        assert (state.used, state.held) == (2 * ROWS_PER_SCORE, 0)
    for r in scored:
        assert r.rows and all(row["score"] is not None for row in r.rows)
        charge = r.delivery["receipt"]["entry"]["subscription"]
        # The declared size, not the 400 rows the nodes hold: the amount is the same for any data.
        assert (charge["id"], charge["units"], charge["unit"]) == (sub.id, ROWS_PER_SCORE, "row")
        assert charge["amount_micros"] == round(ROWS_PER_SCORE * ROW_PRICE * 1_000_000)
    STATE["scoring"] = (product.id, sub.id)


@pytest.mark.slow
def test_one_training_runs_under_a_model_product_metered_per_call(h: Hospitals) -> None:
    with owner(h) as c:
        product = c.create_product("visits", "model", "Cost model", unit_price=50.0, allowance=1.0,
                                   columns=["age", "cost"])
    with h.analyst() as a:
        with pytest.raises(Forbidden, match="under a subscription"):
            a.train("visits", **TRAIN)
        sub = a.subscribe(product.id)
    with owner(h) as c:
        c.approve_subscription(sub.id)
    with h.analyst() as a:
        job = a.train("visits", subscription=sub.id, **TRAIN).wait(progress=False)
        assert job.model_card()["dataset"] == "visits"
        with h.cluster.client(h.tokens["auditor"]) as aud:
            [entry] = [e for e in aud.audit_entries(kind="released") if e.get("job_id") == job.job_id]
        charge = entry["subscription"]
        assert (charge["id"], charge["units"], charge["unit"], charge["amount_micros"]) == \
            (sub.id, 1.0, "call", 50_000_000)
        spent, reserved = budget_of(a)
        with pytest.raises(Conflict, match="0 call"):  # one call was the whole allowance
            a.train("visits", subscription=sub.id, **TRAIN)
        assert budget_of(a) == (spent, reserved)
        [state] = [s for s in a.subscriptions() if s.id == sub.id]
        assert (state.used, state.held) == (1.0, 0)
        # The same refusal through the CLI: one line, the conflict exit code, nothing reserved.
        env = {k: v for k, v in os.environ.items() if not k.startswith("XDP_")}
        env.update({"XDP_URL": h.cluster.url, "XDP_TOKEN": h.tokens["analyst"]})
        r = subprocess.run([sys.executable, "-m", "xdp_compute", "train", "visits", "--model", "linreg",
                            "--features", "age", "--label", "cost", "--rounds", "1", "--subscription", sub.id],
                           capture_output=True, text=True, check=False, timeout=180, env=env)
        assert r.returncode == 9 and r.stderr.startswith("error: ") and "left of 1" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr and budget_of(a) == (spent, reserved)
    STATE["model"] = (product.id, sub.id)


def test_raw_rest_attacks_on_job_subscriptions(h: Hospitals) -> None:
    """Around the SDK: another analyst's subscription, a query product's subscription used for a
    score, a scoring subscription used for a training; each refused before anything is held."""
    _, scoring_sub = STATE["scoring"]
    with owner(h) as c:
        query = c.create_product("visits", "query", "Counts", unit_price=1.0, allowance=1.0)
    with h.analyst() as a:
        query_sub = a.subscribe(query.id)
    with owner(h) as c:
        c.approve_subscription(query_sub.id)
    rival = h.cluster.token("analyst", "rival")
    with h.analyst() as a:
        before = (budget_of(a), [(s.id, s.used, s.held) for s in a.subscriptions()])
    score = {"dataset": "visits", "features": ["age"], "epsilon": 0.5}
    r = rest(h, rival, "/v1/scores", {**score, "subscription": scoring_sub})
    assert r.status_code == 404 and "no subscription" in r.json()["detail"], r.text
    r = rest(h, h.tokens["analyst"], "/v1/scores", {**score, "subscription": query_sub.id})
    assert r.status_code == 400 and "scoring product" in r.json()["detail"], r.text
    r = rest(h, h.tokens["analyst"], "/v1/trainings", {"dataset": "visits", **TRAIN, "subscription": scoring_sub})
    assert r.status_code == 400 and "model product" in r.json()["detail"], r.text
    r = rest(h, h.tokens["analyst"], "/v1/scores", {**score, "features": ["note"], "subscription": scoring_sub})
    assert r.status_code == 400, r.text
    r = rest(h, h.tokens["analyst"], "/v1/scores", {**score, "subscription": scoring_sub, "extra": 1})
    assert r.status_code == 422, r.text
    with h.analyst() as a:
        assert (budget_of(a), [(s.id, s.used, s.held) for s in a.subscriptions()]) == before
        with pytest.raises(BadRequest):  # the SDK says the same as REST
            a.score("visits", features=["age"], weights=[1.0], epsilon=0.5, subscription=query_sub.id)


def test_statements_equal_the_metered_scores_and_training(h: Hospitals) -> None:
    import time

    from xdp_compute.gateway.exchange import period_of

    period = period_of(time.time())
    with h.cluster.client(h.tokens["auditor"]) as aud:
        released = [e for e in aud.audit_entries(kind="released") if e.get("subscription")]
        statements = aud.statements(period)
    metered = sum(e["subscription"]["amount_micros"] for e in released)
    kinds = sorted(e["operation"] for e in released)
    assert kinds.count("training") == (1 if "model" in STATE else 0) and len(released) >= 2
    expected = 2 * round(ROWS_PER_SCORE * ROW_PRICE * 1_000_000) + (50_000_000 if "model" in STATE else 0)
    assert metered == expected
    for side in ("subscriber", "holder"):
        assert sum(s.total_micros for s in statements if s.side == side) == metered
    [payer] = [s for s in statements if s.side == "subscriber"]
    assert payer.party == "analyst"
    assert sorted(i for line in payer.lines for i in line.log_indexes) == sorted(e["index"] for e in released)
    by_kind = {line.kind: line for line in payer.lines}
    assert by_kind["scoring"].units == 2 * ROWS_PER_SCORE and by_kind["scoring"].uses == 2
