"""The private-join rounds in one process (issue #16): the real driver (``gateway.join``) against two
real node task executors (``node.tasks.join``) through the task contract's wire encoding.

The end-to-end test with real processes is tests/e2e/test_private_join_e2e.py; here the rounds run
fast enough to check exact arithmetic (noise made zero by a huge epsilon is not allowed, so the
checks use the noise the plan declares) and the refusals a node makes on its own.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from join_data import KEY_BITS, Wire, delivery, prepared, write_nodes

from xdp_compute.crypto.paillier import generate_keypair
from xdp_compute.errors import ProtocolAborted
from xdp_compute.gateway.join import private_join
from xdp_compute.sdk.join import decrypt_join


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
