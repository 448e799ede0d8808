"""SecAgg+ parameters from stated drop-out and corruption rates (Bell et al., CCS 2020).

The bounds are checked against an independent computation (scipy's hypergeometric), the node's
own rule (2t > h + c) and the session configuration; then monotonicity in the rates, the
1,000-node case at the gateway defaults, and refusals.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy.stats import hypergeom

from xdp_compute.config import Settings
from xdp_compute.crypto import fixedpoint as fp
from xdp_compute.crypto.secagg import (
    Phase,
    SecAggConfig,
    SecAggUnconfigurable,
    complete_graph_parameters,
    run_local_session,
    secagg_plus_parameters,
)
from xdp_compute.crypto.secagg.config import CORRECTNESS_BITS, SECURITY_BITS, _disconnection_bound
from xdp_compute.errors import InvalidSpec

DEFAULTS = Settings(db_url="sqlite://")


def params(n: int, dropout: float = 0.05, corrupt: float = 1 / 3, c: int = 1):  # type: ignore[no-untyped-def]
    return secagg_plus_parameters(n, dropout_rate=dropout, corrupt_rate=corrupt, colluding=c)


@pytest.mark.parametrize("n", [41, 100, 300, 1000, 5000])
def test_bounds_meet_the_targets_and_the_node_rule(n: int) -> None:
    p = params(n)
    k, t = p.neighbours, p.threshold
    assert k is not None and k % 2 == 0 and k < n - 1 and 2 <= t <= k + 1
    assert 2 * t > k + 1 + p.colluding                      # the node's rule, h = k + 1
    assert p.privacy_failure < 2.0 ** -SECURITY_BITS
    assert p.correctness_failure < 2.0 ** -CORRECTNESS_BITS
    # Independently: the per-node tails, unioned over n nodes (scipy: sf(x) = P[X > x]).
    corrupt_tail = n * hypergeom.sf(2 * t - k - 2, n - 1, p.corrupt_nodes, k)
    dropped_tail = n * hypergeom.sf(k - t, n - 1, p.dropout_nodes, k)
    assert corrupt_tail <= p.privacy_failure * (1 + 1e-6) + 1e-300
    assert dropped_tail <= p.correctness_failure * (1 + 1e-6) + 1e-300
    assert corrupt_tail < 2.0 ** -(SECURITY_BITS + 1) and dropped_tail < 2.0 ** -CORRECTNESS_BITS
    # The chosen k is the sparsest: k - 2 fails a target (or is no graph at all).
    j = k - 2
    if j >= 2:
        fits = [t for t in range(2, j + 2)
                if 2 * t > j + 1 + p.colluding
                and n * hypergeom.sf(2 * t - j - 2, n - 1, p.corrupt_nodes, j) < 2.0 ** -(SECURITY_BITS + 1)
                and n * hypergeom.sf(j - t, n - 1, p.dropout_nodes, j) < 2.0 ** -CORRECTNESS_BITS]
        assert not fits or _disconnection_bound(n, j, p.corrupt_nodes + p.dropout_nodes) >= 2.0 ** -41
    # The session accepts it.
    cfg = SecAggConfig(session_id="s", participants=[f"n{i}" for i in range(n)], vector_length=1,
                       threshold=t, neighbours=k)
    assert cfg.sparse and cfg.neighbourhood_size == k + 1 and cfg.t == t


def test_one_thousand_nodes_at_the_gateway_defaults() -> None:
    p = secagg_plus_parameters(1000, dropout_rate=DEFAULTS.secagg_dropout_rate,
                               corrupt_rate=DEFAULTS.secagg_corrupt_rate, colluding=1)
    assert (DEFAULTS.secagg_dropout_rate, DEFAULTS.secagg_corrupt_rate) == (0.05, pytest.approx(1 / 3))
    assert p.sparse and p.neighbours is not None and p.neighbours < 200  # vs 999 with the complete graph
    assert (p.corrupt_nodes, p.dropout_nodes) == (333, 50)
    d = p.to_dict()
    assert d["neighbours"] == p.neighbours and d["threshold"] == p.threshold
    assert d["log2_privacy_failure"] < -SECURITY_BITS and d["log2_correctness_failure"] < -CORRECTNESS_BITS


def test_the_old_degree_exposed_nodes_and_the_new_one_does_not() -> None:
    """Issue #13: k = 2*ceil(log2 n) = 20 at n = 1000 with a third colluding leaves ~24 nodes with
    a threshold's worth (t = 11) of corrupt neighbours; the chosen k leaves ~0 (< 2^-40)."""
    old_exposed = 1000 * hypergeom.sf(10, 999, 333, 20)
    assert old_exposed > 10
    p = params(1000)
    k, t = p.neighbours, p.threshold
    assert k is not None
    assert 1000 * hypergeom.sf(t - 1, 999, 333, k) < 2.0 ** -40


def test_degree_grows_like_log_n() -> None:
    ks = {n: params(n).neighbours for n in (100, 1000, 10_000, 60_000)}
    assert all(k is not None for k in ks.values())
    # Non-decreasing, and each tenfold increase of n adds a roughly constant amount to k
    # (k ~ a + b*log n), far below a tenfold increase.
    assert ks[100] <= ks[1000] <= ks[10_000] <= ks[60_000]  # type: ignore[operator]
    assert ks[10_000] - ks[1000] <= ks[1000] - ks[100]  # type: ignore[operator]
    assert ks[60_000] < 2 * ks[1000]  # type: ignore[operator]


@pytest.mark.parametrize("n", [100, 1000])
def test_bounds_are_monotone_in_the_rates(n: int) -> None:
    """More drop-outs or more corruption never buys a sparser graph."""
    ks = [params(n, dropout=d).neighbours for d in (0.0, 0.02, 0.05, 0.1, 0.15)]
    assert ks == sorted(ks)
    ks = [params(n, corrupt=g).neighbours for g in (0.0, 0.05, 0.1, 0.2, 1 / 3)]
    assert ks == sorted(ks)
    # And for a fixed graph, the failure bounds are monotone in the threshold: the chosen t is
    # the largest whose abort bound meets the target, the privacy bound falls as t grows.
    p = params(n)
    assert p.neighbours is not None
    k = p.neighbours
    priv = [n * hypergeom.sf(2 * t - k - 2, n - 1, p.corrupt_nodes, k) for t in range(k // 2 + 1, k + 2)]
    abort = [n * hypergeom.sf(k - t, n - 1, p.dropout_nodes, k) for t in range(k // 2 + 1, k + 2)]
    assert all(a >= b - 1e-300 for a, b in itertools.pairwise(priv))
    assert all(a <= b + 1e-300 for a, b in itertools.pairwise(abort))


@pytest.mark.parametrize(("n", "dropout", "corrupt"), [
    (1000, 0.4, 0.3),   # corrupt + 2 * dropout > 1: no threshold can be both safe and live
    (1000, 0.05, 0.9),
    (3, 0.05, 0.1),     # too few nodes for any graph sparser than complete
])
def test_unconfigurable_rates_are_refused(n: int, dropout: float, corrupt: float) -> None:
    with pytest.raises(SecAggUnconfigurable, match="no SecAgg\\+ neighbour graph") as e:
        secagg_plus_parameters(n, dropout_rate=dropout, corrupt_rate=corrupt)
    assert e.value.status == 409


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, float("nan"), True, "0.1"])
def test_rates_are_validated(bad: object) -> None:
    with pytest.raises(InvalidSpec):
        secagg_plus_parameters(100, dropout_rate=bad, corrupt_rate=0.1)  # type: ignore[arg-type]


def test_complete_graph_is_judged_deterministically() -> None:
    ok = complete_graph_parameters(10, 8, dropout_rate=0.1, corrupt_rate=0.1, colluding=1)
    assert not ok.sparse and ok.privacy_failure == 0.0 and ok.correctness_failure == 0.0
    # 3 nodes, t = 2: one colluder can sign two survivor sets (2t - n = 1): privacy fails at 1/3.
    weak = complete_graph_parameters(3, 2, dropout_rate=0.05, corrupt_rate=1 / 3, colluding=1)
    assert weak.privacy_failure == 1.0 and weak.to_dict()["guaranteed_dropout_tolerance"] == 1
    live = complete_graph_parameters(10, 10, dropout_rate=0.1, corrupt_rate=0.0)
    assert live.correctness_failure == 1.0


def test_a_session_with_the_chosen_parameters_survives_the_stated_dropouts() -> None:
    n, m = 120, 4
    p = params(n)
    assert p.neighbours is not None
    cfg = SecAggConfig(session_id="bell/120", participants=[f"n{i:03d}" for i in range(n)], vector_length=m,
                       threshold=p.threshold, neighbours=p.neighbours)
    rng = np.random.default_rng(7)
    inputs = {u: rng.integers(0, 2**64, m, dtype=np.uint64) for u in cfg.participants}
    phases = [Phase.ADVERTISE_KEYS, Phase.SHARE_KEYS, Phase.MASKED_INPUT, Phase.CONSISTENCY, Phase.UNMASK]
    dropped = rng.choice(n, p.dropout_nodes, replace=False)
    drop = {cfg.participants[i]: phases[j % len(phases)] for j, i in enumerate(dropped)}
    out = run_local_session(cfg, inputs, drop=drop)
    u3 = [u for u in cfg.participants if u not in drop or drop[u] >= Phase.CONSISTENCY]
    np.testing.assert_array_equal(out, fp.sum_mod(inputs[u] for u in u3))
    assert math.isfinite(p.privacy_failure)
