"""A node's local part through Spark SQL (local mode) against DuckDB, on the same Parquet files (issue #18).

For each size (``--rows``, default 1M and 10M rows per node) one Parquet file is written to a
temporary folder; a manifest declares it twice, as a DuckDB dataset and as a Spark dataset
(``spark://local[N]``, ``--threads``). Both run the same node-local path a query task runs
(``run_local_query``: re-validate the plan, pushdown SQL, clip, aggregate, encode the vector), in
the same process and the same run, alternating; medians over ``--repeat``. DuckDB is measured
through the node's ``SourceCache`` (its engine kept across queries, as a node does); Spark through
its session kept across queries and a fresh view per query (as a node does). Also printed: the
Spark session's start (paid once per node worker) and each engine's first query, and the rows
``collect`` brought into the process (the aggregate rows only).

The secure aggregation, noise and release that follow are the same for both sources and not
measured here (benchmarks/bench_query.py measures the whole path).

    .venv/bin/python benchmarks/bench_spark.py [--rows 1000000 10000000] [--repeat 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import duckdb

QUERIES = {
    "group": "SELECT region, COUNT(*) AS n, SUM(amount) AS total, AVG(qty) AS q FROM {ds} GROUP BY region",
    "filter": "SELECT COUNT(*) AS n, SUM(amount) AS total FROM {ds} WHERE qty >= 5 AND region <> 'east'",
}
DATASET = """
[[datasets]]
name = "{name}"
source = "{source}"
classification = "internal"
epsilon_budget = 1000
max_rows = 100000000
{extra}
[datasets.columns]
region = {{ type = "category", values = ["north", "south", "east"], uses = ["group", "filter"] }}
amount = {{ type = "float", min = 0, max = 100, uses = ["aggregate", "filter"] }}
qty    = {{ type = "int", min = 0, max = 10, uses = ["aggregate", "filter"] }}
"""


def write_parquet(path: Path, rows: int) -> None:
    """``rows`` rows of (region, amount, qty), generated inside DuckDB (seeded) and written once."""
    con = duckdb.connect()
    con.execute("SELECT setseed(0.18)")
    con.execute(f"""COPY (SELECT CASE WHEN r < 0.5 THEN 'north' WHEN r < 0.8 THEN 'south' WHEN r < 0.95 THEN 'east'
                                 ELSE 'west' END AS region,
                            random() * 420 - 20 AS amount, CAST(floor(random() * 13) AS BIGINT) AS qty
                         FROM (SELECT random() AS r FROM range({rows})))
                    TO '{path}' (FORMAT parquet, ROW_GROUP_SIZE 1000000)""")
    con.close()


def manifest_for(folder: Path, threads: int) -> Any:
    from xdp_compute.domain.manifest import load_manifest

    text = '[node]\nname = "bench"\nregion = "CN-FJ"\n' + DATASET.format(
        name="sales_spark", source=f"spark://local[{threads}]", extra='\n[datasets.spark]\npath = "sales.parquet"\n'
    ) + DATASET.format(name="sales_duck", source="sales.parquet", extra="")
    (folder / "node.toml").write_text(text)
    return load_manifest(folder / "node.toml")


def timed(fn: Any) -> tuple[float, Any]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def run_size(rows: int, repeat: int, threads: int) -> list[dict[str, Any]]:
    from xdp_compute.node import spark_source
    from xdp_compute.node.sources import SourceCache, run_local_query
    from xdp_compute.query import decode_totals, plan_query

    folder = Path(tempfile.mkdtemp(prefix=f"xdp-bench-spark-{rows}-"))
    gen, _ = timed(lambda: write_parquet(folder / "sales.parquet", rows))
    m = manifest_for(folder, threads)
    duck_ds, spark_ds = m.dataset("sales_duck"), m.dataset("sales_spark")
    cache = SourceCache()
    started = spark_source._session is None
    start_s, _ = timed(lambda: spark_source.spark_session(spark_ds.spark)) if started else (0.0, None)
    out = []
    for name, sql in QUERIES.items():
        plan = plan_query(sql.format(ds="sales_duck"), duck_ds)
        splan = plan_query(sql.format(ds="sales_spark"), spark_ds)
        first_d, want = timed(lambda p=plan: run_local_query(p, m, duck_ds, sources=cache))
        collected: list[int] = []

        def spark_query(p: Any = splan, collected: list[int] = collected) -> Any:
            with spark_source.SparkSource(m, spark_ds) as src:
                vec = run_local_query(p, m, spark_ds, source=src)  # type: ignore[arg-type]
                collected.append(src.collected_rows)
            return vec

        first_s, got = timed(spark_query)
        # The same vector up to the engines' float summation order.
        diff = abs(decode_totals(splan, got) - decode_totals(plan, want))
        assert (diff <= 1e-6 * abs(decode_totals(plan, want)).max()).all(), name
        duck_t, spark_t = [], []
        for _ in range(repeat):  # alternating, so load on the shared machine hits both alike
            duck_t.append(timed(lambda p=plan: run_local_query(p, m, duck_ds, sources=cache))[0])
            spark_t.append(timed(spark_query)[0])
        d, s = statistics.median(duck_t), statistics.median(spark_t)
        out.append({"rows": rows, "query": name, "duckdb_s": round(d, 4), "spark_s": round(s, 4),
                    "spark_over_duckdb": round(s / d, 2), "duckdb_first_s": round(first_d, 3),
                    "spark_first_s": round(first_s, 3), "spark_session_start_s": round(start_s, 2),
                    "rows_collected_per_query": sorted(set(collected)), "cells": len(plan.cells),
                    "file_mb": round((folder / "sales.parquet").stat().st_size / 2**20, 1),
                    "generate_s": round(gen, 2), "repeat": repeat, "threads": threads})
        start_s = 0.0  # paid once
        print(json.dumps(out[-1]), flush=True)
    cache.close()
    for f in folder.iterdir():
        f.unlink()
    folder.rmdir()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1),
                    help="Spark local[N]; DuckDB uses its own default")
    args = ap.parse_args()
    results = [r for rows in args.rows for r in run_size(rows, args.repeat, args.threads)]
    print(f"\n{'rows/node':>11} {'query':>7} {'DuckDB s':>9} {'Spark s':>8} {'Spark/DuckDB':>13} "
          f"{'rows collected':>15}")
    for r in results:
        print(f"{r['rows']:>11,} {r['query']:>7} {r['duckdb_s']:>9.3f} {r['spark_s']:>8.3f} "
              f"{r['spark_over_duckdb']:>12.1f}x {r['rows_collected_per_query']!s:>15}")
    start = next((r["spark_session_start_s"] for r in results if r["spark_session_start_s"]), None)
    print(f"Spark session start (once per node worker): {start} s; machine: {os.cpu_count()} cores (shared)")


if __name__ == "__main__":
    main()
