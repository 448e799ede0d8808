"""A gateway killed mid-job: the charge it keeps is in the release log (issue #12 item 7)."""

from __future__ import annotations

import json
import signal
import sqlite3
import threading
import time
from pathlib import Path

import httpx
import pytest
from e2e_helpers import start_hospitals

pytestmark = pytest.mark.slow
SQL = "SELECT clinic, COUNT(*) AS n FROM visits GROUP BY clinic"


def test_a_crash_interrupted_job_is_charged_and_logged_as_failed(tmp_path: Path) -> None:
    h = start_hospitals(tmp_path, n=3, rows=50, budget=5.0,
                        node_env={n: {"XDP_TEST_NODE_DELAY": "6"} for n in ("clinic-0", "clinic-1", "clinic-2")})
    db = h.cluster.root / "gateway.db"
    try:
        url, token = h.cluster.url, h.tokens["analyst"]

        def submit() -> None:
            try:
                httpx.post(url + "/v1/queries", json={"sql": SQL, "epsilon": 1.0},
                           headers={"authorization": f"Bearer {token}"}, timeout=60)
            except httpx.HTTPError:
                pass  # the gateway is killed under this request on purpose

        threading.Thread(target=submit, daemon=True).start()
        for _ in range(200):
            with sqlite3.connect(db) as c:
                job = c.execute("SELECT id FROM jobs WHERE status='running'").fetchone()
            if job:
                break
            time.sleep(0.05)
        assert job, "the job never started"
        h.cluster.stop("gateway", sig=signal.SIGKILL)
        h.cluster.start_gateway()
        with httpx.Client(base_url=h.cluster.url, timeout=60) as http:
            entries = http.get("/v1/audit/entries", headers={"authorization": f"Bearer {h.tokens['auditor']}"}
                               ).json()
        mine = [e for e in entries if e.get("job_id") == job[0]]
        assert len(mine) == 1 and mine[0]["kind"] == "failed", entries
        assert "charged" in mine[0]["reason"] and mine[0]["privacy_cost"]["epsilon"] == pytest.approx(1.0, abs=1e-6)
        with sqlite3.connect(db) as c:
            status, error = c.execute("SELECT status, error_json FROM jobs WHERE id = ?", job).fetchone()
        assert status == "failed" and json.loads(error)["log_index"] == mine[0]["index"]
    finally:
        h.cluster.close()
