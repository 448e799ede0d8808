"""The private-join rounds in one process (issue #16): the real driver (``gateway.join``) against two
real node task executors (``node.tasks.join``) through the task contract's wire encoding.

The end-to-end test with real processes is tests/e2e/test_private_join_e2e.py; here the rounds run
fast enough to check exact arithmetic (noise made zero by a huge epsilon is not allowed, so the
checks use the noise the plan declares) and the refusals a node makes on its own.
"""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path
from typing import Any

import pytest
from join_data import HOSPITAL, INSURER, populations

from xdp_compute.contract import Record, decode_reply, encode
from xdp_compute.crypto.paillier import ciphertexts_to_bytes, generate_keypair
from xdp_compute.domain.manifest import load_manifest
from xdp_compute.errors import ProtocolAborted
from xdp_compute.gateway.hub import NodeFailed
from xdp_compute.gateway.join import JoinPrepared, private_join
from xdp_compute.gateway.store import PrincipalView
from xdp_compute.node.executors import TaskExecutor
from xdp_compute.query.join_plan import join_cost, join_noise_plan, plan_join
from xdp_compute.query.joins import check_join
from xdp_compute.query.parse import parse_statement
from xdp_compute.sdk.join import decrypt_join

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


@pytest.fixture(scope="module")
def keys() -> tuple[Any, Any]:
    return generate_keypair(KEY_BITS)


def test_grouped_join_aggregates_match_the_plaintext_join_within_their_intervals(tmp_path: Path, keys: Any) -> None:
    public, private = keys
    pops, h, i = write_nodes(tmp_path, 1, 60, 50, 30, 80)
    sql = ("SELECT h.district, i.tier, COUNT(*) AS n, SUM(i.claim) AS total, AVG(i.claim) AS mean "
           "FROM hospital h JOIN insurer i ON h.citizen = i.citizen WHERE h.age > 20 GROUP BY h.district, i.tier")
    p = prepared(sql, h, i, public, 40.0)
    wire = Wire({"hospital-node": h, "insurer-node": i})
    try:
        cts = asyncio.run(private_join(wire, "job-1", p, timeout=60))  # type: ignore[arg-type]
    finally:
        h.close()
        i.close()
    result = decrypt_join(private, delivery(p, public, cts))
    truth = pops.truth(where_age_over=20)
    assert len(result.rows) == 4
    misses = 0
    for row, iv in zip(result.rows, result.intervals, strict=True):
        t = truth.get((row["district"], row["tier"]), {"count": 0, "sum": 0.0})
        for alias, value in (("n", t["count"]), ("total", t["sum"]), ("mean", t["sum"] / max(t["count"], 1))):
            misses += not iv[alias][0] <= value <= iv[alias][1]
            assert near(row[alias], iv[alias], value), (alias, row, iv, t)
    assert misses <= 5  # 12 checks of 95% intervals: more than 5 misses has probability < 1e-4


def near(estimate: float, interval: tuple[float, float], truth: float) -> bool:
    """Truth within 3 half-widths of a 95% interval (z = 5.9: a correct answer fails < 1e-8 per check)."""
    half = (interval[1] - interval[0]) / 2
    return abs(estimate - truth) <= 3 * half + 1e-9


def test_count_alone_is_the_intersection_cardinality(tmp_path: Path, keys: Any) -> None:
    public, private = keys
    pops, h, i = write_nodes(tmp_path, 2, 40, 45, 25, 50)
    p = prepared("SELECT COUNT(*) FROM hospital h JOIN insurer i ON h.citizen = i.citizen", h, i, public, 40.0)
    wire = Wire({"hospital-node": h, "insurer-node": i})
    try:
        cts = asyncio.run(private_join(wire, "job-2", p, timeout=60))  # type: ignore[arg-type]
    finally:
        h.close()
        i.close()
    result = decrypt_join(private, delivery(p, public, cts))
    true = len(set(pops.hospital) & set(pops.insurer))
    assert true == 22  # 25 shared keys, 3 of them duplicated on both sides: dropped
    (col,) = result.columns
    low, high = result.intervals[0][col]
    assert near(result.rows[0][col], (low, high), true) and high - low < 10


def test_a_node_refuses_a_plan_that_does_not_match_its_manifest(tmp_path: Path, keys: Any) -> None:
    public, _ = keys
    _, h, i = write_nodes(tmp_path, 3, 10, 10, 5, 20)
    p = prepared("SELECT SUM(i.claim) FROM hospital h JOIN insurer i ON h.citizen = i.citizen", h, i, public, 4.0)
    d = p.plan.to_dict()
    d["b"]["columns"][0]["max"] = 1.0  # a gateway that shrinks the claim bound (less noise)
    d["inner"]["columns"][0]["max"] = 1.0
    from xdp_compute.query.join_plan import JoinPlan

    p.plan = JoinPlan.from_dict(d)
    wire = Wire({"hospital-node": h, "insurer-node": i})
    try:
        with pytest.raises(ProtocolAborted, match="a holder's node refused: plan"):
            asyncio.run(private_join(wire, "job-3", p, timeout=60))  # type: ignore[arg-type]
    finally:
        h.close()
        i.close()
