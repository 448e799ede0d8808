"""Auth matrix over every REST route: no token -> 401, wrong role -> 403, another holder's object -> 404."""

from __future__ import annotations

import re
from typing import Any

import pytest
from conftest import example_manifest

from xdp_compute.domain.manifest import parse_manifest_text

# Roles allowed on each route (method, path template). A new route must be added here, or the
# completeness test below fails: every route is covered by the matrix.
ALLOWED: dict[tuple[str, str], set[str]] = {
    ("GET", "/v1/me"): {"admin", "holder", "analyst", "auditor"},
    ("GET", "/v1/datasets"): {"admin", "holder", "analyst"},
    ("GET", "/v1/datasets/{name}"): {"admin", "holder", "analyst"},
    ("GET", "/v1/datasets/{name}/mock"): {"admin", "holder", "analyst"},
    ("GET", "/v1/datasets/{name}/members"): {"admin", "holder", "analyst", "auditor"},
    ("POST", "/v1/datasets/{name}/members"): {"admin", "holder"},
    ("DELETE", "/v1/datasets/{name}/members/{holder}"): {"admin", "holder"},
    ("GET", "/v1/nodes"): {"admin", "holder", "analyst"},
    ("GET", "/v1/nodes/{node_id}"): {"admin", "holder", "analyst"},
    ("GET", "/v1/nodes/log-entries"): {"holder"},
    ("POST", "/v1/nodes/{node_id}/validate"): {"holder"},
    ("POST", "/v1/queries"): {"analyst"},
    ("POST", "/v1/scores"): {"analyst"},
    ("POST", "/v1/trainings"): {"analyst"},
    ("GET", "/v1/approvals"): {"holder"},
    ("GET", "/v1/metering"): {"holder", "auditor"},
    ("GET", "/v1/metering/series"): {"holder", "auditor"},
    ("GET", "/v1/datasets/{name}/spend"): {"holder", "auditor"},
    ("POST", "/v1/approvals/{job_id}/approve"): {"holder"},
    ("POST", "/v1/approvals/{job_id}/deny"): {"holder"},
    ("GET", "/v1/jobs"): {"admin", "holder", "analyst", "auditor"},
    ("GET", "/v1/jobs/{job_id}"): {"admin", "holder", "analyst", "auditor"},
    ("GET", "/v1/budget/{dataset}"): {"analyst"},
    ("GET", "/v1/audit/public-key"): {"admin", "holder", "analyst", "auditor"},
    ("GET", "/v1/audit/head"): {"auditor"},
    ("GET", "/v1/audit/heads"): {"auditor"},
    ("GET", "/v1/audit/entries"): {"auditor"},
    ("GET", "/v1/audit/entries/{index}"): {"auditor"},
    ("GET", "/v1/audit/export"): {"auditor"},
    ("GET", "/v1/audit/checkpoint"): {"auditor"},
    ("GET", "/v1/audit/cosigned"): {"auditor"},
    ("GET", "/v1/audit/witnesses"): {"auditor"},
    ("GET", "/v1/audit/proof/inclusion"): {"auditor"},
    ("GET", "/v1/audit/proof/consistency"): {"auditor"},
}
# Data exchange (issue #17): the owner registers and lists, analysts subscribe, admins settle.
ALLOWED.update({
    ("POST", "/v1/assets"): {"holder"},
    ("GET", "/v1/assets"): {"admin", "holder", "analyst", "auditor"},
    ("GET", "/v1/assets/{dataset}/history"): {"admin", "holder", "analyst", "auditor"},
    ("GET", "/v1/products"): {"admin", "holder", "analyst", "auditor"},
    ("POST", "/v1/products"): {"holder"},
    ("GET", "/v1/products/{product_id}"): {"admin", "holder", "analyst", "auditor"},
    ("POST", "/v1/products/{product_id}/subscribe"): {"analyst"},
    ("GET", "/v1/subscriptions"): {"admin", "holder", "analyst", "auditor"},
    ("POST", "/v1/subscriptions/{subscription_id}/approve"): {"holder"},
    ("POST", "/v1/subscriptions/{subscription_id}/reject"): {"holder"},
    # hidden lookups (issue #17): analysts with a subscription
    ("POST", "/v1/lookups/{product}/table-info"): {"analyst"},
    ("GET", "/v1/lookups/{product}/tables/{version}/parts/{part}"): {"analyst"},
    ("POST", "/v1/lookups/{product}/evaluate"): {"analyst"},
    ("GET", "/v1/statements"): {"admin", "holder", "analyst", "auditor"},
    ("POST", "/v1/statements"): {"admin"},
})
# Routes whose object belongs to one holder: the other holder gets 404.
HOLDER_OBJECTS = {("GET", "/v1/datasets/{name}"), ("GET", "/v1/datasets/{name}/mock"),
                  ("GET", "/v1/datasets/{name}/spend"),
                  ("GET", "/v1/nodes/{node_id}"), ("POST", "/v1/nodes/{node_id}/validate")}


def app_routes(api: Any) -> set[tuple[str, str]]:
    # Every route the app serves appears in its OpenAPI document.
    paths = api.get("/openapi.json").json()["paths"]
    return {(m.upper(), p) for p, ops in paths.items() if p.startswith("/v1") for m in ops}


@pytest.fixture
def world(api: Any, store: Any) -> dict[str, Any]:
    tokens = {role: store.create_principal(role, f"{role}-1", "CN-FJ") for role in
              ("admin", "analyst", "auditor", "holder")}
    tokens["holder2"] = store.create_principal("holder", "holder-2", "CN-FJ")
    holder = store.authenticate(tokens["holder"])
    ds = parse_manifest_text(example_manifest(), check_files=False).datasets[0]
    node_id = store.register_node(holder, "siming-hospital", "CN-FJ", [ds.to_dict()])
    return {"tokens": tokens, "params": {"name": "patients", "node_id": node_id, "index": "0", "job_id": "no-such-job", "dataset": "patients", "holder": "holder-2",
                                                  "product_id": "no-such-product", "subscription_id": "no-such-sub",
                                                  "product": "no-such-product", "version": "0" * 32, "part": "0"}}


def fill(path: str, params: dict[str, str]) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: params[m.group(1)], path)


def call(api: Any, method: str, path: str, token: str | None) -> Any:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return api.request(method, path, headers=headers, json={} if method == "POST" else None)


def test_matrix_covers_every_route(api: Any) -> None:
    assert app_routes(api) == set(ALLOWED), "update ALLOWED for new or removed routes"


@pytest.mark.parametrize("route", sorted(ALLOWED))
def test_no_token_is_401_and_problem_json(api: Any, world: dict[str, Any], route: tuple[str, str]) -> None:
    method, path = route
    for token in (None, "xdp_not-a-real-token"):
        r = call(api, method, fill(path, world["params"]), token)
        assert r.status_code == 401, (route, r.text)
        assert r.headers["content-type"].startswith("application/problem+json")
        assert r.json()["status"] == 401 and r.json()["type"].endswith("/unauthorized")
        assert r.headers["www-authenticate"].startswith("Bearer")  # RFC 6750 §3


@pytest.mark.parametrize("route", sorted(ALLOWED))
def test_wrong_role_is_403(api: Any, world: dict[str, Any], route: tuple[str, str]) -> None:
    method, path = route
    for role in {"admin", "holder", "analyst", "auditor"} - ALLOWED[route]:
        r = call(api, method, fill(path, world["params"]), world["tokens"][role])
        assert r.status_code == 403, (route, role, r.text)


@pytest.mark.parametrize("route", sorted(HOLDER_OBJECTS))
def test_other_holders_object_is_404(api: Any, world: dict[str, Any], route: tuple[str, str]) -> None:
    method, path = route
    r = call(api, method, fill(path, world["params"]), world["tokens"]["holder2"])
    assert r.status_code == 404, (route, r.text)


def test_owner_and_readers_get_through(api: Any, world: dict[str, Any]) -> None:
    t = world["tokens"]
    assert call(api, "GET", "/v1/datasets/patients", t["holder"]).status_code == 200
    assert call(api, "GET", "/v1/datasets/patients", t["analyst"]).status_code == 200
    assert [n["name"] for n in call(api, "GET", "/v1/nodes", t["holder"]).json()] == ["siming-hospital"]
    assert call(api, "GET", "/v1/nodes", t["holder2"]).json() == []
    assert call(api, "GET", "/v1/datasets", t["holder2"]).json() == []


def test_expired_token_is_401(api: Any, store: Any) -> None:
    tok = store.create_principal("analyst", "short-lived", "CN-FJ", ttl_seconds=-1)
    r = call(api, "GET", "/v1/me", tok)
    assert r.status_code == 401 and "expired" in r.json()["detail"]
