"""The gateway on PostgreSQL (by URL): registration, a joint query, approvals-free release, audit."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from e2e_helpers import start_hospitals

from xdp_compute import Client


def test_gateway_with_postgresql_store(tmp_path: Path, fresh_pg_db: str) -> None:
    h = start_hospitals(tmp_path, n=2, rows=120, db=fresh_pg_db)
    try:
        r = h.analyst().query("SELECT clinic, COUNT(*) AS n FROM visits GROUP BY clinic", epsilon=0.5)
        assert [row["clinic"] for row in r.rows] == ["north", "south", "east"]
        assert h.analyst().verify_receipt(r)
        v = subprocess.run([sys.executable, "-m", "xdp_compute", "audit", "verify", "--url", h.cluster.url,
                            "--token", h.tokens["auditor"]], capture_output=True, text=True, timeout=120)
        assert v.returncode == 0, v.stderr
        meter = Client(h.cluster.url, h.tokens["auditor"]).metering()
        assert meter["per_analyst"]["analyst"]["released"] == 1
        assert meter["per_dataset"]["visits"]["epsilon_spent"] > 0
        holder_view = Client(h.cluster.url, h.tokens["clinic-0"]).metering()
        assert set(holder_view["per_dataset"]) == {"visits"}
    finally:
        h.cluster.close()
