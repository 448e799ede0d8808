"""A log its operator cannot rewrite alone: nodes witness it, auditors require their quorum (issue #12).

The operator holds the signing key (now a 0600 file outside the database), so these attacks
re-sign every head with it — which passed ``xdp audit verify`` without a checkpoint before.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
from cryptography.hazmat.primitives import serialization
from e2e_helpers import Hospitals, start_hospitals

from xdp_compute.audit import MerkleTree, TreeHeadSigner

SQL = "SELECT clinic, COUNT(*) AS n FROM visits GROUP BY clinic"
FAST = {"XDP_WITNESS_REFRESH": "1"}  # witnesses re-cosign an unchanged head every second


def start(root: Path) -> Hospitals:
    return start_hospitals(root, n=2, rows=80, node_env={f"clinic-{i}": FAST for i in range(2)})


def xdp(h: Hospitals, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "xdp_compute", "audit", *args, "--url", h.cluster.url],
                          check=False, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "XDP_TOKEN": h.tokens["auditor"]})


def wait_cosigned(h: Hospitals, size: int, timeout: float = 30) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        r = httpx.get(h.cluster.url + "/v1/audit/witnesses",
                      headers={"authorization": f"Bearer {h.tokens['auditor']}"}, timeout=5).json()
        if len(r) == len(h.nodes) and all(w["tree_size"] == size for w in r):
            return
        time.sleep(0.3)
    raise AssertionError(f"witnesses did not cosign size {size}: {r}")


def resign_heads(h: Hospitals) -> None:
    """What an operator with the key can do: recompute the tree over the stored entries, re-sign."""
    pem = (h.cluster.root / ".xdp" / "release-log.key").read_bytes()
    key = serialization.load_pem_private_key(pem, password=None)
    signer = TreeHeadSigner(key)  # type: ignore[arg-type]
    with sqlite3.connect(h.cluster.root / "gateway.db") as c:
        rows = c.execute("SELECT entry_json FROM log_entries ORDER BY idx").fetchall()
        c.execute("DELETE FROM tree_heads")
        tree = MerkleTree()
        for (text,) in rows:
            tree.append(text.encode())
            sth = signer.sign(tree.size, tree.root())
            c.execute("INSERT INTO tree_heads VALUES (?, ?, ?, ?, ?)",
                      (sth.tree_size, sth.root_hash.hex(), sth.timestamp_ms, sth.signature.hex(), sth.key_id))


def sql(h: Hospitals, statement: str, *args: object) -> list[tuple[object, ...]]:
    with sqlite3.connect(h.cluster.root / "gateway.db") as c:
        return c.execute(statement, args).fetchall()


def restart_gateway(h: Hospitals) -> None:
    h.cluster.stop("gateway")
    h.cluster.start_gateway()
    h.cluster.wait_online(h.tokens["admin"], h.nodes)


def node_logs(h: Hospitals) -> str:
    return "".join((h.cluster.root / f"{n}.log").read_text(errors="replace") for n in h.nodes)


def test_key_file_is_private_and_outside_the_database(tmp_path: Path) -> None:
    h = start(tmp_path / "c")
    try:
        key = h.cluster.root / ".xdp" / "release-log.key"
        assert key.stat().st_mode & 0o777 == 0o600
        assert sql(h, "SELECT count(*) FROM secrets WHERE name = 'release-log-ed25519'") == [(0,)]
        for n in h.nodes:
            wkey = next((h.cluster.root / n).rglob("witness.key"))
            assert wkey.stat().st_mode & 0o777 == 0o600
        h.cluster.stop("gateway")
        key.chmod(0o644)
        try:
            h.cluster.start_gateway(timeout=20)
            raise AssertionError("the gateway started with a group-readable signing key")
        except RuntimeError as e:
            assert "mode 0644" in str(e) or "readable" in str(e), str(e)
    finally:
        h.cluster.close()


def test_honest_log_verifies_with_quorum_and_a_rewrite_fails(tmp_path: Path) -> None:
    h = start(tmp_path / "c")
    pins = tmp_path / "witnesses.txt"
    try:
        a = h.analyst()
        for _ in range(5):
            a.query(SQL, epsilon=0.1)
        wait_cosigned(h, 5)
        saved = xdp(h, "witnesses", "--save", str(pins))
        assert saved.returncode == 0 and pins.read_text().count("xdp-node/") == 2, saved.stderr
        ok = xdp(h, "verify", "--witnesses", str(pins))
        assert ok.returncode == 0 and "quorum of 2 of 2" in ok.stdout, ok.stderr

        # Edit entry 2 and re-sign every head with the operator's key: no checkpoint is used.
        sql(h, "UPDATE log_entries SET entry_json = replace(entry_json, '\"released\"', '\"denied\"') "
               "WHERE idx = 2")
        resign_heads(h)
        bad = xdp(h, "verify", "--witnesses", str(pins), "--wait", "0")
        assert bad.returncode == 1 and "history rewritten" in bad.stderr, bad.stdout + bad.stderr
        # Hiding the witnesses' cosignatures too, and restarting so the gateway's own check passes.
        sql(h, "DELETE FROM witness_cosignatures")
        restart_gateway(h)
        bad = xdp(h, "verify", "--witnesses", str(pins), "--wait", "4")
        assert bad.returncode == 1 and "not witnessed" in bad.stderr, bad.stdout + bad.stderr
        assert "REFUSES TO COSIGN" in node_logs(h) and "not consistent" in node_logs(h)
    finally:
        h.cluster.close()


def test_truncated_log_with_resigned_heads_fails(tmp_path: Path) -> None:
    h = start(tmp_path / "c")
    pins = tmp_path / "witnesses.txt"
    try:
        a = h.analyst()
        for _ in range(3):
            a.query(SQL, epsilon=0.1)
        wait_cosigned(h, 3)
        old_rows = sql(h, "SELECT * FROM witness_cosignatures")  # the operator keeps these
        saved_at = time.time()
        for _ in range(2):
            a.query(SQL, epsilon=0.1)
        wait_cosigned(h, 5)
        assert xdp(h, "witnesses", "--save", str(pins)).returncode == 0
        assert xdp(h, "verify", "--witnesses", str(pins)).returncode == 0

        sql(h, "DELETE FROM log_entries WHERE idx >= 3")
        resign_heads(h)
        bad = xdp(h, "verify", "--witnesses", str(pins), "--wait", "0")
        assert bad.returncode == 1 and "truncated tail" in bad.stderr and "first bad index: 3" in bad.stderr, \
            bad.stderr
        # Roll the cosignatures back to the size-3 ones, restart, and reuse index 3. The gateway is
        # stopped first: a witness's cosignature still in flight must not land after the rollback.
        h.cluster.stop("gateway")
        sql(h, "DELETE FROM witness_cosignatures")
        with sqlite3.connect(h.cluster.root / "gateway.db") as c:
            c.executemany("INSERT INTO witness_cosignatures VALUES (?, ?, ?, ?, ?, ?, ?)", old_rows)
        restart_gateway(h)
        r = a.query(SQL, epsilon=0.1)
        assert r.receipt["log_index"] == 3  # the index is reused ...
        time.sleep(max(0.0, saved_at + 3 - time.time()))
        bad = xdp(h, "verify", "--witnesses", str(pins), "--wait", "3", "--max-age", "3")
        # ... but no honest witness cosigns the regrown log
        assert bad.returncode == 1 and "not witnessed" in bad.stderr, bad.stderr
        assert "REFUSES TO COSIGN" in node_logs(h)
        # Without the new entry the rolled-back log is exactly what witnesses once cosigned: stale.
        sql(h, "DELETE FROM log_entries WHERE idx >= 3")
        resign_heads(h)
        restart_gateway(h)
        bad = xdp(h, "verify", "--witnesses", str(pins), "--wait", "2", "--max-age", "3")
        assert bad.returncode == 1 and "stale" in bad.stderr, bad.stderr
    finally:
        h.cluster.close()
