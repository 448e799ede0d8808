"""(b) End-to-end federated DP query over 3 nodes x N rows vs a plaintext DuckDB query over their union.

Both read the same three CSV files; the baseline is one DuckDB query over the union (no privacy,
no network); ours is the whole path: REST -> plan -> 3 node processes run pushdown SQL on their own
file -> noise shares -> secure aggregation over gRPC -> release gate -> log. Same run, same machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import duckdb
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))

SQL = "SELECT clinic, COUNT(*) AS n, AVG(cost) AS mean_cost FROM visits WHERE age > 30 GROUP BY clinic"


def write_csv(path: Path, rows: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    clinic = rng.choice(np.array(["north", "south", "east"]), rows)
    age = rng.integers(0, 101, rows)
    cost = np.round(rng.uniform(0, 1000, rows), 3)
    con = duckdb.connect()
    con.register("t", {"clinic": clinic, "age": age, "cost": cost, "note": np.full(rows, "x")})
    con.execute(f"COPY t TO '{path}' (HEADER, DELIMITER ',')")


def three_node_cluster(rows: int, prefix: str) -> tuple[Any, str, list[Path], Path]:
    """A gateway and three node processes over ``rows`` CSV rows each, sharing ``visits`` (the first
    holder owns it and invites the others). Returns (cluster, analyst token, CSV files, root)."""
    from e2e_helpers import MANIFEST, start_sharing

    from xdp_compute.cli.cluster import LocalCluster

    root = Path(tempfile.mkdtemp(prefix=prefix))
    cluster = LocalCluster(root=root / "c")
    cluster.start_gateway()
    admin, analyst = cluster.token("admin", "admin"), cluster.token("analyst", "analyst")
    files, nodes = [], []
    for i in range(3):
        node = f"clinic-{i}"
        d = root / "c" / node
        d.mkdir(parents=True)
        write_csv(d / "visits.csv", rows, i)
        files.append(d / "visits.csv")
        (d / "node.toml").write_text(MANIFEST.format(node=node, region="CN-FJ", budget=1e6, min_group=5,
                                                     categories="[]", approval="false"))
        nodes.append((node, f"h{i}", cluster.token("holder", f"h{i}"), d / "node.toml"))
    start_sharing(cluster, admin, "visits", nodes)
    cluster.wait_online(admin, [n for n, *_ in nodes])
    return cluster, analyst, files, root


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000, help="rows per node")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    from xdp_compute import Client

    cluster, analyst, files, _ = three_node_cluster(args.rows, "xdp-bench-q-")
    try:
        baseline_sql = ("SELECT clinic, COUNT(*), AVG(cost) FROM read_csv([" + ", ".join(f"'{f}'" for f in files)
                        + "], header=true) WHERE age > 30 GROUP BY clinic")
        con = duckdb.connect()
        base, ours = [], []
        c = Client(cluster.url, analyst)
        c.query(SQL, epsilon=0.1)  # warm-up (imports, connections)
        for _ in range(args.repeat):
            t = time.perf_counter()
            con.execute(baseline_sql).fetchall()
            base.append(time.perf_counter() - t)
            t = time.perf_counter()
            c.query(SQL, epsilon=0.1)
            ours.append(time.perf_counter() - t)
        b, o = statistics.median(base), statistics.median(ours)
        print(f"rows per node: {args.rows:,} (3 nodes)")
        print(f"{'plaintext DuckDB over the union':<45} {b * 1000:9.1f} ms")
        print(f"{'federated DP query (3 node processes)':<45} {o * 1000:9.1f} ms")
        print(f"{'ratio (goal <= 5x)':<45} {o / b:9.2f} x")
        print("RESULT " + json.dumps({"rows_per_node": args.rows, "duckdb_ms": b * 1000, "federated_ms": o * 1000,
                                      "ratio": o / b}))
    finally:
        cluster.close()


if __name__ == "__main__":
    main()
