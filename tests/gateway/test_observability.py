"""Health, readiness, metrics, request ids, JSON access logs and offline docs of the gateway app
(in process; ``tests/e2e/test_observability_e2e.py`` runs the same against real processes)."""

from __future__ import annotations

import json
import logging
import re
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.exc import OperationalError

from xdp_compute.gateway import models as m
from xdp_compute.gateway.metrics import GatewayMetrics
from xdp_compute.gateway.observability import JsonFormatter, Redactor
from xdp_compute.gateway.release import DENIED, Outcome


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample of a Prometheus exposition (0 when absent)."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return 0.0


@pytest.fixture
def listening() -> Iterator[tuple[str, int]]:
    """A socket that accepts connections, standing in for the gRPC server."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield "127.0.0.1", s.getsockname()[1]


# ---------------------------------------------------------------------- health and readiness
def test_healthz_needs_no_token_and_checks_nothing(api: Any) -> None:
    r = api.get("/healthz")
    assert r.status_code == 200 and r.json()["status"] == "ok"


def test_readyz_names_each_failing_check(api: Any) -> None:
    # No runtime was started (services given) and no node registered: two checks fail, the
    # database and the release log pass; no token is needed.
    r = api.get("/readyz")
    assert r.status_code == 503
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert body["type"].endswith("/not-ready") and body["status"] == 503
    checks = body["checks"]
    assert {k: v["ok"] for k, v in checks.items()} == {"database": True, "grpc": False, "release_log": True,
                                                       "nodes": False}
    assert checks["nodes"]["online"] == 0
    assert "grpc" in body["detail"] and "nodes" in body["detail"]


def test_readyz_ready_with_grpc_and_a_node_then_unready_on_a_foreign_head(
        api: Any, services: Any, listening: tuple[str, int]) -> None:
    services.grpc_address = listening
    services.hub.registered("node-1")
    r = api.get("/readyz")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "ready" and r.json()["checks"]["nodes"]["online"] == 1
    # Another writer put a signed head into the store that the log in memory never made.
    with services.store.write() as s:
        s.add(m.TreeHead(tree_size=1, root_hash="00" * 32, timestamp_ms=1, signature="00" * 64,
                         key_id=services.release_log.signer.key_id))
    r = api.get("/readyz")
    assert r.status_code == 503 and r.json()["checks"]["release_log"]["ok"] is False
    # The node goes offline: the nodes check fails too.
    services.hub.went_offline("node-1")
    assert api.get("/readyz").json()["checks"]["nodes"]["ok"] is False


def test_readyz_unready_when_the_stored_head_does_not_verify(api: Any, services: Any,
                                                              listening: tuple[str, int]) -> None:
    services.grpc_address = listening
    services.hub.registered("node-1")
    services.gate.record({"kind": "approval_given", "job_id": None})
    assert api.get("/readyz").json()["checks"]["release_log"] == {"ok": True,
                                                                  "detail": "last signed head verifies"}
    with services.store.write() as s:  # same size and root, another signature
        head = s.get(m.TreeHead, 1)
        head.signature = "11" * 64
    r = api.get("/readyz")
    assert r.status_code == 503 and "does not verify" in r.json()["checks"]["release_log"]["detail"]


def test_readyz_unready_when_the_database_fails(api: Any, services: Any, listening: tuple[str, int],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    services.grpc_address = listening
    services.hub.registered("node-1")
    assert api.get("/readyz").status_code == 200

    def down() -> Any:
        raise OperationalError("SELECT 1", {}, Exception("postgresql://u:hunter2@db/x refused"))

    monkeypatch.setattr(services.store, "read", down)
    r = api.get("/readyz")
    assert r.status_code == 503
    checks = r.json()["checks"]
    assert checks["database"]["ok"] is False and checks["release_log"]["ok"] is False
    assert "hunter2" not in r.text  # the exception's type, never its message


# ---------------------------------------------------------------------- metrics
def test_metrics_need_an_auditor_or_admin_token(api: Any, services: Any) -> None:
    assert api.get("/metrics").status_code == 401
    analyst = services.store.create_principal("analyst", "ana", "CN-FJ")
    assert api.get("/metrics", headers=bearer(analyst)).status_code == 403
    for role in ("auditor", "admin"):
        r = api.get("/metrics", headers=bearer(services.store.create_principal(role, f"{role}-1", "CN-FJ")))
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        names = {f.name for f in text_string_to_metric_families(r.text)}
        assert {"xdp_jobs", "xdp_job_phase_seconds", "xdp_epsilon_spent", "xdp_nodes_online",
                "xdp_secagg_dropouts", "xdp_http_requests"} <= names


def test_metrics_follow_the_release_gate_and_name_no_principal(api: Any, services: Any) -> None:
    auditor = services.store.create_principal("auditor", "aud", "CN-FJ")
    outcome = Outcome(operation="query", payload={}, datasets=["visits"], nodes=["n1"], spec_digest="d",
                      cost={"epsilon": 0.5})
    services.gate.refuse(None, "secret-analyst-name", outcome, DENIED, "denied by policy", refund=False)
    services.metrics.dropped(["share_keys", "share_keys", "unmask"])
    services.hub.registered("n1")
    text = api.get("/metrics", headers=bearer(auditor)).text
    assert sample(text, "xdp_jobs_total", kind="query", outcome="denied") == 1
    assert sample(text, "xdp_epsilon_spent_total", dataset="visits") == 0  # a refusal spends nothing
    assert sample(text, "xdp_secagg_dropouts_total", phase="share_keys") == 2
    assert sample(text, "xdp_nodes_online") == 1
    assert "secret-analyst-name" not in text and "aud" not in re.sub(r"#.*", "", text)


def test_request_metrics_have_bounded_labels(api: Any, services: Any) -> None:
    for i in range(3):
        api.request(f"BREW{i}", f"/v1/random-{i}")
    auditor = services.store.create_principal("auditor", "aud", "CN-FJ")
    text = api.get("/metrics", headers=bearer(auditor)).text
    assert sample(text, "xdp_http_requests_total", method="OTHER", route="(unmatched)") == 3
    assert "BREW" not in text and "random" not in text


def test_each_gateway_has_its_own_registry() -> None:
    a, b = GatewayMetrics(), GatewayMetrics()
    a.job_ended("query", "released", ["visits"], 1.5)
    assert sample(a.exposition().decode(), "xdp_epsilon_spent_total", dataset="visits") == 1.5
    assert sample(b.exposition().decode(), "xdp_jobs_total", kind="query", outcome="released") == 0


# ---------------------------------------------------------------------- request ids and logs
class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(JsonFormatter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def json_lines() -> Iterator[Lines]:
    h = Lines()
    root = logging.getLogger()
    old = root.level
    root.addHandler(h)
    root.setLevel(logging.INFO)
    yield h
    root.removeHandler(h)
    root.setLevel(old)


def test_request_id_is_echoed_when_well_formed_else_generated(api: Any) -> None:
    r = api.get("/healthz", headers={"x-request-id": "lb-42.a:b"})
    assert r.headers["x-request-id"] == "lb-42.a:b"
    r = api.get("/healthz", headers={"x-request-id": "bad id\twith\nspace" + "x" * 200})
    assert re.fullmatch(r"[0-9a-f]{32}", r.headers["x-request-id"])
    assert re.fullmatch(r"[0-9a-f]{32}", api.get("/healthz").headers["x-request-id"])


def test_access_log_is_json_with_request_id_and_never_the_token(api: Any, services: Any,
                                                                 json_lines: Lines) -> None:
    token = services.store.create_principal("analyst", "ana", "CN-FJ")
    blob = "A" * 600  # a ciphertext-sized value in the body
    r = api.post("/v1/queries", headers={**bearer(token), "x-request-id": "req-1"},
                 json={"sql": f"SELECT COUNT(*) FROM nowhere WHERE note = '{blob}'", "epsilon": 1.0})
    assert r.status_code == 404, r.text  # the dataset does not exist; the request went through
    records = [json.loads(line) for line in json_lines.lines]
    access = [x for x in records if x["logger"] == "xdp.access"]
    assert len(access) == 1
    line = access[0]
    assert line["request_id"] == "req-1" and line["route"] == "/v1/queries" and line["status"] == 404
    assert line["method"] == "POST" and line["principal"] == "ana" and line["role"] == "analyst"
    assert line["duration_ms"] >= 0
    assert all(x["request_id"] == "req-1" for x in records if x["logger"].startswith("xdp."))
    text = "\n".join(json_lines.lines)
    assert token not in text and token[4:] not in text and blob not in text and "nowhere" not in text


def test_an_unmatched_path_is_logged_as_such_not_verbatim(api: Any, json_lines: Lines) -> None:
    assert api.get("/v1/jobs/abc/../../etc?secret=1").status_code == 404
    access = [json.loads(x) for x in json_lines.lines if '"xdp.access"' in x]
    assert access[-1]["route"] == "(unmatched)" and "secret" not in json_lines.lines[-1]


def test_redactor_masks_tokens_authorization_and_blobs() -> None:
    r = Redactor()
    token = "xdp_" + "Ab3-_" * 9
    out = r(f"token {token} header Bearer abcdefgh12345678 ct {'QUJD' * 80}== ok")
    assert token not in out and "abcdefgh12345678" not in out and "QUJD" * 10 not in out
    assert out.endswith(" ok") and "xdp_[redacted]" in out


def test_json_formatter_redacts_messages_and_exceptions() -> None:
    token = "xdp_" + "k" * 43
    record = logging.LogRecord("xdp.test", logging.ERROR, __file__, 1, "saw %s", (token,), None)
    try:
        raise ValueError(f"bad {token}")
    except ValueError:
        import sys

        record.exc_info = sys.exc_info()
    line = JsonFormatter().format(record)
    parsed = json.loads(line)
    assert token not in line and parsed["level"] == "error" and "request_id" in parsed


# ---------------------------------------------------------------------- docs offline
@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_load_only_local_assets(api: Any, page: str) -> None:
    r = api.get(page)
    assert r.status_code == 200
    html = r.text
    assert "http://" not in html and "https://" not in html and "//fonts" not in html
    refs = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert refs and all(u.startswith("/static/docs/") for u in refs), refs
    for url in refs:
        asset = api.get(url)
        assert asset.status_code == 200 and len(asset.content) > 1000, url
    assert api.get("/openapi.json").status_code == 200


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_configure_logging_routes_uvicorn_through_one_formatter(fmt: str, capsys: pytest.CaptureFixture[str]
                                                                ) -> None:
    from xdp_compute.gateway.observability import configure_logging, request_id_var

    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        configure_logging(fmt)
        token = request_id_var.set("rid-7")
        try:
            logging.getLogger("uvicorn.error").warning("bind failed for xdp_%s", "Z" * 43)
        finally:
            request_id_var.reset(token)
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert "Z" * 43 not in err and "xdp_[redacted]" in err
        if fmt == "json":
            line = json.loads(err)
            assert line["logger"] == "uvicorn.error" and line["request_id"] == "rid-7"
        else:
            assert err.endswith("[request_id=rid-7]") and "WARNING uvicorn.error" in err
    finally:
        for h in list(root.handlers):
            root.removeHandler(h)
        for h in saved[0]:
            root.addHandler(h)
        root.setLevel(saved[1])
    with pytest.raises(ValueError, match="json"):
        configure_logging("xml")


def test_an_unexpected_error_is_logged_with_the_request_id(services: Any, json_lines: Lines) -> None:
    from fastapi.testclient import TestClient

    from xdp_compute.gateway.app import create_app

    app = create_app(services.settings, services)

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("boom")

    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.get("/boom", headers={"x-request-id": "req-500"})
    assert r.status_code == 500 and r.json()["type"].endswith("/internal")
    records = [json.loads(x) for x in json_lines.lines]
    errors = [x for x in records if x["level"] == "error" and x["logger"] == "xdp.gateway"]
    assert errors and errors[0]["request_id"] == "req-500" and "RuntimeError" in errors[0]["exception"]
    access = [x for x in records if x["logger"] == "xdp.access"]
    assert access[-1]["status"] == 500 and access[-1]["route"] == "/boom"
