"""Secure aggregation with real node processes: a node dropping out at each phase.

With 3 nodes and t = 2, one drop-out at any phase still gives the exact noisy sum of the
survivors (U3); two drop-outs abort cleanly and refund the reservation. Noise is seeded
(test-only XDP_TEST_NOISE_SEED) so the test can recompute every node's noisy partial.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from e2e_helpers import start_hospitals

from xdp_compute.crypto.secagg import default_threshold
from xdp_compute.domain.policy import noise_shares
from xdp_compute.errors import XdpError

# 3 nodes: threshold 2, and the default collusion margin of 1 leaves 1 honest share.
HONEST_SHARES = noise_shares(3, default_threshold(3), None).honest


SQL = "SELECT clinic, COUNT(*) AS n, SUM(cost) AS total FROM visits GROUP BY clinic"
PHASES = ["query_begin", "secagg_share_keys", "secagg_masked_input", "secagg_consistency", "secagg_unmask"]
FAST = {"XDP_TEST_NOISE_SEED": "dropout", "XDP_ROUND_TIMEOUT": "8"}


def noisy_partials(root: Path, nodes: list[str]) -> dict[str, tuple[object, np.ndarray]]:
    from xdp_compute.domain.manifest import load_manifest
    from xdp_compute.gateway.query_service import DEFAULT_DELTA_FRACTION, with_group_size
    from xdp_compute.node.sources import run_local_query
    from xdp_compute.node.tasks.query import add_noise, seeded_noise_key
    from xdp_compute.privacy import Measurement, plan_noise
    from xdp_compute.privacy.randomness import SeededRandomness
    from xdp_compute.query import plan_query

    out = {}
    for node in nodes:
        m = load_manifest(root / node / "node.toml")
        plan = plan_query(with_group_size(SQL)[0], m.datasets[0])
        noise = plan_noise(1.0, 1e-5 * DEFAULT_DELTA_FRACTION, [Measurement(mm.key, mm.sensitivity, len(plan.cells), mm.sensitivity)
                                       for mm in plan.measurements], HONEST_SHARES)
        sig = {x.name: x.sigma_node2 for x in noise.measurements}
        vec = add_noise(run_local_query(plan, m, m.datasets[0]), plan, sig,
                        SeededRandomness(seeded_noise_key("dropout", node, 0)))
        out[node] = (plan, vec)
    return out


@pytest.mark.parametrize("phase", PHASES)
def test_one_dropout_gives_exact_noisy_sum_of_survivors(tmp_path: Path, phase: str) -> None:
    from xdp_compute.query.plan import from_ring

    h = start_hospitals(tmp_path, n=3, rows=150, env=FAST, node_env={"clinic-2": {"XDP_NODE_FAULT": phase}})
    try:
        r = h.analyst().query(SQL, epsilon=1.0)
    finally:
        h.cluster.close()
    survivors = sorted(r.nodes)
    # A node dropping after its masked input (before signing U3 or before unmasking) is still in U3:
    # its input counts.
    expected_survivors = h.nodes if phase in ("secagg_consistency", "secagg_unmask") else ["clinic-0", "clinic-1"]
    assert survivors == sorted(expected_survivors)
    parts = noisy_partials(h.cluster.root, survivors)
    plan = next(iter(parts.values()))[0]
    total = sum((v for _, v in parts.values()), np.zeros(plan.vector_length, dtype=np.uint64))
    keys = [mm.key for mm in plan.measurements]
    for c, row in enumerate(r.rows):
        assert row["n"] == float(from_ring(int(total[plan.index(c, keys.index("count"))])))
        scale = plan.measurements[keys.index("sum(cost)")].scale
        assert row["total"] == pytest.approx(from_ring(int(total[plan.index(c, keys.index("sum(cost)"))])) / scale)


@pytest.mark.parametrize("phase", ["query_begin", "secagg_masked_input"])
def test_below_threshold_aborts_cleanly_and_refunds(tmp_path: Path, phase: str) -> None:
    h = start_hospitals(tmp_path, n=3, rows=100, env=FAST,
                        node_env={"clinic-1": {"XDP_NODE_FAULT": phase}, "clinic-2": {"XDP_NODE_FAULT": phase}})
    try:
        a = h.analyst()
        before = a.budget("visits")
        with pytest.raises(XdpError) as e:
            a.query(SQL, epsilon=1.0)
        assert e.value.status == 503
        assert "threshold" in e.value.detail.lower() or "fewer" in e.value.detail.lower(), e.value.detail
        after = a.budget("visits")
        assert [n["epsilon_spent"] for n in after["nodes"]] == [n["epsilon_spent"] for n in before["nodes"]]
        assert all(n["epsilon_reserved"] == pytest.approx(0.0, abs=1e-12) for n in after["nodes"])
    finally:
        h.cluster.close()
