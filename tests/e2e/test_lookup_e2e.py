"""Hidden lookups end to end (issue #17): a real gateway and a holder's node on loopback.

The holder ``bureau`` opts its ``credit`` dataset in to lookups (``[datasets.lookup]``) and not
its ``ledger`` dataset; it lists a lookup product, an analyst subscribes and is approved. A
present key returns its record, an absent one "not found"; the holder's and the gateway's views
of both are the same in shape and size and never hold the key; calls past the allowance are
refused; a dataset without the opt-in offers no lookup product.
"""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from tls_relay import TcpRelay

from xdp_compute import Client
from xdp_compute.cli.cluster import LocalCluster
from xdp_compute.errors import BadRequest, XdpError
from xdp_compute.v1 import node_pb2 as pb

pytestmark = pytest.mark.slow

MANIFEST = """
[node]
name = "bureau-node"
region = "CN-FJ"

[[datasets]]
name = "credit"
source = "credit.csv"
classification = "sensitive"
epsilon_budget = 10.0

[datasets.lookup]
key = "citizen_id"
columns = ["score", "defaulted", "city"]
capacity = 300
label_bytes = 96

[datasets.columns]
citizen_id = { type = "text", uses = [] }
score      = { type = "int", min = 300, max = 900, uses = ["aggregate"] }
defaulted  = { type = "bool", uses = ["aggregate"] }
city       = { type = "category", values = ["Xiamen", "Fuzhou"], uses = ["group"] }
income     = { type = "float", min = 0, max = 1000000, uses = ["aggregate"] }

[[datasets]]
name = "ledger"
source = "credit.csv"
classification = "sensitive"
epsilon_budget = 10.0

[datasets.columns]
citizen_id = { type = "text", uses = [] }
score      = { type = "int", min = 300, max = 900, uses = ["aggregate"] }
"""
PRESENT = "350203199001017777"  # a citizen id the bureau holds
ABSENT = "350203199912319999"   # one it does not hold


def credit_csv(rows: int = 200) -> str:
    lines = ["citizen_id,score,defaulted,city,income"]
    for i in range(rows):
        cid = PRESENT if i == 57 else f"3502031990{i:08d}"
        lines.append(f"{cid},{300 + i},{'true' if i % 5 == 0 else 'false'},{'Xiamen' if i % 2 else 'Fuzhou'},"
                     f"{1000 * i}")
    return "\n".join(lines) + "\n"


@dataclass
class Exchange:
    cluster: LocalCluster
    tokens: dict[str, str]
    product: str
    small: str  # a product with an allowance of 2 calls
    grpc_relay: TcpRelay


@pytest.fixture(scope="module")
def ex(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Exchange]:
    cluster = LocalCluster(root=tmp_path_factory.mktemp("lookup"), env={"XDP_HEARTBEAT_SECONDS": "0.5"})
    relay = TcpRelay(("127.0.0.1", cluster.grpc_port)).__enter__()  # records what the node receives
    try:
        cluster.start_gateway()
        tokens = {"admin": cluster.token("admin", "admin"), "analyst": cluster.token("analyst", "lender"),
                  "other": cluster.token("analyst", "lender-2"), "auditor": cluster.token("auditor", "auditor"),
                  "holder": cluster.token("holder", "bureau")}
        m = cluster.write_node_files("bureau-node", MANIFEST, {"credit.csv": credit_csv()})
        cluster.start_node("bureau-node", tokens["holder"], m, gateway=relay.addr)
        cluster.wait_online(tokens["admin"], ["bureau-node"])
        with cluster.client(tokens["holder"]) as holder, cluster.client(tokens["analyst"]) as analyst:
            product = holder.create_product("credit", "lookup", "Credit score by citizen id", 0.5, 50,
                                            columns=["score", "defaulted", "city"]).id
            small = holder.create_product("credit", "lookup", "Two lookups", 1.0, 2, columns=["score"]).id
            for p in (product, small):
                holder.approve_subscription(analyst.subscribe(p).id)
        yield Exchange(cluster, tokens, product, small, relay)
    finally:
        cluster.close()
        relay.__exit__(None, None, None)


def test_present_key_returns_its_record_and_absent_key_not_found(ex: Exchange) -> None:
    with ex.cluster.client(ex.tokens["analyst"]) as c:
        hit = c.lookup(ex.product, PRESENT)
        miss = c.lookup(ex.product, ABSENT)
        only = c.lookup(ex.product, f"  {PRESENT} ", columns=["city"])  # written as the node writes keys
    assert hit.found and hit.record == {"score": 357, "defaulted": False, "city": "Xiamen"}
    assert not miss.found and miss.record is None
    assert only.record == {"city": "Xiamen"}
    assert miss.calls_left == hit.calls_left - 1


def test_cli_prints_the_record_and_exits_7_when_not_found(ex: Exchange) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("XDP_")}
    env.update({"XDP_URL": ex.cluster.url, "XDP_TOKEN": ex.tokens["analyst"]})

    def xdp(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "xdp_compute", "lookup", *args], capture_output=True, text=True,
                              timeout=120, env=env, check=False)

    found = xdp(ex.product, PRESENT, "--json")
    assert found.returncode == 0, found.stderr
    assert json.loads(found.stdout)["record"] == {"score": 357, "defaulted": False, "city": "Xiamen"}
    missing = xdp(ex.product, ABSENT)
    assert missing.returncode == 7 and missing.stdout.strip() == "not found"
    bad = xdp(ex.product, PRESENT, "--columns", "income")
    assert bad.returncode == 8 and "income" in bad.stderr and "Traceback" not in bad.stderr


def test_calls_past_the_allowance_are_refused(ex: Exchange) -> None:
    with ex.cluster.client(ex.tokens["analyst"]) as c:
        assert c.lookup(ex.small, PRESENT).record == {"score": 357}
        assert not c.lookup(ex.small, ABSENT).found
        with pytest.raises(XdpError) as e:
            c.lookup(ex.small, PRESENT)
    assert e.value.problem["type"].endswith("/allowance-used-up") and "used all 2 calls" in e.value.detail


def test_no_subscription_no_lookup(ex: Exchange) -> None:
    with ex.cluster.client(ex.tokens["other"]) as c, pytest.raises(XdpError) as e:
        c.lookup(ex.product, PRESENT)
    assert e.value.status == 403 and "no subscription" in e.value.detail


def test_a_dataset_without_opt_in_offers_no_lookup_product(ex: Exchange) -> None:
    with ex.cluster.client(ex.tokens["holder"]) as holder, pytest.raises(BadRequest) as e:
        holder.create_product("ledger", "lookup", "Not opted in", 1.0, 10, columns=["score"])
    assert "not open to hidden lookups" in e.value.detail
    with ex.cluster.client(ex.tokens["holder"]) as holder, pytest.raises(BadRequest) as e2:
        holder.create_product("credit", "lookup", "Income too", 1.0, 10, columns=["score", "income"])
    assert "not opened to lookups" in e2.value.detail


# ---------------------------------------------------------------------- transcripts
def h2_messages(stream: bytes, *, client_side: bool) -> list[bytes]:
    """The gRPC messages of an HTTP/2 byte stream, in order (RFC 9113 §4.1 frames; DATA type 0)."""
    pos = 24 if client_side else 0  # the client's connection preface
    data: dict[int, bytearray] = {}
    order: list[tuple[int, int]] = []  # (stream, offset of a message start)
    while pos + 9 <= len(stream):
        length = int.from_bytes(stream[pos:pos + 3], "big")
        ftype, flags = stream[pos + 3], stream[pos + 4]
        sid = int.from_bytes(stream[pos + 5:pos + 9], "big") & 0x7FFFFFFF
        payload = stream[pos + 9:pos + 9 + length]
        pos += 9 + length
        if ftype != 0:
            continue
        if flags & 0x8:  # PADDED
            payload = payload[1:len(payload) - payload[0]]
        data.setdefault(sid, bytearray()).extend(payload)
    out = []
    for sid, buf in data.items():
        i = 0
        while i + 5 <= len(buf):
            n = struct.unpack(">I", buf[i + 1:i + 5])[0]
            order.append((sid, i))
            out.append(bytes(buf[i + 5:i + 5 + n]))
            i += 5 + n
    return out


def node_tasks(relay: TcpRelay) -> list[pb.Task]:
    """Every lookup task the node pulled, in order: what the holder's node receives."""
    tasks = []
    for conn in relay.connections:
        for msg in h2_messages(bytes(conn.down), client_side=False):
            r = pb.PullTaskResponse()
            try:
                r.ParseFromString(msg)
            except Exception:  # noqa: BLE001, S112 - another RPC's message
                continue
            if r.has_task and r.task.kind.startswith("lookup_"):
                tasks.append(r.task)
    return tasks


def node_results(relay: TcpRelay, ids: set[str]) -> dict[str, pb.TaskResult]:
    """The node's answers to those tasks: what the gateway receives from the node."""
    out = {}
    for conn in relay.connections:
        for msg in h2_messages(bytes(conn.up), client_side=True):
            r = pb.TaskResult()
            try:
                r.ParseFromString(msg)
            except Exception:  # noqa: BLE001, S112 - another RPC's message
                continue
            if r.task_id in ids:
                out[r.task_id] = r
    return out


def shape(value: Any) -> Any:
    """What two views must share: keys, types and sizes (texts and bytes by length; numbers by type)."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in sorted(value.items())}
    if isinstance(value, list):
        return [shape(v) for v in value]
    if isinstance(value, bytes | str):
        return (type(value).__name__, len(value))
    if isinstance(value, int | float) and not isinstance(value, bool):
        return "number"
    return value


def task_view(t: pb.Task) -> Any:
    return shape({"kind": t.kind, "header": json.loads(t.header_json), "blobs": dict(t.blobs),
                  "job": t.job_id, "size": t.ByteSize()})


def result_view(r: pb.TaskResult) -> Any:
    return shape({"ok": r.ok, "error": r.error, "header": json.loads(r.header_json), "blobs": dict(r.blobs),
                  "size": r.ByteSize()})


def rest_requests(connections: list[Any]) -> list[tuple[str, bytes]]:
    """Every HTTP/1.1 request the gateway received on ``connections``: (request line, body)."""
    out = []
    for conn in connections:
        buf = bytes(conn.up)
        while buf:
            head, _, rest = buf.partition(b"\r\n\r\n")
            length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
            n = int(length.group(1)) if length else 0
            out.append((head.split(b"\r\n")[0].decode(), rest[:n]))
            buf = rest[n:]
    return out


def test_holder_and_gateway_see_the_same_for_a_present_and_an_absent_key(ex: Exchange) -> None:
    cluster = ex.cluster
    with TcpRelay(("127.0.0.1", cluster.http_port)) as rest, Client(f"http://{rest.addr}", ex.tokens["analyst"]) as c:
        c.lookup(ex.product, "warm-up")  # fetches the table: the lookups below use this client's copy
        before = len(node_tasks(ex.grpc_relay))
        entries_before = Client(cluster.url, ex.tokens["auditor"]).audit_entries(kind="lookup")
        assert c.lookup(ex.product, PRESENT).found and not c.lookup(ex.product, ABSENT).found
        requests = [(line, shape(json.loads(body)) if body else None)
                    for line, body in rest_requests(rest.connections)][-4:]
        # What the gateway receives from the analyst: table-info and evaluate, the same for both keys.
        assert requests[:2] == requests[2:]
        assert [line.split()[1].rsplit("/", 1)[1] for line, _ in requests[:2]] == ["table-info", "evaluate"]
        everything = b"".join(bytes(cn.up) + bytes(cn.down) for cn in rest.connections)

    tasks = node_tasks(ex.grpc_relay)[before:]
    assert [t.kind for t in tasks] == ["lookup_prepare", "lookup_evaluate"] * 2
    # The holder's view: the same tasks, fields and sizes for both keys; the point is a fresh group element.
    assert [task_view(t) for t in tasks[:2]] == [task_view(t) for t in tasks[2:]]
    assert tasks[1].blobs["point"] != tasks[3].blobs["point"]
    results = node_results(ex.grpc_relay, {t.task_id for t in tasks})
    assert len(results) == 4
    assert [result_view(results[t.task_id]) for t in tasks[:2]] == [result_view(results[t.task_id]) for t in tasks[2:]]

    # The gateway's log entries: one per lookup, the same fields and sizes.
    entries = Client(cluster.url, ex.tokens["auditor"]).audit_entries(kind="lookup")[len(entries_before):]
    assert len(entries) == 2
    a, b = (shape({k: v for k, v in e.model_dump().items() if k not in ("index", "time")}) for e in entries)
    assert a == b and entries[0]["product"] == ex.product and entries[0]["principal"] == "lender"

    # Nowhere the gateway or the holder's node could see or keep: neither key, in any form.
    seen = [everything, *(bytes(cn.up) + bytes(cn.down) for cn in ex.grpc_relay.connections),
            (cluster.root / "gateway.log").read_bytes(), (cluster.root / "bureau-node.log").read_bytes(),
            (cluster.root / "gateway.db").read_bytes(), json.dumps([e.model_dump() for e in entries]).encode()]
    for key in (PRESENT, ABSENT):
        for form in (key.encode(), key.encode("utf-16-le"), key[-8:].encode()):
            assert not any(form in blob for blob in seen), form



def test_a_data_change_makes_a_new_table_version(ex: Exchange) -> None:
    """Last in the module: the holder rewrites its file; the next lookup fetches the new version."""
    newcomer = "350203200001011234"
    with ex.cluster.client(ex.tokens["analyst"]) as c:
        before = c.lookup(ex.product, PRESENT)
        assert not c.lookup(ex.product, newcomer).found
        path = ex.cluster.root / "bureau-node" / "credit.csv"
        path.write_text(credit_csv() + f"{newcomer},880,false,Fuzhou,5\n")
        after = c.lookup(ex.product, newcomer)
    assert after.found and after.record == {"score": 880, "defaulted": False, "city": "Fuzhou"}
    assert after.version != before.version


def test_the_release_log_with_its_lookup_entries_verifies(ex: Exchange) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("XDP_")}
    env.update({"XDP_URL": ex.cluster.url, "XDP_TOKEN": ex.tokens["auditor"]})
    r = subprocess.run([sys.executable, "-m", "xdp_compute", "audit", "verify", "--json"], capture_output=True,
                       text=True, timeout=180, env=env, check=False)
    assert r.returncode == 0, r.stderr + r.stdout
    entries = Client(ex.cluster.url, ex.tokens["auditor"]).audit_entries(kind="lookup")
    assert len(entries) >= 10 and all(e.principal == "lender" for e in entries)
