"""Release gate, holders' approvals and the auditors' verifiable log, with real processes."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_helpers import Hospitals, start_hospitals

from xdp_compute import Client
from xdp_compute.audit import verify_consistency
from xdp_compute.errors import Forbidden, XdpError

SQL = "SELECT clinic, COUNT(*) AS n FROM visits GROUP BY clinic"


def audit_verify(h: Hospitals, checkpoint: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "xdp_compute", "audit", "verify", "--url", h.cluster.url,
                           "--token", h.tokens["auditor"], "--checkpoint", str(checkpoint)],
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def approving(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hospitals]:
    capture = tmp_path_factory.mktemp("cap") / "capture.tsv"
    h = start_hospitals(tmp_path_factory.mktemp("appr"), n=2, rows=100, approval={"clinic-0"},
                        gateway_env={"XDP_GRPC_CAPTURE": str(capture)})
    h.files["__capture__"] = str(capture)
    try:
        yield h
    finally:
        h.cluster.close()


def submitted_tasks(capture: Path) -> int:
    if not capture.exists():
        return 0
    return sum(1 for line in capture.read_text().splitlines() if line.split("\t")[1] == "SubmitResult")


def test_approval_flow_waits_then_runs_with_approver_logged(approving: Hospitals) -> None:
    h = approving
    analyst, owner, other = h.analyst(), Client(h.cluster.url, h.tokens["clinic-0"]), \
        Client(h.cluster.url, h.tokens["clinic-1"])
    capture = Path(h.files["__capture__"])
    job = analyst.submit_query(SQL, epsilon=0.5)
    assert job["status"] == "awaiting_approval"
    time.sleep(1.0)
    assert submitted_tasks(capture) == 0, "nothing may be computed before approval"
    assert analyst.job(job["job_id"])["status"] == "awaiting_approval"
    # The owner sees plan, principal, cost and decisions — never data.
    pending = [a for a in owner.approvals() if a["job_id"] == job["job_id"]]
    assert pending and pending[0]["principal"] == "analyst" and pending[0]["cost"]["epsilon"] <= 0.5
    assert pending[0]["plan_summary"]["sql"] and pending[0]["decisions"]
    # Analysts and other holders cannot approve.
    with pytest.raises(Forbidden):
        analyst.approve(job["job_id"])
    with pytest.raises(Forbidden):
        other.approve(job["job_id"])
    owner.approve(job["job_id"])
    r = analyst.result(job["job_id"], wait=60)
    assert [row["clinic"] for row in r.rows] == ["north", "south", "east"]
    assert r.receipt["entry"]["approvers"] == ["clinic-0-holder"]
    assert analyst.verify_receipt(r)


def test_denial_computes_nothing_refunds_and_is_logged(approving: Hospitals) -> None:
    h = approving
    analyst, owner = h.analyst(), Client(h.cluster.url, h.tokens["clinic-0"])
    capture = Path(h.files["__capture__"])
    tasks_before = submitted_tasks(capture)
    before = analyst.budget("visits")
    job = analyst.submit_query(SQL, epsilon=0.5)
    mid = analyst.budget("visits")
    assert all(n["epsilon_reserved"] > 0 for n in mid["nodes"])
    owner.deny(job["job_id"], reason="not for this purpose")
    with pytest.raises(XdpError, match="not for this purpose"):
        analyst.result(job["job_id"], wait=30)
    after = analyst.budget("visits")
    assert [n["epsilon_spent"] for n in after["nodes"]] == [n["epsilon_spent"] for n in before["nodes"]]
    assert all(n["epsilon_reserved"] == pytest.approx(0, abs=1e-12) for n in after["nodes"])
    assert submitted_tasks(capture) == tasks_before
    auditor = Client(h.cluster.url, h.tokens["auditor"])
    last = auditor._get("/v1/audit/entries", params={"kind": "approval_refused"})
    assert last and last[-1]["job_id"] == job["job_id"] and "not for this purpose" in last[-1]["reason"]


def test_each_release_is_one_entry_and_receipt_verifies(tmp_path: Path) -> None:
    h = start_hospitals(tmp_path, n=2, rows=80)
    try:
        a = h.analyst()
        auditor = Client(h.cluster.url, h.tokens["auditor"])
        n0 = len(auditor._get("/v1/audit/entries"))
        r = a.query(SQL, epsilon=0.3)
        entries = auditor._get("/v1/audit/entries")
        assert len(entries) == n0 + 1 and entries[-1]["kind"] == "released"
        assert entries[-1]["job_id"] == r.job_id and entries[-1]["index"] == r.receipt["log_index"]
        assert "rows" not in entries[-1] and entries[-1]["payload_digest"]  # digests and costs, no values
        assert a.verify_receipt(r)
        r.delivery["result"]["rows"][0]["n"] += 1  # a tampered delivery no longer matches its receipt
        with pytest.raises(XdpError, match="digest"):
            a.verify_receipt(r)
    finally:
        h.cluster.close()


def tamper(db: Path, sql: str, *args: object) -> None:
    with sqlite3.connect(db) as c:
        c.execute(sql, args)


def test_tampering_is_caught(tmp_path: Path) -> None:
    h = start_hospitals(tmp_path / "c", n=2, rows=80)
    db = h.cluster.root / "gateway.db"
    cp = tmp_path / "checkpoint.json"
    try:
        a = h.analyst()
        for _ in range(5):
            a.query(SQL, epsilon=0.1)
        ok = audit_verify(h, cp)
        assert ok.returncode == 0 and "5 entries" in ok.stdout and cp.exists(), ok.stderr
        with sqlite3.connect(db) as c:
            rows = dict(c.execute("SELECT idx, entry_json FROM log_entries").fetchall())

        # Edit one entry.
        tamper(db, "UPDATE log_entries SET entry_json = replace(entry_json, '\"released\"', '\"denied\"') "
                   "WHERE idx = 2")
        bad = audit_verify(h, cp)
        assert bad.returncode != 0 and "first bad index: 2" in bad.stderr, bad.stderr
        tamper(db, "UPDATE log_entries SET entry_json = ? WHERE idx = 2", rows[2])
        # Delete one.
        tamper(db, "DELETE FROM log_entries WHERE idx = 3")
        bad = audit_verify(h, cp)
        assert bad.returncode != 0 and "first bad index: 3" in bad.stderr, bad.stderr
        tamper(db, "INSERT INTO log_entries (idx, entry_json) VALUES (3, ?)", rows[3])
        # Reorder two.
        tamper(db, "UPDATE log_entries SET entry_json = ? WHERE idx = 1", rows[2])
        tamper(db, "UPDATE log_entries SET entry_json = ? WHERE idx = 2", rows[1])
        bad = audit_verify(h, cp)
        assert bad.returncode != 0 and "first bad index: 1" in bad.stderr, bad.stderr
        tamper(db, "UPDATE log_entries SET entry_json = ? WHERE idx = 1", rows[1])
        tamper(db, "UPDATE log_entries SET entry_json = ? WHERE idx = 2", rows[2])
        # Truncate the tail (entries and their heads).
        tamper(db, "DELETE FROM log_entries WHERE idx >= 3")
        tamper(db, "DELETE FROM tree_heads WHERE tree_size > 3")
        bad = audit_verify(h, cp)
        assert bad.returncode != 0 and "truncat" in bad.stderr.lower(), bad.stderr
    finally:
        h.cluster.close()


def test_restart_keeps_log_and_key_with_consistency_and_key_swap_is_caught(tmp_path: Path) -> None:
    h = start_hospitals(tmp_path / "c", n=2, rows=80)
    db = h.cluster.root / "gateway.db"
    cp = tmp_path / "checkpoint.json"
    try:
        a = h.analyst()
        for _ in range(3):
            a.query(SQL, epsilon=0.1)
        assert audit_verify(h, cp).returncode == 0
        auditor = Client(h.cluster.url, h.tokens["auditor"])
        before = auditor._get("/v1/audit/head")["signed_tree_head"]
        key = auditor.public_key()
        h.cluster.stop("gateway")
        h.cluster.start_gateway()
        h.cluster.wait_online(h.tokens["admin"], h.nodes)
        assert auditor.public_key() == key
        a.query(SQL, epsilon=0.1)
        after = auditor._get("/v1/audit/head")["signed_tree_head"]
        proof = auditor._get("/v1/audit/proof/consistency", params={"first": before["tree_size"]})
        verify_consistency(before["tree_size"], after["tree_size"], bytes.fromhex(before["root_hash"]),
                           bytes.fromhex(after["root_hash"]), [bytes.fromhex(x) for x in proof["proof"]])
        ok = audit_verify(h, cp)
        assert ok.returncode == 0 and "4 entries" in ok.stdout, ok.stderr
        # Replace the signing key (a 0600 file outside the database): the checkpoint pins the old key.
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        key_file = h.cluster.root / ".xdp" / "release-log.key"
        assert key_file.stat().st_mode & 0o777 == 0o600
        key_file.write_bytes(Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        h.cluster.stop("gateway")
        h.cluster.start_gateway()
        bad = audit_verify(h, cp)
        assert bad.returncode != 0 and "key" in bad.stderr.lower(), bad.stderr
    finally:
        h.cluster.close()


def test_concurrent_approve_and_deny_never_release_uncharged(approving: Hospitals) -> None:
    import concurrent.futures as cf

    h = approving
    analyst, owner = h.analyst(), Client(h.cluster.url, h.tokens["clinic-0"])
    before = analyst.budget("visits")["nodes"]
    jobs = [analyst.submit_query(SQL, epsilon=0.05)["job_id"] for _ in range(8)]

    def decide(args: tuple[str, int]) -> str:
        job_id, k = args
        try:
            (owner.approve(job_id) if k % 2 == 0 else owner.deny(job_id, "race"))
            return "ok"
        except XdpError as e:
            return str(e.status)

    with cf.ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(decide, [(j, k) for j in jobs for k in range(4)]))
    assert outcomes.count("ok") == len(jobs)  # exactly one decision per job wins
    final = {}
    for j in jobs:
        for _ in range(200):
            st = analyst.job(j)["status"]
            if st in ("released", "denied", "failed"):
                break
            time.sleep(0.1)
        final[j] = st
    released = sum(1 for s in final.values() if s == "released")
    assert set(final.values()) <= {"released", "denied"}
    after = analyst.budget("visits")["nodes"]
    for b, a in zip(before, after, strict=True):
        assert a["epsilon_reserved"] == pytest.approx(0.0, abs=1e-12)
        assert a["epsilon_spent"] - b["epsilon_spent"] == pytest.approx(released * 0.05, rel=1e-6, abs=1e-9)


def test_empty_idempotency_key_is_422(approving: Hospitals) -> None:
    with pytest.raises(XdpError) as e:
        approving.analyst()._post("/v1/queries", json={"sql": SQL, "epsilon": 0.1, "idempotency_key": ""})
    assert e.value.status == 422
