"""The privacy ledger under concurrency and crashes, with real processes."""

from __future__ import annotations

import concurrent.futures as cf
import json
import sqlite3
import threading
import time
from pathlib import Path

import httpx
import pytest
from e2e_helpers import start_hospitals

SQL = "SELECT COUNT(*) AS n FROM visits"


def ledger(db: Path) -> list[tuple[str, float, float, float]]:
    with sqlite3.connect(db) as c:
        return c.execute("SELECT node_id, eps_budget, eps_spent, eps_reserved FROM node_datasets "
                         "ORDER BY node_id").fetchall()


@pytest.mark.parametrize("tls", [False, True], ids=["plaintext", "tls"])
def test_200_concurrent_queries_release_exactly_what_the_budget_affords(tmp_path: Path, tls: bool) -> None:
    # Budget 1.0, each query costs at most 0.1: exactly 10 can be released.
    h = start_hospitals(tmp_path, n=3, rows=50, budget=1.0, tls=tls)
    try:
        url, token = h.cluster.url, h.tokens["analyst"]
        body = {"sql": SQL, "epsilon": 0.1}
        stop = threading.Event()
        worst: list[float] = []

        def watch() -> None:  # the ledger never exceeds the budget, at any moment
            while not stop.is_set():
                for _, budget, spent, reserved in ledger(h.cluster.root / "gateway.db"):
                    worst.append(spent + reserved - budget)
                time.sleep(0.01)

        w = threading.Thread(target=watch)
        w.start()
        with httpx.Client(timeout=300, verify=h.cluster.verify) as client, \
                cf.ThreadPoolExecutor(max_workers=40) as pool:
            codes = list(pool.map(lambda _: client.post(url + "/v1/queries", json=body,
                                                       headers={"authorization": f"Bearer {token}"}).status_code,
                                  range(200)))
        stop.set()
        w.join()
        assert codes.count(200) == 10, codes
        assert codes.count(403) == 190
        assert max(worst) <= 1e-9
        for _, budget, spent, reserved in ledger(h.cluster.root / "gateway.db"):
            assert spent <= budget + 1e-9 and reserved == pytest.approx(0.0, abs=1e-12)
            assert spent == pytest.approx(10 * 0.1, rel=1e-6)
        # Each refusal and each release is in the log.
        entries = httpx.get(url + "/v1/audit/entries", params={"limit": 1000}, verify=h.cluster.verify,
                            headers={"authorization": f"Bearer {h.tokens['auditor']}"}).json()
        kinds = [e["kind"] for e in entries]
        assert kinds.count("released") == 10 and kinds.count("budget_exhausted") == 190
    finally:
        h.cluster.close()


@pytest.mark.parametrize("tls", [False, True], ids=["plaintext", "tls"])
def test_gateway_killed_mid_job_never_unspends_and_releases_nothing(tmp_path: Path, tls: bool) -> None:
    h = start_hospitals(tmp_path, n=3, rows=50, budget=5.0, tls=tls, node_env={
        n: {"XDP_TEST_NODE_DELAY": "6"} for n in ("clinic-0", "clinic-1", "clinic-2")})
    db = h.cluster.root / "gateway.db"
    try:
        before = ledger(db)
        url, token = h.cluster.url, h.tokens["analyst"]
        def submit() -> None:
            try:
                httpx.post(url + "/v1/queries", json={"sql": SQL, "epsilon": 1.0}, verify=h.cluster.verify,
                           headers={"authorization": f"Bearer {token}"}, timeout=60)
            except httpx.HTTPError:
                pass  # the gateway is killed under this request on purpose

        t = threading.Thread(target=submit, daemon=True)
        t.start()
        for _ in range(100):
            with sqlite3.connect(db) as c:
                if c.execute("SELECT count(*) FROM jobs WHERE status='running'").fetchone()[0]:
                    break
            time.sleep(0.05)
        mid = ledger(db)
        assert all(m[3] > 0 for m in mid), "the job holds a reservation while it runs"
        import signal

        h.cluster.stop("gateway", sig=signal.SIGKILL)
        h.cluster.start_gateway()
        after = ledger(db)
        for b, a in zip(before, after, strict=True):
            assert a[2] >= b[2] + 0.999  # charged: a noisy value may exist
            assert a[3] == pytest.approx(0.0, abs=1e-12)
        with sqlite3.connect(db) as c:
            status, error = c.execute("SELECT status, error_json FROM jobs").fetchone()
            released = c.execute("SELECT count(*) FROM log_entries WHERE entry_json LIKE '%\"released\"%'").fetchone()
        assert status == "failed" and "charged" in json.loads(error)["detail"]
        assert released[0] == 0
    finally:
        h.cluster.close()
