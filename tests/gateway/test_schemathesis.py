"""Schemathesis against the live gateway app, once per role: no 5xx, every answer as declared.

The app runs over ASGI with a real SQLite store, a holder's registered node (its dataset needs
approval, so submissions wait with 202 instead of reaching for nodes) and a token per role.
Schemathesis generates requests from /openapi.json for every operation and checks each answer:
not a server error, a declared status, the declared content type, the declared schema.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

schemathesis = pytest.importorskip("schemathesis")

from conftest import example_manifest
from hypothesis import HealthCheck, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from xdp_compute.domain.manifest import parse_manifest_text

ROLES = ("analyst", "holder", "auditor", "admin")
# /readyz answers 503 by design while no node is online (none is here): its contract, not a fault.
NOT_FUZZED = {"/readyz"}
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture
def world(services: Any, store: Any) -> Iterator[dict[str, Any]]:
    from xdp_compute.gateway.app import create_app

    tokens = {role: store.create_principal(role, f"{role}-1", "CN-FJ") for role in ROLES}
    holder = store.authenticate(tokens["holder"])
    ds = parse_manifest_text(example_manifest(approval=True), check_files=False).datasets[0]
    store.register_node(holder, "siming-hospital", "CN-FJ", [ds.to_dict()])
    store.create_principal("holder", "holder-2", "CN-FJ")
    app = create_app(services.settings, services)
    # Something on every list, so answers with items are checked too: a job awaiting approval, a
    # job the holder denied (a release-log entry, metering), an invited member.
    from fastapi.testclient import TestClient

    with TestClient(app) as client:
        auth = {role: {"authorization": f"Bearer {t}"} for role, t in tokens.items()}
        r = client.post("/v1/queries", headers=auth["analyst"],
                        json={"sql": "SELECT district, COUNT(*) FROM patients GROUP BY district", "epsilon": 0.5})
        assert r.status_code == 202, r.text
        denied = client.post("/v1/queries", headers=auth["analyst"],
                             json={"sql": "SELECT COUNT(*) FROM patients", "epsilon": 0.5}).json()["job_id"]
        assert client.post(f"/v1/approvals/{denied}/deny", headers=auth["holder"],
                           json={"reason": "not now"}).status_code == 200
        assert client.post("/v1/datasets/patients/members", headers=auth["holder"],
                           json={"holder": "holder-2"}).status_code == 201
    yield {"app": app, "tokens": tokens}


def problems_of(world: dict[str, Any], role: str) -> list[str]:
    """Run every operation with ``role``'s token; one line per operation that broke a check."""
    from hypothesis import given

    found: list[str] = []
    headers = {"authorization": f"Bearer {world['tokens'][role]}"}
    for result in schemathesis.openapi.from_asgi("/openapi.json", world["app"]).get_all_operations():
        operation = result.ok()
        if operation.path in NOT_FUZZED:
            continue

        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=15, deadline=None, derandomize=True, database=None,
                      suppress_health_check=list(HealthCheck))
            def run(case: Any) -> None:
                case.call_and_validate(headers=headers, checks=CHECKS)

            try:
                run()
            except Unsatisfiable:
                continue  # nothing to make invalid (no parameters, no body): the positive run covers it
            except (Exception, BaseExceptionGroup) as e:  # noqa: BLE001 - any check failure, reported per operation
                found.append(f"{operation.label} ({mode.value}): {str(e).strip()[:2000]}")
    return found


@pytest.mark.parametrize("role", ROLES)
def test_every_operation_answers_as_declared(world: dict[str, Any], role: str) -> None:
    found = problems_of(world, role)
    assert not found, f"{len(found)} operations broke a check as {role}:\n" + "\n\n".join(found)
