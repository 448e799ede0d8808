"""A released query through SecAgg+ with 50 real node processes (issue #13 goal 4).

One gateway and 50 node processes on loopback (one thread each, no preload), each of its own
holder with a 20-row CSV; the first holder owns ``visits`` and invites the others. The dry run
shows the SecAgg+ session the plan fixed (k < 49), and the released COUNT matches the truth
within the reported interval's scale. Slow (about 2-3 minutes on 2 cores): marked ``slow``.
"""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path

import numpy as np
import pytest

from xdp_compute.cli.cluster import LocalCluster
from xdp_compute.crypto.secagg import secagg_plus_parameters

N = 50
ROWS = 20
MANIFEST = """
[node]
name = "{node}"
region = "CN-FJ"

[[datasets]]
name = "visits"
source = "visits.csv"
classification = "internal"
categories = ["transport"]
epsilon_budget = 100
delta = 1e-5
min_group_size = 5
require_approval = false

[datasets.columns]
clinic = {{ type = "category", values = ["north", "south", "east"], uses = ["group", "filter"] }}
cost   = {{ type = "float", min = 0, max = 1000, uses = ["aggregate", "filter"] }}
"""


def tiny_csv(seed: int) -> tuple[str, list[str]]:
    rng = np.random.default_rng(seed)
    clinics = list(rng.choice(["north", "south", "east"], ROWS))
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(["clinic", "cost"])
    for c in clinics:
        w.writerow([c, f"{rng.uniform(0, 1000):.2f}"])
    return out.getvalue(), clinics


@pytest.mark.slow
def test_fifty_nodes_release_one_query_through_secagg_plus(tmp_path: Path) -> None:
    started = time.time()
    cluster = LocalCluster(root=tmp_path, env={"XDP_HEARTBEAT_SECONDS": "1", "XDP_ROUND_TIMEOUT": "60"})
    try:
        cluster.start_gateway()
        admin = cluster.token("admin", "admin")
        analyst = cluster.token("analyst", "analyst")
        names = [f"site-{i:02d}" for i in range(N)]
        clinics: list[str] = []
        owner = ""
        for i, node in enumerate(names):
            token = cluster.token("holder", f"{node}-holder")
            text, cs = tiny_csv(i)
            clinics += cs
            manifest = cluster.write_node_files(node, MANIFEST.format(node=node), {"visits.csv": text})
            if i == 0:
                owner = token
            else:  # the owner invites each holder before its node registers
                with cluster.client(owner) as c:
                    c.invite("visits", f"{node}-holder")
            cluster.start_node(node, token, manifest)
            if i == 0:
                cluster.wait_online(admin, [node], timeout=120)
        cluster.wait_online(admin, names, timeout=300)
        online_s = time.time() - started

        expect = secagg_plus_parameters(N, dropout_rate=0.05, corrupt_rate=1 / 3, colluding=1)
        sql = "SELECT clinic, COUNT(*) AS n FROM visits GROUP BY clinic"
        with cluster.client(analyst) as a:
            plan = a.query(sql, epsilon=2.0, dry_run=True)
            sa = plan["plan"]["secure_aggregation"]
            assert sa["graph"].startswith("secagg+") and sa["nodes"] == N
            assert (sa["neighbours"], sa["threshold"]) == (expect.neighbours, expect.threshold)
            assert sa["neighbours"] < N - 1
            t0 = time.time()
            r = a.query(sql, epsilon=2.0)
            query_s = time.time() - t0
        assert len(r.nodes) >= expect.threshold and sorted(r.nodes) == names  # nobody dropped on loopback
        exact = {c: clinics.count(c) for c in ("north", "south", "east")}
        for row, iv in zip(r.rows, r.intervals, strict=True):
            lo, hi = iv["n"]
            # Far outside 5 half-widths would mean a broken sum, not bad luck.
            assert abs(row["n"] - exact[row["clinic"]]) <= 5 * (hi - lo) / 2 + 1
        print(f"\n50 nodes: online in {online_s:.0f} s; SecAgg+ k={sa['neighbours']} t={sa['threshold']}; "
              f"query released in {query_s:.1f} s")
    finally:
        cluster.close()
