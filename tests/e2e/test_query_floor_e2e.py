"""A node whose data step fails after it answered Round 0 (issue #13: the data step overlaps the
secure-aggregation setup), with real gateway and node processes.

The node has accepted the task and answered Round 0 with its keys; its rows are read in the
background and the read fails (its file is gone). Round 2 then fails: the gateway counts the node
as a refusal, not a silent drop-out. With t = 2 of 3 the other two still release their sum; with
two such nodes the job aborts, and since the cause may depend on the data, the abort is charged
and its reason names nobody (``QueryService.aborted``), as for an error in Round 0 before.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from e2e_helpers import start_hospitals

from xdp_compute.errors import XdpError

SQL = "SELECT clinic, COUNT(*) AS n FROM visits GROUP BY clinic"
FAST = {"XDP_ROUND_TIMEOUT": "8"}


def test_one_failed_data_step_leaves_the_others_sum(tmp_path: Path) -> None:
    h = start_hospitals(tmp_path, n=3, rows=100, env=FAST)
    try:
        a = h.analyst()
        a.query(SQL, epsilon=0.5)  # every node has read its file once
        (h.cluster.root / "clinic-2" / "visits.csv").unlink()
        r = a.query(SQL, epsilon=0.5)
        assert sorted(r.nodes) == ["clinic-0", "clinic-1"]
        log = (h.cluster.root / "gateway.log").read_text()
        assert "failed secagg_masked_input" in log and "source file not found" in log
    finally:
        h.cluster.close()


def test_failed_data_steps_below_the_threshold_abort_charged_naming_nobody(tmp_path: Path) -> None:
    h = start_hospitals(tmp_path, n=3, rows=100, env=FAST)
    try:
        a = h.analyst()
        before = a.budget("visits")
        for node in ("clinic-1", "clinic-2"):
            (h.cluster.root / node / "visits.csv").unlink()
        with pytest.raises(XdpError) as e:
            a.query(SQL, epsilon=0.5)
        assert e.value.status == 503
        assert e.value.detail == "secure aggregation aborted"  # no node, no cause: they may depend on data
        after = a.budget("visits")
        for b, x in zip(before["nodes"], after["nodes"], strict=True):
            assert x["epsilon_spent"] == pytest.approx(b["epsilon_spent"] + 0.5, abs=1e-6)
            assert x["epsilon_reserved"] == pytest.approx(0.0, abs=1e-12)
    finally:
        h.cluster.close()
