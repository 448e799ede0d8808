"""Synthetic overlapping populations for private-join tests (issue #16): a hospital and an insurer.

Both hold a ``citizen`` key of the "citizen-id" domain. Keys overlap partially, appear in
different orders on the two sides, and a few keys are repeated on each side (every row of a
repeated key is dropped by its holder, as docs/private-joins.md documents).
"""

from __future__ import annotations

import asyncio
import base64
import csv
import io
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xdp_compute.contract import Record, decode_reply, encode
from xdp_compute.crypto.paillier import ciphertexts_to_bytes
from xdp_compute.domain.manifest import load_manifest
from xdp_compute.gateway.hub import NodeFailed
from xdp_compute.gateway.join import JoinPrepared
from xdp_compute.gateway.store import PrincipalView
from xdp_compute.node.executors import TaskExecutor
from xdp_compute.query.join_plan import join_cost, join_noise_plan, plan_join
from xdp_compute.query.joins import check_join
from xdp_compute.query.parse import parse_statement

HOSPITAL = """
[node]
name = "{node}"
region = "CN-FJ"

[[datasets]]
name = "hospital"
source = "hospital.csv"
classification = "internal"
epsilon_budget = {budget}
delta = 1e-4
min_group_size = 1
max_rows = {max_rows}
max_epsilon_per_query = 1000
require_approval = {approval}

[datasets.columns]
citizen  = {{ type = "text", uses = ["join"], join_domain = "citizen-id" }}
district = {{ type = "category", values = ["north", "south"], uses = ["group", "filter"] }}
age      = {{ type = "int", min = 0, max = 100, uses = ["aggregate", "filter"] }}
"""

INSURER = """
[node]
name = "{node}"
region = "CN-FJ"

[[datasets]]
name = "insurer"
source = "insurer.csv"
classification = "internal"
epsilon_budget = {budget}
delta = 1e-4
min_group_size = 1
max_rows = {max_rows}
max_epsilon_per_query = 1000
require_approval = {approval}

[datasets.columns]
citizen = {{ type = "text", uses = ["join"], join_domain = "citizen-id" }}
phone   = {{ type = "text", uses = ["join"], join_domain = "phone" }}
claim   = {{ type = "float", min = 0, max = 1000, uses = ["aggregate", "filter"] }}
tier    = {{ type = "category", values = ["basic", "gold"], uses = ["group"] }}
"""


@dataclass
class Populations:
    hospital_csv: str
    insurer_csv: str
    hospital: dict[str, tuple[str, int]]   # citizen -> (district, age), unique keys only
    insurer: dict[str, tuple[float, str]]  # citizen -> (claim, tier), unique keys only
    raw_keys: list[str]                    # every key as written in either file
    raw_values: list[str]                  # every value as written (ages, claims)

    def truth(self, where_age_over: int | None = None) -> dict[tuple[str, str], dict[str, float]]:
        """Exact per-(district, tier) COUNT and SUM(claim) over the inner join of unique keys."""
        out: dict[tuple[str, str], dict[str, float]] = {}
        for k, (district, age) in self.hospital.items():
            if k not in self.insurer or (where_age_over is not None and not age > where_age_over):
                continue
            claim, tier = self.insurer[k]
            cell = out.setdefault((district, tier), {"count": 0, "sum": 0.0})
            cell["count"] += 1
            cell["sum"] += claim
        return out


def populations(seed: int, n_hospital: int, n_insurer: int, overlap: int, duplicates: int = 3) -> Populations:
    rng = random.Random(seed)
    ids = [f"C{seed:02d}{i:07d}" for i in range(n_hospital + n_insurer - overlap)]
    h_ids = ids[:n_hospital]
    i_ids = ids[n_hospital - overlap:]
    rng.shuffle(h_ids)
    rng.shuffle(i_ids)
    hospital = {k: (rng.choice(["north", "south"]), rng.randint(0, 100)) for k in h_ids}
    insurer = {k: (round(rng.uniform(0, 1000), 2), rng.choice(["basic", "gold"])) for k in i_ids}
    h_rows = [[k, d, a] for k, (d, a) in hospital.items()]
    i_rows = [[k, f"+86{rng.randint(10**9, 10**10 - 1)}", c, t] for k, (c, t) in insurer.items()]
    # Duplicated keys: a matched key written twice on each side (with different values); all its rows drop.
    for k in [k for k in h_ids if k in insurer][:duplicates]:
        h_rows.append([k, "north", 50])
        i_rows.append([k, "+8600000000", 999.0, "gold"])
        hospital.pop(k)
        insurer.pop(k)
    rng.shuffle(h_rows)
    rng.shuffle(i_rows)
    # Keys written with surrounding spaces on one side: normalised to the same key.
    for r in i_rows[::7]:
        r[0] = f"  {r[0]} "

    def text(header: list[str], rows: list[list[object]]) -> str:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)
        return buf.getvalue()

    return Populations(text(["citizen", "district", "age"], h_rows),
                       text(["citizen", "phone", "claim", "tier"], i_rows),
                       hospital, insurer, [str(r[0]).strip() for r in h_rows + i_rows],
                       [str(r[2]) for r in h_rows] + [str(r[2]) for r in i_rows])


# ---------------------------------------------------------------- the rounds in one process
KEY_BITS = 2048


class Wire:
    """A hub stand-in: every request and reply goes through the contract's encoding to a real node
    executor, and is recorded (what each node received, what the gateway received)."""

    def __init__(self, nodes: dict[str, TaskExecutor]) -> None:
        self.nodes = nodes
        self.to_node: dict[str, list[tuple[str, dict[str, Any], dict[str, bytes]]]] = {n: [] for n in nodes}
        self.to_gateway: list[tuple[str, dict[str, Any], dict[str, bytes]]] = []

    async def ask(self, node: str, job_id: str, request: Record, timeout: float) -> Record:
        header, blobs = encode(request)
        self.to_node[node].append((request.KIND, header, blobs))
        ex = self.nodes[node]
        ex.node_id = node
        out = await asyncio.to_thread(ex.handle, request.KIND, job_id, header, blobs)
        if not out.ok:
            raise NodeFailed(out.error)
        self.to_gateway.append((request.KIND, out.header, out.blobs))
        return decode_reply(request.KIND, out.header, out.blobs)


def write_nodes(root: Path, seed: int, n_h: int, n_i: int, overlap: int, max_rows: int) -> tuple[Any, ...]:
    pops = populations(seed, n_h, n_i, overlap)
    (root / "h").mkdir(parents=True)
    (root / "i").mkdir(parents=True)
    (root / "h" / "hospital.csv").write_text(pops.hospital_csv)
    (root / "i" / "insurer.csv").write_text(pops.insurer_csv)
    (root / "h" / "node.toml").write_text(HOSPITAL.format(node="hospital-node", budget=1000, max_rows=max_rows,
                                                          approval="false"))
    (root / "i" / "node.toml").write_text(INSURER.format(node="insurer-node", budget=1000, max_rows=max_rows,
                                                         approval="false"))
    h = TaskExecutor(load_manifest(root / "h" / "node.toml"))
    i = TaskExecutor(load_manifest(root / "i" / "node.toml"))
    return pops, h, i


def prepared(sql: str, h: TaskExecutor, i: TaskExecutor, public: Any, epsilon: float) -> JoinPrepared:
    specs = {"hospital": h.manifest.datasets[0], "insurer": i.manifest.datasets[0]}
    stmt = parse_statement(sql, allow_join=True)
    shape = check_join(stmt, specs)
    plan = plan_join(sql, stmt, specs[shape.left], specs[shape.right], shape.left_key, shape.right_key, epsilon,
                     1e-6, left_alias=shape.left_alias, right_alias=shape.right_alias)
    parts = {"hospital": {"node_id": "hospital-node", "node": "hospital-node"},
             "insurer": {"node_id": "insurer-node", "node": "insurer-node"}}
    eps, dlt = join_cost(plan)
    return JoinPrepared(PrincipalView("p1", "analyst", "analyst", "CN-FJ"), plan,
                        {"A": parts[plan.a.dataset], "B": parts[plan.b.dataset]}, join_noise_plan(plan), eps, dlt,
                        0.95, [], "digest", public.to_dict())


def delivery(p: JoinPrepared, public: Any, cts: list[int]) -> dict[str, Any]:
    return {"operation": "join_aggregate", "result": {
        "encrypted": True, "key_fingerprint": public.fingerprint, "join_plan": p.plan.to_dict(),
        "noise": p.noise.to_dict(), "n_shares": 2, "level": 0.95, "datasets": p.datasets, "nodes": p.node_names,
        "min_group_size": 1, "epsilon": p.epsilon, "delta": p.delta, "cells": len(p.plan.inner.cells),
        "ciphertexts": base64.b64encode(ciphertexts_to_bytes(cts, public)).decode()}}
