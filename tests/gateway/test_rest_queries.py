"""Query submission over REST: bad input and policy refusals (no node is contacted for these)."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import example_manifest

from xdp_compute.domain.manifest import parse_manifest_text


@pytest.fixture
def world(api: Any, store: Any) -> dict[str, Any]:
    h = store.authenticate(store.create_principal("holder", "h1", "CN-FJ"))
    ds = parse_manifest_text(example_manifest(budget=5.0), check_files=False).datasets[0]
    store.register_node(h, "siming-hospital", "CN-FJ", [ds.to_dict()])
    return {"analyst": {"authorization": "Bearer " + store.create_principal("analyst", "a", "CN-FJ")},
            "abroad": {"authorization": "Bearer " + store.create_principal("analyst", "b", "DE-BE")},
            "auditor": {"authorization": "Bearer " + store.create_principal("auditor", "au", "CN-FJ")}}


def post(api: Any, headers: dict[str, str], **body: Any) -> Any:
    body.setdefault("epsilon", 1.0)
    return api.post("/v1/queries", json=body, headers=headers)


@pytest.mark.parametrize("sql, words", [
    ("SELECT * FROM patients", "SELECT *"),
    ("SELECT age FROM patients", "age"),
    ("SELECT COUNT(*) FROM patients ORDER BY 1", "ORDER BY"),
    ("SELECT COUNT(*) FROM patients LIMIT 5", "LIMIT"),
    ("SELECT COUNT(*) FROM patients a JOIN patients b ON a.age = b.age", "JOIN"),
    ("SELECT COUNT(*) FROM (SELECT * FROM patients)", "subquer"),
    ("SELECT SUM(LOWER(district)) FROM patients", "LOWER"),
    ("SELECT SUM(income) FROM patients WHERE income > 5", "income"),
    ("SELECT SUM(name) FROM patients", "name"),
    ("SELECT COUNT(*) FROM patients GROUP BY age", "age"),
    ("SELECT COUNT(*) FROM patients; DROP TABLE patients", "statement"),
    ("DELETE FROM patients", "DELETE"),
    ("SELEC COUNT(*) FROM patients", "syntax"),
    ("SELECT COUNT(*) FROM patients WHERE district = 'Paris'", "Paris"),
    ("SELECT COUNT(*), SUM(age) OVER () FROM patients", "window"),
    ("SELECT SUM(nosuch) FROM patients", "nosuch"),
])
def test_unsupported_sql_is_400_naming_the_problem(api: Any, world: dict[str, Any], sql: str, words: str) -> None:
    r = post(api, world["analyst"], sql=sql)
    assert r.status_code == 400, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert words.lower() in r.json()["detail"].lower(), r.json()["detail"]


def test_unknown_dataset_is_404(api: Any, world: dict[str, Any]) -> None:
    assert post(api, world["analyst"], sql="SELECT COUNT(*) FROM nothing").status_code == 404


@pytest.mark.parametrize("eps, status", [(0, 400), (-1, 400), ("nan", 422), ("inf", 422), ("lots", 422),
                                         (True, 422), ("1", 422), (50.0, 403)])
def test_bad_epsilon(api: Any, world: dict[str, Any], eps: Any, status: int) -> None:
    r = post(api, world["analyst"], sql="SELECT COUNT(*) FROM patients", epsilon=eps)
    assert r.status_code == status, r.text
    if status == 403:
        assert "epsilon_cap" in r.json()["detail"]


def test_bad_delta_and_unknown_fields(api: Any, world: dict[str, Any]) -> None:
    assert post(api, world["analyst"], sql="SELECT COUNT(*) FROM patients", delta=2).status_code == 400
    r = post(api, world["analyst"], sql="SELECT COUNT(*) FROM patients", colour="red")
    assert r.status_code == 422 and "colour" in r.text


def test_cross_border_rule_denies_with_rule_named_and_logs(api: Any, world: dict[str, Any]) -> None:
    r = post(api, world["abroad"], sql="SELECT COUNT(*) FROM patients")
    assert r.status_code == 403 and "cross_border" in r.json()["detail"] and "health" in r.json()["detail"]
    entries = api.get("/v1/audit/entries", headers=world["auditor"]).json()
    assert entries[-1]["kind"] == "denied" and entries[-1]["payload_digest"] is None


def test_dry_run_shows_denial_without_charging(api: Any, world: dict[str, Any]) -> None:
    r = post(api, world["abroad"], sql="SELECT COUNT(*) FROM patients", dry_run=True)
    assert r.status_code == 200 and r.json()["allowed"] is False
    assert any(d["rule"] == "cross_border" and not d["allowed"] for d in r.json()["decisions"])


def test_no_node_online_is_409(api: Any, world: dict[str, Any], store: Any) -> None:
    store.mark_offline_stale(older_than=1e18)
    r = post(api, world["analyst"], sql="SELECT COUNT(*) FROM patients")
    assert r.status_code == 409 and "online" in r.json()["detail"]
