"""The OpenAPI document scripts and generated clients rely on: stable operation ids, the bearer
scheme, response models, every error status with the Problem schema, request examples."""

from __future__ import annotations

from typing import Any

import pytest

# Operation ids are API: a generated client's method names. Renaming one breaks its users, so
# the full list is pinned here; a new route adds its id.
OPERATION_IDS = {
    ("GET", "/v1/approvals"): "approvals-list-approvals",
    ("POST", "/v1/approvals/{job_id}/approve"): "approvals-approve",
    ("POST", "/v1/approvals/{job_id}/deny"): "approvals-deny",
    ("GET", "/v1/audit/public-key"): "audit-public-key",
    ("GET", "/v1/audit/head"): "audit-latest-head",
    ("GET", "/v1/audit/heads"): "audit-heads",
    ("GET", "/v1/audit/entries"): "audit-entries",
    ("GET", "/v1/audit/export"): "audit-export",
    ("GET", "/v1/audit/proof/inclusion"): "audit-inclusion",
    ("GET", "/v1/audit/proof/consistency"): "audit-consistency",
    ("GET", "/v1/audit/entries/{index}"): "audit-entry",
    ("GET", "/v1/audit/checkpoint"): "audit-checkpoint",
    ("GET", "/v1/audit/cosigned"): "audit-cosigned",
    ("GET", "/v1/audit/witnesses"): "audit-witnesses",
    ("GET", "/v1/me"): "nodes-me",
    ("POST", "/v1/nodes/{node_id}/validate"): "nodes-validate-node",
    ("GET", "/v1/nodes/log-entries"): "nodes-holder-log-entries",
    ("GET", "/v1/datasets"): "catalog-list-datasets",
    ("GET", "/v1/datasets/{name}"): "catalog-get-dataset",
    ("GET", "/v1/datasets/{name}/mock"): "catalog-mock-dataset",
    ("GET", "/v1/datasets/{name}/spend"): "catalog-dataset-spend",
    ("GET", "/v1/nodes"): "catalog-list-nodes",
    ("GET", "/v1/nodes/{node_id}"): "catalog-get-node",
    ("GET", "/v1/datasets/{name}/members"): "members-list-members",
    ("POST", "/v1/datasets/{name}/members"): "members-invite",
    ("DELETE", "/v1/datasets/{name}/members/{holder}"): "members-revoke",
    ("POST", "/v1/queries"): "jobs-submit-query",
    ("POST", "/v1/scores"): "jobs-submit-score",
    ("POST", "/v1/trainings"): "jobs-submit-training",
    ("GET", "/v1/jobs"): "jobs-list-jobs",
    ("GET", "/v1/jobs/{job_id}"): "jobs-get-job",
    ("GET", "/v1/budget/{dataset}"): "jobs-budget",
    ("GET", "/v1/metering"): "metering-metering",
    ("GET", "/v1/metering/series"): "metering-metering-series",
    # hidden lookups (issue #17)
    ("POST", "/v1/lookups/{product}/table-info"): "lookups-table-info",
    ("GET", "/v1/lookups/{product}/tables/{version}/parts/{part}"): "lookups-table-part",
    ("POST", "/v1/lookups/{product}/evaluate"): "lookups-evaluate",
    # data exchange (issue #17)
    ("POST", "/v1/assets"): "exchange-register-asset",
    ("GET", "/v1/assets"): "exchange-list-assets",
    ("GET", "/v1/assets/{dataset}/history"): "exchange-asset-history",
    ("GET", "/v1/products"): "exchange-list-products",
    ("POST", "/v1/products"): "exchange-create-product",
    ("GET", "/v1/products/{product_id}"): "exchange-get-product",
    ("POST", "/v1/products/{product_id}/subscribe"): "exchange-subscribe",
    ("GET", "/v1/subscriptions"): "exchange-list-subscriptions",
    ("POST", "/v1/subscriptions/{subscription_id}/approve"): "exchange-approve-subscription",
    ("POST", "/v1/subscriptions/{subscription_id}/reject"): "exchange-reject-subscription",
    ("GET", "/v1/statements"): "exchange-list-statements",
    ("POST", "/v1/statements"): "exchange-settle-period",
}
# Error statuses each kind of route must declare (beyond 401 on all of /v1).
MUST_DECLARE = {
    ("POST", "/v1/queries"): {"400", "401", "403", "404", "409", "413", "422", "503"},
    ("POST", "/v1/trainings"): {"400", "401", "403", "404", "409", "413", "422", "503"},
    ("GET", "/v1/jobs/{job_id}"): {"401", "404", "422"},
    ("POST", "/v1/approvals/{job_id}/deny"): {"401", "403", "404", "409", "413", "422"},
    ("GET", "/v1/audit/entries/{index}"): {"401", "403", "404", "422"},
    ("GET", "/v1/budget/{dataset}"): {"401", "403", "404"},
}


@pytest.fixture
def doc(api: Any) -> dict[str, Any]:
    r = api.get("/openapi.json")
    assert r.status_code == 200
    return r.json()  # type: ignore[no-any-return]


def v1_operations(doc: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(m.upper(), p): op for p, ops in doc["paths"].items() if p.startswith("/v1") for m, op in ops.items()}


def test_operation_ids_are_stable_tag_name_pairs(doc: dict[str, Any]) -> None:
    ops = v1_operations(doc)
    assert {k: op["operationId"] for k, op in ops.items()} == OPERATION_IDS
    for op in ops.values():
        assert op["operationId"].split("-", 1)[0] == op["tags"][0]
    every = [op["operationId"] for ops_ in doc["paths"].values() for op in ops_.values()]
    assert len(every) == len(set(every)), "operation ids must be unique"


def test_bearer_scheme_on_every_authenticated_route(doc: dict[str, Any]) -> None:
    scheme = doc["components"]["securitySchemes"]["bearer"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    for key, op in v1_operations(doc).items():
        assert op.get("security") == [{"bearer": []}], key
        assert "401" in op["responses"], key
    assert "security" not in doc["paths"]["/healthz"]["get"]


def test_errors_are_declared_with_the_problem_schema(doc: dict[str, Any]) -> None:
    problem = doc["components"]["schemas"]["Problem"]
    assert {"type", "title", "status", "detail"} <= set(problem["required"])
    assert "HTTPValidationError" not in doc["components"]["schemas"]  # 422 is problem+json here
    ops = v1_operations(doc)
    for key, statuses in MUST_DECLARE.items():
        assert statuses <= set(ops[key]["responses"]), (key, sorted(ops[key]["responses"]))
    for key, op in ops.items():
        for status, answer in op["responses"].items():
            if int(status) >= 400:
                assert answer["content"] == {"application/problem+json": {
                    "schema": {"$ref": "#/components/schemas/Problem"}}}, (key, status)


def test_success_answers_reference_response_models(doc: dict[str, Any]) -> None:
    def schema_of(method: str, path: str, status: str = "200") -> dict[str, Any]:
        return doc["paths"][path][method]["responses"][status]["content"]["application/json"]["schema"]  # type: ignore[no-any-return]

    assert schema_of("get", "/v1/jobs") == {"$ref": "#/components/schemas/JobPage"}
    assert schema_of("get", "/v1/jobs/{job_id}") == {"$ref": "#/components/schemas/Job"}
    assert schema_of("get", "/v1/datasets")["items"] == {"$ref": "#/components/schemas/Dataset"}
    assert schema_of("post", "/v1/queries", "202") == {"$ref": "#/components/schemas/Accepted"}
    released = schema_of("post", "/v1/queries")
    assert {"$ref": "#/components/schemas/Delivery"} in released["anyOf"]
    assert {"$ref": "#/components/schemas/DryRun"} in released["anyOf"]
    for key, op in v1_operations(doc).items():
        ok = op["responses"].get("200") or op["responses"].get("201")
        assert ok is not None and ok.get("content"), key
        for media in ok["content"].values():
            assert media["schema"] != {}, f"{key}: an answer without a schema"


def test_request_bodies_carry_examples(doc: dict[str, Any]) -> None:
    body = doc["paths"]["/v1/queries"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["examples"][0]["sql"].startswith("SELECT") and body["examples"][0]["epsilon"] > 0
    assert doc["paths"]["/v1/trainings"]["post"]["requestBody"]["content"]["application/json"]["schema"]["examples"]


def test_401_carries_www_authenticate(api: Any) -> None:
    r = api.get("/v1/me")
    assert r.status_code == 401 and r.headers["www-authenticate"] == 'Bearer realm="xdp-compute"'
    r = api.get("/v1/me", headers={"authorization": "Bearer xdp_wrong"})
    assert r.headers["www-authenticate"] == 'Bearer realm="xdp-compute", error="invalid_token"'
