"""Scoring a linear model end to end: DP feature sums released, weights applied in the SDK only."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from e2e_helpers import Hospitals, start_hospitals

from xdp_compute.errors import XdpError


@pytest.fixture(scope="module")
def hospitals(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hospitals]:
    capture = tmp_path_factory.mktemp("capture") / "grpc.tsv"
    h = start_hospitals(tmp_path_factory.mktemp("score"), n=3, rows=150, min_group=0,
                        gateway_env={"XDP_GRPC_CAPTURE": str(capture)})
    h.capture = capture  # type: ignore[attr-defined]
    try:
        yield h
    finally:
        h.cluster.close()


def _rows(h: Hospitals) -> list[dict[str, str]]:
    return [r for text in h.files.values() for r in csv.DictReader(io.StringIO(text))]


def test_scores_are_the_weights_applied_to_the_released_sums(hospitals: Hospitals) -> None:
    w, b = [0.013, -0.0021], 0.5
    with hospitals.analyst() as a:
        r = a.score("visits", features=["age", "cost"], weights=w, bias=b, group_by=["clinic"], epsilon=1.0,
                    where="age >= 18", level=1 - 1e-7)
        assert a.verify_receipt(r)
    released = r.delivery["result"]
    assert [row["clinic"] for row in r.rows] == ["north", "south", "east"]
    rows = _rows(hospitals)
    for row, iv, raw in zip(r.rows, r.intervals, released["rows"], strict=True):
        # Exactly post-processing of what was released: mean of w.x + b from the noisy sums.
        expect = (w[0] * raw["sum_age"] + w[1] * raw["sum_cost"]) / raw["n"] + b
        lo_b, hi_b = b + w[1] * 1000, b + w[0] * 100
        assert row["score"] == pytest.approx(min(max(expect, lo_b), hi_b), rel=1e-6, abs=1e-6)
        mine = [w[0] * int(x["age"]) + w[1] * float(x["cost"]) + b for x in rows
                if x["clinic"] == row["clinic"] and int(x["age"]) >= 18]
        true = float(np.mean(mine))
        # At level 1 - 1e-7 a correct interval misses the truth less than once in 10^6 runs.
        assert iv["score"][0] <= true <= iv["score"][1], (row, iv, true)
    # What left is a plain federated query: the SQL, its counts and sums, nothing else.
    assert set(released["columns"]) == {"clinic", "n", "sum_age", "sum_cost"}
    assert r.delivery["score_sql"].startswith("SELECT clinic, COUNT(*) AS n, SUM(age) AS sum_age")


def test_the_weights_never_leave_the_analyst(hospitals: Hospitals) -> None:
    import sqlite3

    weights = [0.123456789, 0.000987654321]
    with hospitals.analyst() as a:
        r = a.score("visits", features=["age", "cost"], weights=weights, bias=0.4242, epsilon=0.5)
    assert r.rows[0]["score"] is not None
    with sqlite3.connect(hospitals.cluster.root / "gateway.db") as c:
        stored = " ".join(json.dumps(x) for x in c.execute("SELECT * FROM jobs").fetchall())
    captured = hospitals.capture.read_text(errors="replace")  # type: ignore[attr-defined]
    for needle in ("0.123456789", "0.000987654321", "0.4242", "123456789"):
        assert needle not in stored and needle not in captured


def test_noise_does_not_depend_on_the_weights(hospitals: Hospitals) -> None:
    # The noise is the plan's (holders' bounds and policy), whatever weights the analyst uses:
    # huge weights scale the error up with them instead of shrinking the noise.
    sds = []
    with hospitals.analyst() as a:
        for w in ([1e-9, 1e-9], [1e4, 1e4]):
            r = a.score("visits", features=["age", "cost"], weights=w, epsilon=0.5)
            sds.append(r.delivery["result"]["noise_sd"])
    assert sds[0] == sds[1]
    assert sds[0]["sum_cost"] > 1.0 and sds[0]["n"] > 0.5


@pytest.mark.parametrize("over, status, words", [
    ({"score_bound": 1e-9}, 400, "secret-weights"),
    ({"context": "AAAA", "weights": "AAAA"}, 400, "secret-weights"),
    ({"features": ["note"]}, 400, "note"),
    ({"features": ["age", "age"]}, 400, "distinct"),
    ({"group_by": ["age"], "features": ["age"]}, 400, "feature"),
    ({"features": ["age; DROP TABLE x"]}, 400, "identifier"),
    ({"epsilon": 40.0}, 403, "per-query cap"),
])
def test_bad_score_requests_are_4xx_and_gateway_stays_up(hospitals: Hospitals, over: dict[str, object],
                                                        status: int, words: str) -> None:
    body: dict[str, object] = {"dataset": "visits", "features": ["age"], "epsilon": 1.0}
    body.update(over)
    with hospitals.analyst() as a:
        with pytest.raises(XdpError) as e:
            a._post("/v1/scores", json=body)
        assert e.value.status == status, e.value.detail
        assert words.lower() in e.value.detail.lower(), e.value.detail
        assert a.me()["role"] == "analyst" and hospitals.cluster.procs["gateway"].alive()


def test_dry_run_shows_the_query_and_its_cost(hospitals: Hospitals) -> None:
    r = httpx.post(hospitals.cluster.url + "/v1/scores", timeout=60,
                   headers={"authorization": f"Bearer {hospitals.tokens['analyst']}"},
                   json={"dataset": "visits", "features": ["age", "cost"], "group_by": ["clinic"],
                         "epsilon": 1.0, "dry_run": True})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["dry_run"] and out["allowed"] and out["cost"]["epsilon"] <= 1.0
    assert out["plan"]["measurements"] == ["count", "sum(age)", "sum(cost)"]
    assert "GROUP BY clinic" in out["score_sql"]
