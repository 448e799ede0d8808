"""A Spark source end to end (issue #18): a real gateway and a node process whose manifest declares the
same Parquet file twice, once read by Spark SQL in local mode and once by DuckDB; the same query
over each gives answers within their intervals of the truth and of each other. A Trino source is
refused by the node when it loads its manifest and by the gateway at Register, with the reason.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import duckdb
import grpc
import numpy as np
import pytest

from xdp_compute.cli.cluster import LocalCluster
from xdp_compute.domain.manifest import parse_manifest_text
from xdp_compute.v1 import node_pb2 as pb
from xdp_compute.v1 import node_pb2_grpc as pb_grpc

pytestmark = pytest.mark.slow

DATASET = """
[[datasets]]
name = "{name}"
source = "{source}"
classification = "internal"
epsilon_budget = 1000
delta = 1e-5
min_group_size = 5
{extra}
[datasets.columns]
region = {{ type = "category", values = ["north", "south", "east"], uses = ["group", "filter"] }}
amount = {{ type = "float", min = 0, max = 100, uses = ["aggregate", "filter"] }}
qty    = {{ type = "int", min = 0, max = 10, uses = ["aggregate", "filter"] }}
"""
MANIFEST = '[node]\nname = "warehouse"\nregion = "CN-FJ"\n' + DATASET.format(
    name="sales_spark", source="spark://local[2]", extra='\n[datasets.spark]\npath = "sales.parquet"\n') + \
    DATASET.format(name="sales_duck", source="sales.parquet", extra="")
ROWS = 20_000
QUERIES = [
    "SELECT region, COUNT(*) AS n, SUM(amount) AS total, AVG(qty) AS q FROM {ds} GROUP BY region",
    "SELECT COUNT(*) AS n, SUM(amount) AS total FROM {ds} WHERE qty >= 5 AND region <> 'east'",
]


def write_sales(path: Path) -> None:
    rng = np.random.default_rng(18)
    con = duckdb.connect()
    con.execute("CREATE TABLE t (region VARCHAR, amount DOUBLE, qty BIGINT)")
    con.executemany("INSERT INTO t VALUES (?, ?, ?)", [
        (str(rng.choice(["north", "south", "east", "west"], p=[0.5, 0.3, 0.15, 0.05])),
         float(rng.uniform(-20, 400)), int(rng.integers(0, 13))) for _ in range(ROWS)])
    con.execute(f"COPY t TO '{path}' (FORMAT parquet)")
    con.close()


def truth(path: Path, sql: str, *, clip: bool = True) -> dict[str | None, dict[str, float]]:
    """The exact answer by declared region (None without GROUP BY), clipped as the node clips
    (amount to [0, 100], qty to [0, 10]; the WHERE compares unclipped values) unless ``clip`` is False."""
    amount = "LEAST(GREATEST(amount, 0), 100)" if clip else "amount"
    qty = "LEAST(GREATEST(qty, 0), 10)" if clip else "qty"
    con = duckdb.connect()
    con.execute(f"CREATE VIEW sales AS SELECT region, {amount} AS amount, {qty} AS qty, qty AS raw_qty "
                f"FROM read_parquet('{path}')")
    cur = con.execute(sql.replace("qty >= 5", "raw_qty >= 5").format(ds="sales"))
    names = [d[0] for d in cur.description]
    out = {}
    for row in cur.fetchall():
        d = dict(zip(names, row, strict=True))
        region = d.pop("region", None)
        if region != "west":  # an undeclared group is never released (its rows still count without GROUP BY)
            out[region] = {k: float(v) for k, v in d.items()}
    con.close()
    return out


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalCluster, dict[str, str], Path]]:
    root = tmp_path_factory.mktemp("spark")
    c = LocalCluster(root=root, env={"XDP_HEARTBEAT_SECONDS": "0.5"})
    try:
        # The node starts its Spark session at its first Spark query (seconds on a busy machine):
        # a round may wait for it.
        c.start_gateway(env={"XDP_ROUND_TIMEOUT": "240"})
        tokens = {"admin": c.token("admin", "admin"), "analyst": c.token("analyst", "analyst"),
                  "warehouse": c.token("holder", "warehouse-holder")}
        manifest = c.write_node_files("warehouse", MANIFEST, {})
        write_sales(manifest.parent / "sales.parquet")
        c.start_node("warehouse", tokens["warehouse"], manifest)
        c.wait_online(tokens["admin"], ["warehouse"])
        yield c, tokens, manifest.parent / "sales.parquet"
    finally:
        c.close()


@pytest.mark.parametrize("sql", QUERIES)
def test_spark_and_duckdb_sources_answer_within_their_intervals(
        cluster: tuple[LocalCluster, dict[str, str], Path], sql: str) -> None:
    c, tokens, path = cluster
    exact, unclipped = truth(path, sql), truth(path, sql, clip=False)
    with c.client(tokens["analyst"]) as a:
        got = {}
        for ds in ("sales_spark", "sales_duck"):
            r = a.query(sql.format(ds=ds), epsilon=1.0)
            assert r.nodes == ["warehouse"], ds
            got[ds] = {row.get("region"): (row, iv) for row, iv in zip(r.rows, r.intervals, strict=True)}
    assert set(got["sales_spark"]) == set(got["sales_duck"]) == set(exact)
    for key, want in exact.items():
        (s_row, s_iv), (d_row, d_iv) = got["sales_spark"][key], got["sales_duck"][key]
        for col, value in want.items():
            s_half = (s_iv[col][1] - s_iv[col][0]) / 2
            d_half = (d_iv[col][1] - d_iv[col][0]) / 2
            # 95% intervals: five half-widths is about ten standard deviations.
            assert abs(s_row[col] - value) <= 5 * s_half, (key, col, "spark", s_row[col], value)
            assert abs(d_row[col] - value) <= 5 * d_half, (key, col, "duckdb", d_row[col], value)
            assert abs(s_row[col] - d_row[col]) <= 5 * (s_half + d_half), (key, col)
        # Clipped inside Spark: the unclipped total (amounts run from -20 to 400) is far outside.
        assert abs(s_row["total"] - unclipped[key]["total"]) > 5 * (s_iv["total"][1] - s_iv["total"][0]) / 2


def test_gateway_refuses_a_trino_source_kind_at_register(cluster: tuple[LocalCluster, dict[str, str], Path]) -> None:
    c, _, _ = cluster
    token = c.token("holder", "trino-holder")
    decl = parse_manifest_text('[node]\nname = "t"\nregion = "CN-FJ"\n' + DATASET.format(
        name="trino_sales", source="sales.parquet", extra=""), check_files=False).datasets[0].to_dict()
    decl = {**decl, "source_kind": "trino"}  # what a node that skipped its own manifest check sends
    with grpc.insecure_channel(c.grpc_addr) as channel:
        stub = pb_grpc.NodeServiceStub(channel)
        with pytest.raises(grpc.RpcError) as e:
            stub.Register(pb.RegisterRequest(node_name="trino-node", region="CN-FJ", datasets_json=json.dumps([decl]),
                                             agent_version="test"),
                          metadata=(("authorization", f"Bearer {token}"),), timeout=30)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert ("datasets[trino_sales].source_kind: unsupported source kind 'trino' (Trino is not supported: no Trino "
            "server can be run or tested here") in e.value.details()
    assert "docs/scale-out.md" in e.value.details()


def test_node_refuses_a_trino_manifest_in_one_line(tmp_path: Path) -> None:
    manifest = tmp_path / "node.toml"
    manifest.write_text('[node]\nname = "t"\nregion = "CN-FJ"\n' + DATASET.format(
        name="sales", source="trino://analyst:hunter2@warehouse.internal:8443/hive/default", extra='table = "sales"\n'))
    p = subprocess.run([sys.executable, "-m", "xdp_compute", "node", "--gateway", "127.0.0.1:9", "--insecure",
                        "--manifest", str(manifest)], env={"XDP_TOKEN": "x" * 40, "PATH": "/usr/bin:/bin"},
                       capture_output=True, text=True, timeout=120, check=False)
    assert p.returncode != 0
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    assert "unsupported source 'trino://' (Trino is not supported" in lines[0]
    assert "hunter2" not in p.stderr and "warehouse.internal" not in p.stderr
