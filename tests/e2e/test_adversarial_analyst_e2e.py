"""An adversarial analyst against real node processes (issue #11): attacks that must not work.

Each test sends what an analyst can send — through the SDK or raw REST around it — and checks
that it extracts nothing beyond what the holders' policy promises.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from e2e_helpers import Hospitals, start_hospitals

from xdp_compute.domain.manifest import DEFAULT_MAX_EPSILON_PER_QUERY
from xdp_compute.errors import PolicyDenied

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def hospitals(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hospitals]:
    h = start_hospitals(tmp_path_factory.mktemp("adversary"), rows=300, budget=1000.0)
    try:
        yield h
    finally:
        h.cluster.close()


def _budget_spent(h: Hospitals) -> list[float]:
    with h.analyst() as a:
        return [n["epsilon_spent"] + n["epsilon_reserved"] for n in a.budget("visits")["nodes"]]


def test_differencing_at_a_huge_epsilon_is_refused_by_the_per_query_cap(hospitals: Hospitals) -> None:
    # The attack of issue #11 item 6: two queries at epsilon 40 that differ in one row's
    # membership would reveal it (the difference of the two noisy counts is that row, +-0.05).
    # Before the cap they were answered and charged 40 each; now both are refused, unplanned.
    before = _budget_spent(hospitals)
    pair = ["SELECT COUNT(*) AS n FROM visits WHERE age > 30",
            "SELECT COUNT(*) AS n FROM visits WHERE age > 30 AND age <> 57"]
    url = hospitals.cluster.url + "/v1/queries"
    headers = {"authorization": f"Bearer {hospitals.tokens['analyst']}"}
    for sql in pair:
        # Raw REST around the SDK, exactly as an adversary would send it.
        r = httpx.post(url, json={"sql": sql, "epsilon": 40.0}, headers=headers, timeout=60)
        assert r.status_code == 403, r.text
        problem = r.json()
        assert problem["rule"] == "epsilon_cap" and "per-query cap" in problem["detail"]
        assert str(DEFAULT_MAX_EPSILON_PER_QUERY).rstrip("0").rstrip(".") in problem["detail"]
    # Nothing was reserved or charged for the refused pair.
    assert _budget_spent(hospitals) == pytest.approx(before, abs=1e-12)
    # The dry run names the rule too, before anything is spent.
    with hospitals.analyst() as a:
        plan = a.query(pair[0], epsilon=40.0, dry_run=True)
        cap = [d for d in plan["decisions"] if d["rule"] == "epsilon_cap"]
        assert not plan["allowed"] and cap and not cap[0]["allowed"]
        with pytest.raises(PolicyDenied, match="per-query cap"):
            a.query(pair[1], epsilon=40.0)
        # At the cap a query still runs.
        r = a.query(pair[0], epsilon=DEFAULT_MAX_EPSILON_PER_QUERY)
        assert r.rows and r.epsilon <= DEFAULT_MAX_EPSILON_PER_QUERY + 1e-9


def test_a_refused_query_is_in_the_release_log(hospitals: Hospitals) -> None:
    url = hospitals.cluster.url
    with httpx.Client(base_url=url, timeout=60) as http:
        r = http.post("/v1/queries", json={"sql": "SELECT COUNT(*) FROM visits", "epsilon": 9.5},
                      headers={"authorization": f"Bearer {hospitals.tokens['analyst']}"})
        assert r.status_code == 403
        entries = http.get("/v1/audit/entries", headers={"authorization": f"Bearer {hospitals.tokens['auditor']}"}
                           ).json()
    denied = [e for e in entries if e["kind"] == "denied" and "per-query cap" in (e.get("reason") or "")]
    assert denied and denied[-1]["privacy_cost"]["epsilon"] <= 9.5


def test_a_holder_may_raise_its_cap(tmp_path: Path) -> None:
    from e2e_helpers import MANIFEST

    assert "max_epsilon_per_query" not in MANIFEST  # the default applies to the shared helper
    from xdp_compute.domain.manifest import parse_manifest_text

    text = MANIFEST.format(node="n", region="CN-FJ", budget=100, min_group=5, categories='["x"]',
                           approval="false").replace("min_group_size = 5", "min_group_size = 5\nmax_epsilon_per_query = 8")
    ds = parse_manifest_text(text, check_files=False).datasets[0]
    assert ds.max_epsilon_per_query == 8.0
    bad = text.replace("max_epsilon_per_query = 8", "max_epsilon_per_query = -1")
    from xdp_compute.domain.manifest import ManifestError

    with pytest.raises(ManifestError, match="max_epsilon_per_query"):
        parse_manifest_text(bad, check_files=False)
