"""Two gateway replicas on one PostgreSQL and three nodes connected to both (issue #18).

- 200 concurrent queries split across both replicas against a budget that affords exactly 10:
  exactly 10 are released and 190 refused for budget;
- a replica killed with ``kill -9`` while it runs a job: the other fails and logs it (charged,
  nothing released), and the analyst's SDK, given both URLs, fails over and reads that outcome;
- ``xdp audit verify`` passes on the combined log (through the CLI's URL list, the dead replica
  first); the log has one entry per released or refused job and no index twice.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from e2e_helpers import MANIFEST, invite, visits_csv
from sqlalchemy import select

from xdp_compute import Client
from xdp_compute import errors as E
from xdp_compute.cli.cluster import LocalCluster, Proc, free_port
from xdp_compute.gateway import models as m
from xdp_compute.gateway.recovery import ORPHAN_REASON
from xdp_compute.gateway.store import Store

pytestmark = pytest.mark.slow

# A second dataset over the same rows, with a budget of its own, for the kill -9 part.
WARDS = "[[datasets]]" + MANIFEST.split("[[datasets]]", 1)[1].replace('name = "visits"', 'name = "wards"', 1)
EPS = 0.1  # each query's epsilon; the visits budget (1.0 per node) affords exactly 10


def start_replica(cluster: LocalCluster, name: str, http: int, grpc: int) -> tuple[Proc, str, str]:
    proc = cluster._spawn(name, ["gateway", "--db", cluster.db_url, "--http", f"127.0.0.1:{http}",
                                 "--grpc", f"127.0.0.1:{grpc}", "--insecure"])
    url = f"http://127.0.0.1:{http}"
    deadline = time.time() + 60
    while time.time() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{name} exited:\n{proc.tail()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return proc, url, f"127.0.0.1:{grpc}"
        time.sleep(0.2)
    raise RuntimeError(f"{name} did not become healthy:\n{proc.tail()}")


def log_entries(db: str) -> list[tuple[int, dict[str, object]]]:
    store = Store.open(db)
    try:
        with store.read() as s:
            rows = s.execute(select(m.LogEntry.idx, m.LogEntry.entry_json).order_by(m.LogEntry.idx)).all()
    finally:
        store.close()
    return [(idx, json.loads(text)) for idx, text in rows]


def test_two_replicas_one_budget_one_log_and_a_killed_replica(tmp_path: Path, fresh_pg_db: str) -> None:
    key_file = tmp_path / "release-log.key"
    cluster = LocalCluster(root=tmp_path, db=fresh_pg_db,
                           env={"XDP_HEARTBEAT_SECONDS": "0.5", "XDP_LOG_KEY_FILE": str(key_file),
                                "XDP_ORPHAN_CHECK_SECONDS": "1"})
    try:
        cluster.start_gateway()  # replica A (creates the shared log key)
        a_url, a_grpc = cluster.url, cluster.grpc_addr
        b_proc, b_url, b_grpc = start_replica(cluster, "gateway-b", free_port(), free_port())
        tokens = {r: cluster.token(r, r) for r in ("admin", "analyst", "auditor")}
        names = [f"clinic-{i}" for i in range(3)]
        for i, node in enumerate(names):
            tokens[node] = cluster.token("holder", f"{node}-holder")
            common = {"min_group": 5, "categories": '["transport"]', "approval": "false"}
            text = MANIFEST.format(node=node, region="CN-FJ", budget=1.0, **common) + "\n" + \
                WARDS.format(budget=10.0, **common)
            manifest = cluster.write_node_files(node, text, {"visits.csv": visits_csv(i, 200)})
            if i > 0:
                for ds in ("visits", "wards"):
                    invite(cluster, tokens[names[0]], f"{node}-holder", ds)
            # Every node keeps a session with both replicas; one is slow, so a job lasts ~1.5 s.
            cluster.start_node(node, tokens[node], manifest, gateway=f"{a_grpc},{b_grpc}",
                               env={"XDP_TEST_NODE_DELAY": "1.5"} if i == 2 else None)
            if i == 0:
                cluster.wait_online(tokens["admin"], [node])
        cluster.wait_online(tokens["admin"], names)

        # ---- 200 concurrent queries, split across both replicas, against 10 queries' budget.
        sql = "SELECT clinic, COUNT(*) AS n FROM visits GROUP BY clinic"
        clients = [Client(u, tokens["analyst"], timeout=300) for u in (a_url, b_url)]

        def ask(i: int) -> str:
            try:
                clients[i % 2].query(sql, epsilon=EPS)
                return "released"
            except E.BudgetExhausted as e:
                assert "budget" in e.detail
                return "budget"

        with cf.ThreadPoolExecutor(16) as pool:
            outcomes = list(pool.map(ask, range(200)))
        assert outcomes.count("released") == 10, outcomes
        assert outcomes.count("budget") == 190

        # ---- replica B is killed with kill -9 while it runs a job.
        outcome: dict[str, object] = {}

        def submit_to_b_then_a() -> None:
            with Client([b_url, a_url], tokens["analyst"], timeout=120) as c:
                try:
                    outcome["result"] = c.query("SELECT COUNT(*) AS n FROM wards", epsilon=EPS,
                                                idempotency_key="killed-job")
                except E.XdpError as e:
                    outcome["error"] = e

        t = threading.Thread(target=submit_to_b_then_a)
        t.start()
        store = Store.open(fresh_pg_db)
        try:
            deadline, job_id = time.time() + 60, None
            while time.time() < deadline and job_id is None:
                with store.read() as s:
                    job_id = s.scalar(select(m.Job.id).where(m.Job.idempotency_key == "killed-job",
                                                            m.Job.status == "running"))
                time.sleep(0.02)
            assert job_id is not None, "the job never ran on replica B"
            cluster.stop("gateway-b", sig=signal.SIGKILL)
            assert not b_proc.alive()
            t.join(120)
            assert not t.is_alive()
            with store.read() as s:
                job = s.get(m.Job, job_id)
                assert job is not None and job.status == "failed"
                states = set(s.scalars(select(m.Reservation.state).where(m.Reservation.job_id == job_id)).all())
        finally:
            store.close()
        assert states == {"committed"}  # charged: a noisy value may have existed
        # The SDK moved to replica A with the same idempotency key and read the job's end there.
        assert "result" not in outcome
        err = outcome["error"]
        assert isinstance(err, E.Conflict) and "replica running this job stopped" in err.detail, err

        # ---- the combined log: verified whole, one entry per decision, no index twice.
        v = subprocess.run([sys.executable, "-m", "xdp_compute", "audit", "verify", "--url", f"{b_url},{a_url}",
                            "--token", tokens["auditor"]], capture_output=True, text=True, timeout=300, check=False)
        assert v.returncode == 0, v.stdout + v.stderr
        entries = log_entries(fresh_pg_db)
        indices = [idx for idx, _ in entries]
        assert indices == list(range(len(entries))) and [e["index"] for _, e in entries] == indices
        kinds = [e["kind"] for _, e in entries]
        assert kinds.count("released") == 10 and kinds.count("budget_exhausted") == 190
        released_jobs = [e["job_id"] for _, e in entries if e["kind"] == "released"]
        assert len(set(released_jobs)) == 10
        failed = [e for _, e in entries if e["kind"] == "failed"]
        assert [(e["job_id"], e["reason"]) for e in failed] == [(job_id, ORPHAN_REASON)]
        assert len(entries) == 10 + 190 + 1
    finally:
        cluster.close()
        cluster.stop("gateway-b", sig=signal.SIGKILL)
