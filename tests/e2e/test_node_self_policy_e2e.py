"""Nodes enforce their own policy (issue #12, item 3), with real gateway and node processes.

The gateway is honest-but-curious *and checked*: each node recomputes from its own manifest the
noise a task must carry and refuses less; it keeps its own ledger and journal; ``xdp node audit``
checks the journal against the gateway's release log.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from e2e_helpers import start_hospitals, truth

from xdp_compute.cli.cluster import LocalCluster
from xdp_compute.domain.manifest import load_manifest
from xdp_compute.errors import XdpError
from xdp_compute.node.ledger import read_journal

COUNTS = "SELECT clinic, COUNT(*) AS n FROM visits GROUP BY clinic"


def _entries(url: str, token: str) -> list[dict]:
    r = httpx.get(url + "/v1/audit/entries", params={"limit": 1000},
                  headers={"authorization": f"Bearer {token}"}, timeout=30)
    r.raise_for_status()
    return r.json()  # type: ignore[no-any-return]


def _state(h: object, name: str) -> Path:
    return load_manifest(h.cluster.root / name / "node.toml").state_path  # type: ignore[attr-defined]


def test_a_gateway_sending_no_noise_is_refused_by_every_node(tmp_path: Path) -> None:
    # The attack: sigma_node2 rewritten to 0/1 gave exact counts while the log said eps 0.5.
    h = start_hospitals(tmp_path, n=3, rows=200, gateway_env={"XDP_TEST_GATEWAY_SIGMA_SCALE": "0"})
    try:
        exact = truth(h.files)
        with h.analyst() as a:
            try:
                r = a.query(COUNTS, epsilon=0.5)
            except XdpError as e:
                refused = e.detail
            else:
                got = {row["clinic"]: row["n"] for row in r.rows}
                pytest.fail(f"the deviating gateway released {got}; exact counts are "
                            f"{ {c: v['n'] for c, v in exact.items()} }")
        assert "aborted" in refused
        kinds = [e["kind"] for e in _entries(h.cluster.url, h.tokens["auditor"])]
        assert "released" not in kinds
        # Each node says why, in its own log (the shortfall, by measurement), and charged nothing.
        for name in h.nodes:
            log = (h.cluster.root / f"{name}.log").read_text()
            assert "too little noise for this node's policy" in log and "'count'" in log, log[-2000:]
            assert read_journal(_state(h, name)) == []
    finally:
        h.cluster.close()


def _audit(url: str, token: str, manifest: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "xdp_compute", "node", "audit", "--manifest", str(manifest),
                           "--url", url], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "XDP_TOKEN": token})


def test_own_budget_restart_and_audit(tmp_path: Path) -> None:
    h = start_hospitals(tmp_path / "c", n=3, rows=100, budget=1.0)
    try:
        db = h.cluster.root / "gateway.db"
        with h.analyst() as a:
            first = a.query(COUNTS, epsilon=0.6)
            # The operator raises every budget in its database: its ledger would allow more.
            with sqlite3.connect(db) as c:
                c.execute("UPDATE node_datasets SET eps_budget = 1000")
            with pytest.raises(XdpError, match="aborted"):
                a.query(COUNTS, epsilon=0.6)
        for name in h.nodes:
            assert "this node's own ledger for 'visits' has spent epsilon" in \
                (h.cluster.root / f"{name}.log").read_text()
            [entry] = read_journal(_state(h, name))  # the refused job was never charged
            assert (entry.job_id, entry.principal, entry.kind) == (first.job_id, "analyst", "query")
            assert entry.epsilon == pytest.approx(first.epsilon, rel=1e-12)
        # A restarted node keeps its ledger and journal: still refused.
        h.cluster.stop("clinic-0")
        h.cluster.start_node("clinic-0", h.tokens["clinic-0"], h.cluster.root / "clinic-0" / "node.toml")
        h.cluster.wait_online(h.tokens["admin"], h.nodes)
        assert [e.job_id for e in read_journal(_state(h, "clinic-0"))] == [first.job_id]
        with h.analyst() as a, pytest.raises(XdpError, match="aborted"):
            a.query(COUNTS, epsilon=0.6)
        assert "own ledger" in (h.cluster.root / "clinic-0.log").read_text().split("registered as")[-1]
        # An honest log: every journal entry is in it (the holder reads its own datasets' entries).
        manifest = h.cluster.root / "clinic-1" / "node.toml"
        ok = _audit(h.cluster.url, h.tokens["clinic-1"], manifest)
        assert ok.returncode == 0 and "all 1 journal entry appear" in ok.stdout, ok.stderr
        # A copy of the gateway's database with the released job's log row deleted, served by
        # a second gateway: the node's audit names the job and exits non-zero.
        copy = tmp_path / "copy.db"
        with sqlite3.connect(db) as src, sqlite3.connect(copy) as dst:
            src.backup(dst)  # a consistent copy (the live database may hold pages in its WAL)
        with sqlite3.connect(copy) as c:
            gone = c.execute("DELETE FROM log_entries WHERE entry_json LIKE ?", (f'%"{first.job_id}"%',)).rowcount
        assert gone >= 1
        other = LocalCluster(root=tmp_path / "copy", db=f"sqlite:///{copy}")
        try:
            other.start_gateway()
            bad = _audit(other.url, h.tokens["clinic-1"], manifest)
            assert bad.returncode == 1, (bad.stdout, bad.stderr)
            assert f"job {first.job_id}" in bad.stderr and "missing from the gateway's release log" in bad.stderr
        finally:
            other.close()
    finally:
        h.cluster.close()
