"""GET /v1/jobs: the caller's own jobs, newest first, filtered and paged; and the 401 challenge."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import example_manifest

from xdp_compute.domain.manifest import parse_manifest_text


@pytest.fixture
def world(api: Any, store: Any) -> dict[str, Any]:
    # require_approval: every query waits for the holder (202), so no node is needed.
    h = store.authenticate(store.create_principal("holder", "h1", "CN-FJ"))
    ds = parse_manifest_text(example_manifest(budget=5.0, approval=True), check_files=False).datasets[0]
    store.register_node(h, "siming-hospital", "CN-FJ", [ds.to_dict()])
    return {role: {"authorization": "Bearer " + store.create_principal(role, name, "CN-FJ")}
            for role, name in (("analyst", "a"), ("analyst", "b"), ("auditor", "au"))
            } | {"other": {"authorization": "Bearer " + store.create_principal("analyst", "b2", "CN-FJ")}}


def submit(api: Any, headers: dict[str, str], n: int) -> list[str]:
    ids = []
    for i in range(n):
        r = api.post("/v1/queries", headers=headers,
                     json={"sql": f"SELECT COUNT(*) FROM patients WHERE age > {i}", "epsilon": 0.1})
        assert r.status_code == 202, r.text
        ids.append(r.json()["job_id"])
    return ids


def test_own_jobs_newest_first_and_paged(api: Any, world: dict[str, Any]) -> None:
    mine = submit(api, world["analyst"], 5)
    submit(api, world["other"], 2)
    r = api.get("/v1/jobs", headers=world["analyst"])
    assert r.status_code == 200, r.text
    body = r.json()
    assert [j["job_id"] for j in body["jobs"]] == mine[::-1] and body["next_before"] is None
    assert {j["status"] for j in body["jobs"]} == {"awaiting_approval"}
    assert {j["operation"] for j in body["jobs"]} == {"query"}
    assert all("result" not in j for j in body["jobs"])

    seen: list[str] = []
    before = None
    while True:
        params: dict[str, Any] = {"limit": 2} | ({"before": before} if before else {})
        page = api.get("/v1/jobs", headers=world["analyst"], params=params).json()
        assert len(page["jobs"]) <= 2
        seen += [j["job_id"] for j in page["jobs"]]
        before = page["next_before"]
        if before is None:
            break
    assert seen == mine[::-1]


def test_filters_and_other_roles(api: Any, world: dict[str, Any]) -> None:
    submit(api, world["analyst"], 2)
    assert api.get("/v1/jobs", headers=world["analyst"], params={"status": "released"}).json()["jobs"] == []
    assert len(api.get("/v1/jobs", headers=world["analyst"],
                       params={"status": "awaiting_approval"}).json()["jobs"]) == 2
    assert api.get("/v1/jobs", headers=world["analyst"], params={"kind": "training"}).json()["jobs"] == []
    # An auditor submitted nothing: it sees no analyst's jobs here (decisions are in /v1/audit/entries).
    assert api.get("/v1/jobs", headers=world["auditor"]).json() == {"jobs": [], "next_before": None}


@pytest.mark.parametrize("params", [{"limit": 0}, {"limit": 10_000}, {"status": "nonsense"}, {"limit": "x"}])
def test_bad_filters_are_422(api: Any, world: dict[str, Any], params: dict[str, Any]) -> None:
    r = api.get("/v1/jobs", headers=world["analyst"], params=params)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")


def test_another_analysts_cursor_is_400(api: Any, world: dict[str, Any]) -> None:
    theirs = submit(api, world["other"], 1)[0]
    r = api.get("/v1/jobs", headers=world["analyst"], params={"before": theirs})
    assert r.status_code == 400 and "before" in r.json()["detail"]


@pytest.mark.parametrize("token", [None, "xdp_not-a-real-token"])
def test_401_is_problem_json_with_bearer_challenge(api: Any, token: str | None) -> None:
    r = api.get("/v1/jobs", headers={"authorization": f"Bearer {token}"} if token else {})
    assert r.status_code == 401
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.headers["www-authenticate"].startswith("Bearer realm=")
    assert ("invalid_token" in r.headers["www-authenticate"]) == (token is not None)
