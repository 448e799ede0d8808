"""Sources end to end (issue #14): a federated query over hive-partitioned Parquet folders filtered on
a partition column, through a real gateway and node processes; an unsupported source refused by
the node when it loads its manifest and by the gateway at Register."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import duckdb
import grpc
import httpx
import numpy as np
import pytest
from e2e_helpers import start_sharing

from xdp_compute.cli.cluster import LocalCluster
from xdp_compute.domain.manifest import SUPPORTED_SOURCES, parse_manifest_text
from xdp_compute.v1 import node_pb2 as pb
from xdp_compute.v1 import node_pb2_grpc as pb_grpc

pytestmark = pytest.mark.slow

MANIFEST = """
[node]
name = "{node}"
region = "CN-FJ"

[[datasets]]
name = "sales"
source = "{source}"
classification = "internal"
epsilon_budget = 1000
delta = 1e-5
min_group_size = 5

[datasets.columns]
year   = {{ type = "int", min = 2020, max = 2025, uses = ["filter"] }}
month  = {{ type = "category", values = ["01", "02", "03"], uses = ["group", "filter"] }}
amount = {{ type = "float", min = 0, max = 100, uses = ["aggregate", "filter"] }}
"""

# 2023 holds many more rows than 2024: a filter on the partition column that did nothing would
# miss the 2024 counts by hundreds, far outside the noise.
PARTS = {("2023", "01"): 200, ("2023", "02"): 200, ("2023", "03"): 200, ("2024", "01"): 40, ("2024", "02"): 70}


def write_sales(folder: Path, seed: int) -> list[tuple[str, str, float]]:
    rng = np.random.default_rng(seed)
    rows = []
    con = duckdb.connect()
    for (year, month), n in PARTS.items():
        amounts = [round(float(a), 2) for a in rng.uniform(0, 100, n)]
        part = folder / f"year={year}" / f"month={month}"
        part.mkdir(parents=True)
        con.execute("CREATE OR REPLACE TABLE t (amount DOUBLE)")
        con.executemany("INSERT INTO t VALUES (?)", [(a,) for a in amounts])
        con.execute(f"COPY t TO '{part / 'part-0.parquet'}' (FORMAT parquet)")
        rows += [(year, month, a) for a in amounts]
    con.close()
    return rows


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalCluster, dict[str, str], list]]:
    root = tmp_path_factory.mktemp("pq")
    c = LocalCluster(root=root, env={"XDP_HEARTBEAT_SECONDS": "0.5"})
    try:
        c.start_gateway()
        tokens = {"admin": c.token("admin", "admin"), "analyst": c.token("analyst", "analyst")}
        rows: list[tuple[str, str, float]] = []
        nodes = []
        for i in range(3):
            node = f"shop-{i}"
            tokens[node] = c.token("holder", f"{node}-holder")
            # One node names its folder, one a recursive glob, one a glob over the partitions.
            source = ["sales/", "sales/**/*.parquet", "sales/year=*/month=*/*.parquet"][i]
            manifest = c.write_node_files(node, MANIFEST.format(node=node, source=source), {})
            rows += write_sales(manifest.parent / "sales", seed=i)
            nodes.append((node, f"{node}-holder", tokens[node], manifest))
        start_sharing(c, tokens["admin"], "sales", nodes)
        c.wait_online(tokens["admin"], [n[0] for n in nodes])
        yield c, tokens, rows
    finally:
        c.close()


def test_query_filters_on_a_partition_column(cluster: tuple[LocalCluster, dict[str, str], list]) -> None:
    c, tokens, rows = cluster
    with c.client(tokens["analyst"]) as a:
        r = a.query("SELECT month, COUNT(*) AS n, SUM(amount) AS total FROM sales WHERE year = 2024 GROUP BY month",
                    epsilon=2.0)
    got = {row["month"]: (row, iv) for row, iv in zip(r.rows, r.intervals, strict=True)}
    assert sorted(r.nodes) == ["shop-0", "shop-1", "shop-2"]
    for month in ("01", "02"):
        exact = [amt for y, m, amt in rows if y == "2024" and m == month]
        every_year = sum(1 for _, m, _ in rows if m == month)
        row, iv = got[month]
        lo, hi = iv["n"]
        half = (hi - lo) / 2
        assert abs(row["n"] - len(exact)) <= 5 * half + 1  # far outside would mean a broken filter
        assert abs(row["n"] - every_year) > 10 * half + 1  # ... e.g. one that kept 2023's rows
        t_lo, t_hi = iv["total"]
        assert abs(row["total"] - sum(exact)) <= 5 * (t_hi - t_lo) / 2 + 1
    # No 2024 rows in month 03: whatever is released there is noise around zero (or suppressed).
    row3, iv3 = got["03"]
    if row3["n"] is not None:
        assert abs(row3["n"]) <= 5 * (iv3["n"][1] - iv3["n"][0]) / 2 + 1


def test_gateway_refuses_an_unsupported_source_kind_at_register(
        cluster: tuple[LocalCluster, dict[str, str], list]) -> None:
    c, _, _ = cluster
    token = c.token("holder", "raw-holder")
    decl = parse_manifest_text(MANIFEST.format(node="raw", source="sales/"), check_files=False).datasets[0].to_dict()
    assert decl["source_kind"] == "parquet"
    decl = {**decl, "name": "raw_sales", "source_kind": "mysql"}  # what a node that skipped its checks sends
    with grpc.insecure_channel(c.grpc_addr) as channel:
        stub = pb_grpc.NodeServiceStub(channel)
        with pytest.raises(grpc.RpcError) as e:
            stub.Register(pb.RegisterRequest(node_name="raw-node", region="CN-FJ", datasets_json=json.dumps([decl]),
                                             agent_version="test"),
                          metadata=(("authorization", f"Bearer {token}"),), timeout=30)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    detail = e.value.details()
    assert "datasets[raw_sales].source_kind: unsupported source kind 'mysql'" in detail
    assert "supported: csv, parquet, postgresql" in detail
    listed = httpx.get(c.url + "/v1/nodes", headers={"authorization": f"Bearer {c.token('admin', 'admin-2')}"},
                       timeout=30).json()
    assert "raw-node" not in {n["name"] for n in listed} and len(listed) == 3  # nothing registered


@pytest.mark.parametrize("source", ["mysql://reader:hunter2@127.0.0.1:3306/shop", "s3://bucket/sales/"])
def test_node_refuses_an_unsupported_source_in_one_line(tmp_path: Path, source: str) -> None:
    manifest = tmp_path / "node.toml"
    manifest.write_text(MANIFEST.format(node="shop-9", source=source).replace(
        'min_group_size = 5', 'min_group_size = 5\ntable = "sales"'))
    # A loopback gateway that nothing listens on: the manifest is refused before any dial.
    p = subprocess.run([sys.executable, "-m", "xdp_compute", "node", "--gateway", "127.0.0.1:9", "--insecure",
                        "--manifest", str(manifest)], env={"XDP_TOKEN": "x" * 40, "PATH": "/usr/bin:/bin"},
                       capture_output=True, text=True, timeout=120, check=False)
    assert p.returncode != 0
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    scheme = source.split("://")[0]
    assert f"unsupported source '{scheme}://'" in lines[0] and SUPPORTED_SOURCES in lines[0]
    assert "hunter2" not in p.stderr and "needs table" not in p.stderr
