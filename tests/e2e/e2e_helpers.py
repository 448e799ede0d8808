"""Helpers for end-to-end tests: a gateway and hospital nodes as real processes on loopback."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from xdp_compute import Client
from xdp_compute.cli.cluster import LocalCluster

MANIFEST = """
[node]
name = "{node}"
region = "{region}"

[[datasets]]
name = "visits"
source = "visits.csv"
classification = "internal"
categories = {categories}
epsilon_budget = {budget}
delta = 1e-5
min_group_size = {min_group}
require_approval = {approval}

[datasets.columns]
clinic = {{ type = "category", values = ["north", "south", "east"], uses = ["group", "filter"] }}
age    = {{ type = "int", min = 0, max = 100, uses = ["aggregate", "filter"] }}
cost   = {{ type = "float", min = 0, max = 1000, uses = ["aggregate", "filter"] }}
note   = {{ type = "text", uses = [] }}
"""


def visits_csv(seed: int, rows: int) -> str:
    rng = np.random.default_rng(seed)
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(["clinic", "age", "cost", "note"])
    clinics = rng.choice(["north", "south", "east"], rows, p=[0.5, 0.4, 0.1])
    for i in range(rows):
        w.writerow([clinics[i], int(rng.integers(0, 101)), f"{rng.uniform(0, 1000):.3f}",
                    f"private note {seed}-{i}"])
    return out.getvalue()


def truth(files: dict[str, str], where: Any = None) -> dict[str, dict[str, float]]:
    """Exact per-clinic COUNT, SUM(cost), AVG(cost) over the union of the nodes' files."""
    rows = [r for text in files.values() for r in csv.DictReader(io.StringIO(text))]
    if where is not None:
        rows = [r for r in rows if where(r)]
    out = {}
    for c in ("north", "south", "east"):
        costs = [float(r["cost"]) for r in rows if r["clinic"] == c]
        out[c] = {"n": float(len(costs)), "total": float(sum(costs)),
                  "mean": float(sum(costs) / len(costs)) if costs else float("nan")}
    return out


def invite(cluster: LocalCluster, owner_token: str, holder: str, dataset: str = "visits") -> None:
    """The dataset's owner (its node registered first) invites ``holder`` to add rows to it."""
    with cluster.client(owner_token) as c:
        c.invite(dataset, holder)


def start_sharing(cluster: LocalCluster, admin_token: str, dataset: str,
                  nodes: list[tuple[str, str, str, Path]], env: dict[str, dict[str, str]] | None = None) -> None:
    """Start nodes of several holders that share ``dataset``: the first node registers first, so its
    holder owns the dataset and invites each other holder before that holder's node starts.
    ``nodes``: (node name, holder name, holder token, manifest path). The caller waits for them online."""
    node, holder, token, manifest = nodes[0]
    cluster.start_node(node, token, manifest, env=(env or {}).get(node))
    cluster.wait_online(admin_token, [node])
    invited = {holder}
    for node, holder, tok, manifest in nodes[1:]:
        if holder not in invited:
            invite(cluster, token, holder, dataset)
            invited.add(holder)
        cluster.start_node(node, tok, manifest, env=(env or {}).get(node))


@dataclass
class Hospitals:
    cluster: LocalCluster
    tokens: dict[str, str]
    files: dict[str, str]
    nodes: list[str] = field(default_factory=list)

    def analyst(self, name: str = "analyst") -> Client:
        return self.cluster.client(self.tokens[name])  # type: ignore[no-any-return]


def start_hospitals(root: Path, n: int = 3, rows: int = 300, budget: float = 1000.0, min_group: int = 5,
                    gateway_env: dict[str, str] | None = None, node_env: dict[str, dict[str, str]] | None = None,
                    approval: set[str] | None = None, categories: str = '["transport"]',
                    env: dict[str, str] | None = None, db: str | None = None, tls: bool = False) -> Hospitals:
    cluster = LocalCluster(root=root, env={"XDP_HEARTBEAT_SECONDS": "0.5", **(env or {})}, db=db, tls=tls)
    cluster.start_gateway(env=gateway_env)
    tokens = {"admin": cluster.token("admin", "admin"), "analyst": cluster.token("analyst", "analyst"),
              "auditor": cluster.token("auditor", "auditor")}
    files: dict[str, str] = {}
    names = [f"clinic-{i}" for i in range(n)]
    for i, node in enumerate(names):
        tokens[node] = cluster.token("holder", f"{node}-holder")
        files[node] = visits_csv(i, rows)
        m = cluster.write_node_files(node, MANIFEST.format(
            node=node, region="CN-FJ", budget=budget, min_group=min_group, categories=categories,
            approval="true" if approval and node in approval else "false"), {"visits.csv": files[node]})
        if i > 0:  # clinic-0's holder owns `visits` (it registered first) and invites the others
            invite(cluster, tokens[names[0]], f"{node}-holder")
        cluster.start_node(node, tokens[node], m, env=(node_env or {}).get(node))
        if i == 0:
            cluster.wait_online(tokens["admin"], [node])
    cluster.wait_online(tokens["admin"], names)
    return Hospitals(cluster, tokens, files, names)
