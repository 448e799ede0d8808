"""Observability of a real gateway process: /metrics moves after real queries, the JSON log has a
request id on every line and never a token or a ciphertext, and /readyz follows a PostgreSQL
server that is stopped and started again."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import _pg_bin
from e2e_helpers import start_hospitals
from prometheus_client.parser import text_string_to_metric_families

from xdp_compute import Client

SQL = "SELECT clinic, COUNT(*) AS n, SUM(cost) AS total FROM visits GROUP BY clinic"


def scrape(url: str, token: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    r = httpx.get(url + "/metrics", headers={"authorization": f"Bearer {token}"}, timeout=10)
    assert r.status_code == 200, r.text
    return {(s.name, tuple(sorted(s.labels.items()))): float(s.value)
            for f in text_string_to_metric_families(r.text) for s in f.samples}


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return sum(v for (n, lab), v in samples.items() if n == name and all(dict(lab).get(k) == x
                                                                        for k, x in labels.items()))


def wait_ready(url: str, ready: bool, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        try:
            r = httpx.get(url + "/readyz", timeout=10)
            body = r.json()
            if (r.status_code == 200) is ready:
                assert r.status_code in (200, 503)
                return body
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"/readyz never became {'ready' if ready else 'unready'}: {body}")


@pytest.mark.slow
def test_metrics_move_and_logs_are_json_without_secrets(tmp_path: Path) -> None:
    h = start_hospitals(tmp_path, n=3, rows=120, env={"XDP_ROUND_TIMEOUT": "8"})
    url, auditor, analyst = h.cluster.url, h.tokens["auditor"], h.tokens["analyst"]
    try:
        ready = wait_ready(url, True)
        assert ready["checks"]["nodes"]["online"] == 3
        before = scrape(url, auditor)
        assert value(before, "xdp_nodes_online") == 3

        # A plain and an encrypted query, each through plan -> rounds -> ReleaseGate.
        plain = h.analyst().query(SQL, epsilon=1.0)
        enc = Client(url, analyst, key_dir=str(tmp_path / "keys")).query(SQL, epsilon=0.5, encrypt=True)
        ciphertext = enc.delivery["result"]["ciphertext"]
        # A node that stops answering mid-protocol: it drops out of the next session.
        os.killpg(h.cluster.procs["clinic-2"].popen.pid, signal.SIGSTOP)
        dropped = h.analyst().query(SQL, epsilon=1.0)
        assert sorted(dropped.nodes) == ["clinic-0", "clinic-1"]

        after = scrape(url, h.tokens["admin"])
        released = {k: value(after, "xdp_jobs_total", kind=k, outcome="released")
                    - value(before, "xdp_jobs_total", kind=k, outcome="released") for k in ("query", "he_query")}
        assert released == {"query": 2, "he_query": 1}
        for phase in ("plan", "rounds", "release"):
            moved = value(after, "xdp_job_phase_seconds_count", kind="query", phase=phase) \
                - value(before, "xdp_job_phase_seconds_count", kind="query", phase=phase)
            assert moved == 2, phase
        spent = value(after, "xdp_epsilon_spent_total", dataset="visits") - \
            value(before, "xdp_epsilon_spent_total", dataset="visits")
        assert spent == pytest.approx(plain.epsilon + enc.epsilon + dropped.epsilon)
        assert value(after, "xdp_secagg_dropouts_total") - value(before, "xdp_secagg_dropouts_total") == 1
        assert value(after, "xdp_http_requests_total", method="POST", route="/v1/queries", status="200") >= 3
        # Labels name no principal.
        assert not any(dict(lab).get(k) for (_, lab) in after for k in ("principal", "analyst", "name"))
    finally:
        h.cluster.stop("clinic-2", signal.SIGKILL)
        h.cluster.close()

    lines = (h.cluster.root / "gateway.log").read_text().splitlines()
    records = [json.loads(line) for line in lines if line.strip()]  # every line is one JSON object
    assert records and all("request_id" in r and "level" in r and "logger" in r for r in records)
    messages = [r["message"] for r in records]
    assert any(m.startswith(f"REST API on {url}") for m in messages)
    assert any(m.startswith(f"gRPC for nodes on {h.cluster.grpc_addr}") for m in messages)
    queries = [r for r in records if r["logger"] == "xdp.access" and r["route"] == "/v1/queries"]
    assert len(queries) == 3 and all(r["principal"] == "analyst" and r["role"] == "analyst" and r["status"] == 200
                                     and r["request_id"] for r in queries)
    text = "\n".join(lines)
    for token in h.tokens.values():
        assert token not in text and token[4:24] not in text
    assert ciphertext[:48] not in text and ciphertext[-48:] not in text
    assert "private note" not in text


@dataclass
class PostgresServer:
    """A throwaway PostgreSQL this test may stop and start (the session server must not stop)."""

    bindir: Path
    tmp: Path
    port: int
    run_as: dict[str, Any]

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def ctl(self, *args: str) -> None:
        env = {"PATH": os.environ.get("PATH", ""), "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
        subprocess.run([str(self.bindir / "pg_ctl"), "-D", str(self.tmp / "data"), *args], check=True,
                       capture_output=True, timeout=90, env=env, cwd=self.tmp, **self.run_as)

    def start(self) -> None:
        self.ctl("-l", str(self.tmp / "log"), "-w", "-t", "60", "-o",
                 f"-p {self.port} -k {self.tmp} -c listen_addresses=127.0.0.1 -c fsync=off", "start")

    def stop(self) -> None:
        self.ctl("-m", "fast", "-w", "stop")


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    bindir = _pg_bin()
    if bindir is None:  # CI installs them (.ci/run); this test stops and starts its own server
        pytest.skip("needs local PostgreSQL server binaries to stop and start a server")
    tmp = Path(tempfile.mkdtemp(prefix="xdp-pg-ready-"))
    run_as: dict[str, Any] = {}
    if os.geteuid() == 0:
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run a throwaway server as")
        os.chown(tmp, pw.pw_uid, pw.pw_gid)
        run_as = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"PATH": os.environ.get("PATH", ""), "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
    subprocess.run([str(bindir / "initdb"), "-D", str(tmp / "data"), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                    "--no-sync"], check=True, capture_output=True, timeout=120, env=env, cwd=tmp, **run_as)
    pg = PostgresServer(bindir, tmp, port, run_as)
    pg.start()
    try:
        yield pg
    finally:
        subprocess.run([str(bindir / "pg_ctl"), "-D", str(tmp / "data"), "-m", "immediate", "-w", "stop"],
                       capture_output=True, timeout=60, env=env, cwd=tmp, check=False, **run_as)
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.slow
def test_readyz_follows_the_database_and_the_nodes(tmp_path: Path, own_postgres: PostgresServer) -> None:
    h = start_hospitals(tmp_path, n=1, rows=60, db=own_postgres.url)
    url = h.cluster.url
    try:
        body = wait_ready(url, True)
        assert all(c["ok"] for c in body["checks"].values()) and body["checks"]["nodes"]["online"] == 1

        own_postgres.stop()
        body = wait_ready(url, False)
        assert body["status"] == 503 and body["type"].endswith("/not-ready")
        assert body["checks"]["database"]["ok"] is False and body["checks"]["grpc"]["ok"] is True
        assert "database" in body["detail"]
        assert httpx.get(url + "/healthz", timeout=10).status_code == 200  # alive, just not ready

        own_postgres.start()
        body = wait_ready(url, True)  # the pool reconnects (pre-ping): ready again
        assert body["checks"]["database"]["ok"] is True

        h.cluster.stop("clinic-0")  # no node left online
        h.cluster.wait_online(h.tokens["admin"], ["clinic-0"], online=False)
        body = wait_ready(url, False)
        assert [k for k, c in body["checks"].items() if not c["ok"]] == ["nodes"]
        assert body["checks"]["nodes"]["online"] == 0
    finally:
        h.cluster.close()
