"""Co-holders are strangers (issue #12 item 4), with a real gateway and real node processes.

The attacks, as they were run against the old gateway: a holder owning no data joined an
existing dataset by matching its schema and moved the analyst's count; a member blocked every
query through its own ``allowed_analysts`` / tiny budget / ``require_approval``; a second node
of one holder added a party (raising the threshold and lowering every node's noise share); one
holder token registered hundreds of nodes in a second. Each test here failed on that gateway.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from e2e_helpers import visits_csv

from xdp_compute import Client
from xdp_compute.cli.cluster import LocalCluster
from xdp_compute.errors import Forbidden
from xdp_compute.v1 import node_pb2 as pb
from xdp_compute.v1 import node_pb2_grpc as pb_grpc

MANIFEST = """
[node]
name = "{node}"
region = "CN-FJ"

[[datasets]]
name = "visits"
source = "visits.csv"
classification = "internal"
categories = []
epsilon_budget = {budget}
delta = 1e-5
min_group_size = 5
require_approval = {approval}
{extra}

[datasets.columns]
clinic = {{ type = "category", values = ["north", "south", "east"], uses = ["group", "filter"] }}
age    = {{ type = "int", min = 0, max = 100, uses = ["aggregate", "filter"] }}
cost   = {{ type = "float", min = 0, max = 1000, uses = ["aggregate", "filter"] }}
note   = {{ type = "text", uses = [] }}
"""

COUNT = "SELECT COUNT(*) AS n FROM visits"
CAP = 2  # nodes per holder per dataset in this deployment (the default is 4)


class World:
    def __init__(self, root: Path) -> None:
        self.cluster = LocalCluster(root=root, env={"XDP_HEARTBEAT_SECONDS": "0.5"})
        self.cluster.start_gateway(env={"XDP_MAX_NODES_PER_HOLDER": str(CAP)})
        self.tokens = {"admin": self.cluster.token("admin", "admin"),
                       "analyst": self.cluster.token("analyst", "analyst")}
        self.rows: dict[str, int] = {}

    def holder(self, name: str) -> str:
        if name not in self.tokens:
            self.tokens[name] = self.cluster.token("holder", name)
        return self.tokens[name]

    def node(self, node: str, holder: str, rows: int, budget: float = 1000.0, approval: bool = False,
             extra: str = "", wait: bool = True) -> None:
        m = self.cluster.write_node_files(node, MANIFEST.format(
            node=node, budget=budget, approval="true" if approval else "false", extra=extra),
            {"visits.csv": visits_csv(len(self.rows) + 7, rows)})
        self.rows[node] = rows
        self.cluster.start_node(node, self.holder(holder), m)
        if wait:
            self.cluster.wait_online(self.tokens["admin"], [node])

    def exited(self, node: str, timeout: float = 30) -> bool:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if not self.cluster.procs[node].alive():
                return True
            time.sleep(0.2)
        return False

    def client(self, who: str) -> Client:
        return Client(self.cluster.url, self.tokens[who])


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    w = World(tmp_path_factory.mktemp("owned"))
    try:
        w.node("north", "north-holder", rows=300)
        yield w
    finally:
        w.cluster.close()


def dry(w: World, epsilon: float = 0.5) -> dict[str, Any]:
    with w.client("analyst") as c:
        out: dict[str, Any] = c.query(COUNT, epsilon=epsilon, dry_run=True)
    return out


def test_stranger_node_is_refused_naming_the_owner(world: World) -> None:
    # Mallory owns no part of `visits`; her node declares the same schema with 5,000 fake rows.
    world.node("mallory", "mallory-holder", rows=5000, wait=False)
    assert world.exited("mallory"), "the stranger's node was accepted into someone else's dataset"
    log = world.cluster.procs["mallory"].tail(40)
    assert "north-holder" in log and "invite" in log, log
    assert dry(world)["plan"]["nodes"] == ["north"]
    with world.client("analyst") as c:
        ds = c.dataset("visits")
    assert ds["owner"] == "north-holder" and ds["members"] == []


def test_only_the_owner_invites(world: World) -> None:
    world.holder("mallory-holder")
    with world.client("mallory-holder") as c, pytest.raises(Forbidden, match="north-holder"):
        c.invite("visits", "mallory-holder")  # a stranger cannot invite itself


def test_after_an_invite_the_holder_joins_and_its_rows_count(world: World) -> None:
    with world.client("north-holder") as c:
        c.invite("visits", "mallory-holder")
        assert [x["holder"] for x in c.members("visits")] == ["mallory-holder"]
    world.node("mallory", "mallory-holder", rows=5000)
    with world.client("analyst") as c:
        r = c.query(COUNT, epsilon=1.0)
        ds = c.dataset("visits")
    assert sorted(r.nodes) == ["mallory", "north"]
    assert abs(r.rows[0]["n"] - 5300) < 200
    assert ds["owner"] == "north-holder" and ds["members"] == ["mallory-holder"]


def test_the_cli_invites(world: World) -> None:
    env = {**os.environ, "XDP_TOKEN": world.tokens["north-holder"]}
    world.holder("south-holder")
    out = subprocess.run([sys.executable, "-m", "xdp_compute", "datasets", "invite", "visits", "south-holder",
                          "--url", world.cluster.url], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    out = subprocess.run([sys.executable, "-m", "xdp_compute", "datasets", "members", "visits",
                          "--url", world.cluster.url], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0 and "mallory-holder" in out.stdout and "south-holder" in out.stdout, out


def test_a_member_cannot_block_or_gate_the_owners_queries(world: World) -> None:
    # South is invited, and declares every blocking policy it can: nobody may query, manual approval.
    world.node("south", "south-holder", rows=200, approval=True, extra='allowed_analysts = ["nobody"]')
    # Tiny is invited, and declares a budget too small for any query.
    world.holder("tiny-holder")
    with world.client("north-holder") as c:
        c.invite("visits", "tiny-holder")
    world.node("tiny", "tiny-holder", rows=100, budget=0.01)
    plan = dry(world)
    assert plan["allowed"], plan["decisions"]
    assert sorted(plan["plan"]["nodes"]) == ["mallory", "north", "south"]
    assert any(d["rule"] == "participation" and "tiny" in d["reason"] for d in plan["decisions"])
    with world.client("analyst") as c:
        r = c.query(COUNT, epsilon=0.5)  # released at once: nothing waits on South's approval
    assert sorted(r.nodes) == ["mallory", "north", "south"]
    assert abs(r.rows[0]["n"] - 5500) < 200
    with world.client("south-holder") as c:
        assert c.approvals() == []  # South never sees the analyst's request, and has nothing to deny


def test_a_second_node_of_one_holder_adds_no_party(world: World) -> None:
    before = dry(world)["plan"]
    assert before["parties"] == 3
    world.node("mallory-2", "mallory-holder", rows=10)
    after = dry(world)["plan"]
    assert "mallory-2" in after["nodes"] and len(after["nodes"]) == len(before["nodes"]) + 1
    assert (after["threshold"], after["noise_shares"], after["parties"]) == \
        (before["threshold"], before["noise_shares"], before["parties"])
    # Past the per-holder cap the node is refused, naming the cap.
    world.node("mallory-3", "mallory-holder", rows=10, wait=False)
    assert world.exited("mallory-3")
    assert f"{CAP} node" in world.cluster.procs["mallory-3"].tail(40)


def test_one_token_cannot_register_hundreds_of_nodes(world: World) -> None:
    token = world.holder("sybil-holder")
    channel = grpc.insecure_channel(world.cluster.grpc_addr)
    stub = pb_grpc.NodeServiceStub(channel)
    accepted, limited = 0, 0
    try:
        for i in range(300):
            try:
                stub.Register(pb.RegisterRequest(node_name=f"sybil-{i}", region="CN-FJ", datasets_json="[]"),
                              metadata=[("authorization", f"Bearer {token}")], timeout=10)
                accepted += 1
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, e.details()
                limited += 1
    finally:
        channel.close()
    assert accepted <= 20 and limited >= 280, (accepted, limited)
    with world.client("admin") as c:
        assert sum(n["name"].startswith("sybil-") for n in c.nodes()) == accepted
    # The limit is per holder: another holder's registration still passes at once.
    world.holder("east-holder")
    with world.client("north-holder") as c:
        c.invite("visits", "east-holder")
    world.node("east", "east-holder", rows=10)
