"""End to end with real processes on loopback: a gateway and holder nodes that dial out."""

from __future__ import annotations

import csv
import io
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import example_manifest
from e2e_helpers import invite, start_sharing

from xdp_compute import Client
from xdp_compute.cli.cluster import LocalCluster
from xdp_compute.v1 import node_pb2 as pb

FAST = {"XDP_HEARTBEAT_SECONDS": "0.5"}


def patients_csv(seed: int, rows: int = 60) -> str:
    rng = np.random.default_rng(seed)
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(["age", "income", "district", "name"])
    for i in range(rows):
        # Distinctive values that cannot collide with declared constants (bounds 0/120/500000).
        w.writerow([int(rng.integers(1, 119)), f"{rng.uniform(1000, 90000):.4f}",
                    ["Siming", "Huli", "Jimei"][i % 3], f"secret-person-{seed}-{i:03d}"])
    return out.getvalue()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    c = LocalCluster(root=tmp_path, env=FAST)
    try:
        yield c
    finally:
        c.close()


def start_two(cluster: LocalCluster, capture: Path | None = None) -> dict[str, Any]:
    cluster.start_gateway(env={"XDP_GRPC_CAPTURE": str(capture)} if capture else None)
    tokens = {"admin": cluster.token("admin", "root"), "analyst": cluster.token("analyst", "ana")}
    files = {}
    nodes = []
    for i, node in enumerate(["siming-hospital", "huli-hospital"]):
        tokens[node] = cluster.token("holder", node)
        files[node] = patients_csv(i)
        m = cluster.write_node_files(node, example_manifest(node=node), {"patients.csv": files[node]})
        nodes.append((node, node, tokens[node], m))
    start_sharing(cluster, tokens["admin"], "patients", nodes)
    cluster.wait_online(tokens["admin"], ["siming-hospital", "huli-hospital"])
    return {"tokens": tokens, "files": files}


def test_nodes_register_catalog_offline_and_gateway_restart(cluster: LocalCluster, tmp_path: Path) -> None:
    capture = tmp_path / "grpc-capture.tsv"
    w = start_two(cluster, capture)
    tokens = w["tokens"]
    analyst = Client(cluster.url, tokens["analyst"])
    ds = analyst.dataset("patients")
    assert {n["name"] for n in ds["nodes"]} == {"siming-hospital", "huli-hospital"}
    assert all(n["online"] for n in ds["nodes"])
    rows = analyst.mock("patients", rows=50)
    assert len(rows) == 50 and all(0 <= r["age"] <= 120 for r in rows)
    assert {r["district"] for r in rows} <= {"Siming", "Huli", "Jimei"}

    # The holder validates its own node: counts only.
    holder = Client(cluster.url, tokens["siming-hospital"])
    report = holder.validate_node("siming-hospital")
    assert report["ok"] is True

    # Raw data stays home: no cell of either source appears in anything a node sent.
    assert_no_cells_in_capture(capture, w["files"])

    # A killed node is marked offline; the other stays online.
    cluster.stop("huli-hospital", sig=signal.SIGKILL)
    cluster.wait_online(tokens["admin"], ["huli-hospital"], online=False, timeout=30)
    cluster.wait_online(tokens["admin"], ["siming-hospital"], online=True)

    # A restarted gateway gets its (untouched) node back: it reconnects and re-registers by itself.
    node_pid = cluster.procs["siming-hospital"].popen.pid
    cluster.stop("gateway")
    cluster.start_gateway()
    cluster.wait_online(tokens["admin"], ["siming-hospital"], timeout=60)
    assert cluster.procs["siming-hospital"].popen.pid == node_pid and cluster.procs["siming-hospital"].alive()
    assert analyst.dataset("patients")["nodes"]  # the catalog survived the restart


def assert_no_cells_in_capture(capture: Path, files: dict[str, str]) -> None:
    """Every message a node sent (as the gateway received it) holds no cell value of its source.

    Declared constants (bounds such as 0/120/500000 and category values like "Siming", which the
    manifest publishes on purpose) are told apart by excluding cells whose text equals a declared
    constant; the sources are built so that numbers and names are distinctive. Each numeric cell
    is looked for as text and as its float64 and int64 byte patterns; text cells as UTF-8.
    """
    declared = {"0", "120", "500000", "Siming", "Huli", "Jimei"}
    messages = []
    for line in capture.read_text().splitlines():
        _, method, hexdata = line.split("\t")
        messages.append((method, bytes.fromhex(hexdata)))
    methods = {m for m, _ in messages}
    # Tasks go down the task channel (its opening is captured as "TaskChannel"); results come up
    # on it and are captured as "SubmitResult", the message being the same TaskResult.
    assert {"Register", "Heartbeat", "TaskChannel", "SubmitResult"} <= methods, methods
    blob = b"\x00".join(d for _, d in messages)
    checked = 0
    for text in files.values():
        for row in list(csv.reader(io.StringIO(text)))[1:]:
            for cell in row:
                if cell in declared or (cell.isdigit() and int(cell) < 256):
                    continue
                needles = [cell.encode()]
                try:
                    v = float(cell)
                    needles += [struct.pack("<d", v)]
                    if v.is_integer():
                        needles += [struct.pack("<q", int(v))]
                except ValueError:
                    pass
                for n in needles:
                    if len(n) >= 8 or not n.isdigit():
                        assert n not in blob, f"cell {cell!r} left its node"
                checked += 1
    assert checked > 100
    # And what looks like data is only counts: SubmitResult headers parse to counts and flags.
    for method, data in messages:
        if method == "SubmitResult":
            r = pb.TaskResult.FromString(data)
            assert "secret-person" not in r.header_json


def test_node_refused_for_unknown_or_expired_token_and_bad_manifest(cluster: LocalCluster) -> None:
    cluster.start_gateway()
    m = cluster.write_node_files("n1", example_manifest(node="n1"), {"patients.csv": patients_csv(5)})

    def run_node(token: str, manifest: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "xdp_compute", "node", "--gateway", cluster.grpc_addr,
                               "--token", token, "--manifest", str(manifest), "--insecure"],
                              capture_output=True, text=True, timeout=60, cwd=cluster.root)

    r = run_node("xdp_unknown-token", m)
    assert r.returncode != 0 and "unknown token" in r.stderr and "Traceback" not in r.stderr
    from xdp_compute.gateway.store import Store

    store = Store.open(cluster.db_url)
    expired = store.create_principal("holder", "old", "CN-FJ", ttl_seconds=-5)
    analyst = store.create_principal("analyst", "not-a-holder", "CN-FJ")
    store.close()
    r = run_node(expired, m)
    assert r.returncode != 0 and "expired" in r.stderr
    r = run_node(analyst, m)
    assert r.returncode != 0 and "holder" in r.stderr

    bad = cluster.write_node_files("n2", "[node]\nname = 'n2'\nregion = \n", {})
    r = run_node("whatever", bad)
    assert r.returncode != 0 and str(bad) in r.stderr and "TOML" in r.stderr and "Traceback" not in r.stderr
    bad = cluster.write_node_files("n3", example_manifest(node="n3").replace('"int"', '"integer"'),
                                   {"patients.csv": patients_csv(3)})
    r = run_node("whatever", bad)
    assert r.returncode != 0 and "datasets[patients].columns.age.type" in r.stderr
    missing = cluster.write_node_files("n4", example_manifest(node="n4"), {})
    r = run_node("whatever", missing)
    assert r.returncode != 0 and "file not found" in r.stderr


def test_schema_clash_between_nodes_refused_with_difference(cluster: LocalCluster) -> None:
    cluster.start_gateway()
    t1, t2 = cluster.token("holder", "h1"), cluster.token("holder", "h2")
    m1 = cluster.write_node_files("a", example_manifest(node="a"), {"patients.csv": patients_csv(1)})
    cluster.start_node("a", t1, m1)
    cluster.wait_online(t1, ["a"])
    invite(cluster, t1, "h2", "patients")  # a member must match the owner's schema
    m2 = cluster.write_node_files("b", example_manifest(node="b").replace("max = 120", "max = 99"),
                                  {"patients.csv": patients_csv(2)})
    r = subprocess.run([sys.executable, "-m", "xdp_compute", "node", "--gateway", cluster.grpc_addr, "--token", t2,
                        "--manifest", str(m2), "--insecure"], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "age" in r.stderr and "max" in r.stderr and "99" in r.stderr
    assert [n["name"] for n in Client(cluster.url, cluster.token("admin", "ad")).nodes()] == ["a"]


def test_garbage_on_grpc_port_does_not_hurt_the_gateway(cluster: LocalCluster) -> None:
    cluster.start_gateway()
    for payload in (b"\x00" * 64, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", bytes(range(256)) * 8):
        with socket.create_connection(("127.0.0.1", cluster.grpc_port), timeout=5) as s:
            s.sendall(payload)
            time.sleep(0.1)
    admin = Client(cluster.url, cluster.token("admin", "ad"))
    assert admin.me()["role"] == "admin" and cluster.procs["gateway"].alive()
