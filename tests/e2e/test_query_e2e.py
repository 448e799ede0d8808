"""Federated DP SQL end to end: real gateway and node processes, secure aggregation, the ledger."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from e2e_helpers import Hospitals, start_hospitals, truth

from xdp_compute.crypto.secagg import default_threshold
from xdp_compute.domain.policy import noise_shares
from xdp_compute.errors import XdpError

# 3 nodes: threshold 2, and the default collusion margin of 1 leaves 1 honest share.
HONEST_SHARES = noise_shares(3, default_threshold(3), None).honest


SQL = "SELECT clinic, COUNT(*) AS n, SUM(cost) AS total, AVG(cost) AS mean FROM visits GROUP BY clinic"


@pytest.fixture(scope="module")
def hospitals(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hospitals]:
    h = start_hospitals(tmp_path_factory.mktemp("q"), n=3, rows=400)
    try:
        yield h
    finally:
        h.cluster.close()


def test_joint_query_rows_intervals_and_cost(hospitals: Hospitals) -> None:
    a = hospitals.analyst()
    r = a.query(SQL, epsilon=2.0)
    exact = truth(hospitals.files)
    assert [row["clinic"] for row in r.rows] == ["north", "south", "east"]
    assert set(r.rows[0]) == {"clinic", "n", "total", "mean"} and len(r.intervals) == len(r.rows)
    for row, iv in zip(r.rows, r.intervals, strict=True):
        t = exact[row["clinic"]]
        lo, hi = iv["n"]
        assert lo <= row["n"] <= hi
        # Far outside 5 half-widths would mean a broken sum, not bad luck.
        assert abs(row["n"] - t["n"]) <= 5 * (hi - lo) / 2 + 1
        m_lo, m_hi = iv["mean"]
        assert abs(row["mean"] - t["mean"]) <= 3 * (m_hi - m_lo) / 2 + 1e-9
    assert 0 < r.epsilon <= 2.0 and r.delta > 0
    assert all(v <= 1000 - r.epsilon + 1e-6 for v in r.remaining.values())
    assert sorted(r.nodes) == sorted(hospitals.nodes)


def test_idempotent_retry_returns_identical_answer_and_charges_once(hospitals: Hospitals) -> None:
    a = hospitals.analyst()
    before = a.budget("visits")
    r1 = a.query(SQL, epsilon=0.5, idempotency_key="same-request-1")
    r2 = a.query(SQL, epsilon=0.5, idempotency_key="same-request-1")
    after = a.budget("visits")
    assert r1.rows == r2.rows and r1.intervals == r2.intervals and r1.job_id == r2.job_id
    spent = [x["epsilon_spent"] - y["epsilon_spent"] for x, y in zip(after["nodes"], before["nodes"], strict=True)]
    assert all(math.isclose(s, r1.epsilon, rel_tol=1e-9) for s in spent)
    with pytest.raises(XdpError, match="different request"):
        a.query(SQL, epsilon=0.7, idempotency_key="same-request-1")


def test_dry_run_charges_nothing_and_explains(hospitals: Hospitals) -> None:
    a = hospitals.analyst()
    before = a.budget("visits")
    plan = a.query(SQL, epsilon=1.0, dry_run=True)
    assert a.budget("visits") == before
    assert plan["cost"]["epsilon"] <= 1.0 and plan["allowed"] is True
    assert {"n", "total"} <= set(plan["expected_error"])
    assert all({"rule", "allowed", "reason"} <= set(d) for d in plan["decisions"])


def test_cli_query_prints_table(hospitals: Hospitals) -> None:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "xdp_compute", "query", "--url", hospitals.cluster.url, "--token",
                          hospitals.tokens["analyst"], "--epsilon", "0.5", SQL], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "north" in out.stdout and "[" in out.stdout and "spent epsilon" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "xdp_compute", "query", "--url", hospitals.cluster.url, "--token",
                          hospitals.tokens["analyst"], "--epsilon", "0.5", "SELECT * FROM visits"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "SELECT *" in bad.stderr and "Traceback" not in bad.stderr


def test_gateway_transcript_holds_no_single_partial(tmp_path: Path) -> None:
    """Everything the gateway received: masked vectors look uniform, no node's partial (raw or
    noisy) appears, and what it unmasked is exactly the sum of the nodes' noisy partials."""
    from xdp_compute.crypto.secagg import MaskedInput, decode_message
    from xdp_compute.domain.manifest import load_manifest
    from xdp_compute.gateway.query_service import DEFAULT_DELTA_FRACTION, with_group_size
    from xdp_compute.node.sources import run_local_query
    from xdp_compute.node.tasks.query import add_noise, seeded_noise_key
    from xdp_compute.privacy import Measurement, plan_noise
    from xdp_compute.privacy.randomness import SeededRandomness
    from xdp_compute.query import plan_query
    from xdp_compute.query.plan import from_ring
    from xdp_compute.v1 import node_pb2 as pb

    capture = tmp_path / "capture.tsv"
    h = start_hospitals(tmp_path / "c", n=3, rows=200, gateway_env={"XDP_GRPC_CAPTURE": str(capture)},
                        env={"XDP_TEST_NOISE_SEED": "transcript"})
    sql = "SELECT clinic, COUNT(*) AS n, SUM(cost) AS total FROM visits GROUP BY clinic"
    try:
        r = h.analyst().query(sql, epsilon=1.0)
    finally:
        h.cluster.close()
    lines = [ln.split("\t") for ln in capture.read_text().splitlines()]
    received = b"\x00".join(bytes.fromhex(x[2]) for x in lines)
    results = [pb.TaskResult.FromString(bytes.fromhex(x[2])) for x in lines if x[1] == "SubmitResult"]
    masked = [msg.vector for msg in (decode_message(x.blobs["secagg"]) for x in results if "secagg" in x.blobs)
              if isinstance(msg, MaskedInput)]
    assert len(masked) == 3

    # Recompute each node's partial and noisy partial (test-only seeded noise, first query: k=0).
    noisy_sum = None
    for node in h.nodes:
        m = load_manifest(h.cluster.root / node / "node.toml")
        plan = plan_query(with_group_size(sql)[0], m.datasets[0])
        noise = plan_noise(1.0, 1e-5 * DEFAULT_DELTA_FRACTION, [Measurement(mm.key, mm.sensitivity, len(plan.cells), mm.sensitivity)
                                              for mm in plan.measurements], HONEST_SHARES)
        sig = {x.name: x.sigma_node2 for x in noise.measurements}
        partial = run_local_query(plan, m, m.datasets[0])
        noisy = add_noise(partial, plan, sig, SeededRandomness(seeded_noise_key("transcript", node, 0)))
        assert not np.array_equal(noisy, partial)
        for vec in (partial, noisy):
            assert vec.tobytes() not in received
            for word in vec.tolist():
                if 1 << 16 < word < (1 << 64) - (1 << 16):
                    assert int(word).to_bytes(8, "little") not in received, f"a word of {node}'s partial leaked"
            for mv in masked:
                assert not np.any(mv == vec)
        noisy_sum = noisy if noisy_sum is None else noisy_sum + noisy  # uint64 wraps mod 2^64
    assert noisy_sum is not None
    # The released counts are exactly the sum of the three noisy partials (the only value unmasked).
    n_index = [mm.key for mm in plan.measurements].index("count")
    assert [row["n"] for row in r.rows] == [float(from_ring(int(noisy_sum[plan.index(c, n_index)])))
                                             for c in range(len(plan.cells))]
    # Masked words are uniform: bit balance of all masked vectors within 6 sigma.
    bits = np.unpackbits(np.concatenate(masked).view(np.uint8))
    assert abs(bits.mean() - 0.5) < 6 * 0.5 / math.sqrt(bits.size)
