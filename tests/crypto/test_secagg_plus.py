"""SecAgg+ (Bell et al. 2020) neighbour-graph mode of crypto/secagg/."""

from __future__ import annotations

import random

import numpy as np
import pytest

from xdp_compute.crypto import fixedpoint as fp
from xdp_compute.crypto.secagg import (
    ConsistencyCheck,
    MaskedInput,
    Phase,
    SecAggClient,
    SecAggConfig,
    SecAggServer,
    ShareKeys,
    default_neighbours,
    run_local_session,
)
from xdp_compute.errors import InvalidSpec, ProtocolAborted

M = 64


def _config(n: int, k: int | None, *, t: int | None = None, session: str = "job-9/round-0") -> SecAggConfig:
    return SecAggConfig(
        session_id=session,
        participants=[f"n{i:02d}" for i in range(n)],
        vector_length=M,
        threshold=t,
        neighbours=k,
    )


def _inputs(cfg: SecAggConfig, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {u: rng.integers(0, 2**64, M, dtype=np.uint64) for u in cfg.participants}


def _ring(cfg: SecAggConfig) -> list[str]:
    """Recover the ring order from the graph (walk from a node, always to an unvisited ±1 neighbour)."""
    half = (cfg.neighbours or 0) // 2
    start = cfg.participants[0]
    order = [start]
    # In a circulant graph C_n(1..h), consecutive ring nodes share 2h-2 common neighbours.
    while len(order) < cfg.n:
        cur = order[-1]
        best = max(
            (v for v in cfg.neighbours_of(cur) if v not in order),
            key=lambda v: len(cfg.neighbours_of(v) & cfg.neighbours_of(cur)),
        )
        order.append(best)
    assert half >= 1
    return order


def test_graph_is_k_regular_symmetric_and_session_bound() -> None:
    cfg = _config(30, 8)
    assert cfg.sparse and cfg.neighbourhood_size == 9 and cfg.t == 5
    for u in cfg.participants:
        nb = cfg.neighbours_of(u)
        assert len(nb) == 8 and u not in nb
        assert all(u in cfg.neighbours_of(v) for v in nb)
        assert cfg.holders_of(u) == nb | {u}
    again = _config(30, 8)
    assert all(cfg.neighbours_of(u) == again.neighbours_of(u) for u in cfg.participants)
    other = _config(30, 8, session="job-9/round-1")
    assert any(cfg.neighbours_of(u) != other.neighbours_of(u) for u in cfg.participants)
    assert cfg.is_connected(cfg.participants)


def test_graph_is_a_harary_ring() -> None:
    cfg = _config(20, 4)
    ring = _ring(cfg)
    for i, u in enumerate(ring):
        assert cfg.neighbours_of(u) == {ring[(i + d) % 20] for d in (-2, -1, 1, 2)}


def test_default_neighbours_is_logarithmic_and_even() -> None:
    assert [default_neighbours(n) for n in (1, 2, 5, 9, 10, 50, 100, 1000)] == [
        None,
        None,
        None,
        None,
        8,
        12,
        14,
        20,
    ]
    for n in (10, 100, 1000):
        k = default_neighbours(n)
        assert k is not None and k % 2 == 0 and _config(n, k).sparse


def test_large_k_falls_back_to_complete_graph() -> None:
    cfg = _config(6, 6)
    assert not cfg.sparse and cfg.neighbourhood_size == 6 and cfg.t == 4
    assert cfg.neighbours_of("n00") == set(cfg.participants) - {"n00"}


@pytest.mark.parametrize(("k", "t"), [(3, None), (0, None), (8, 10), (8, 1)])
def test_neighbour_parameters_validated(k: int, t: int | None) -> None:
    with pytest.raises(InvalidSpec):
        _config(30, k, t=t)


def test_thirty_nodes_with_dropouts_at_every_phase() -> None:
    cfg = _config(30, 8)
    assert cfg.guaranteed_dropout_tolerance == 4
    inputs = _inputs(cfg, 1)
    drop = {
        "n03": Phase.ADVERTISE_KEYS,
        "n11": Phase.SHARE_KEYS,
        "n17": Phase.MASKED_INPUT,
        "n21": Phase.CONSISTENCY,
        "n25": Phase.UNMASK,
    }
    share_msgs: dict[str, int] = {}

    def observe(node: str, raw: bytes) -> None:
        if raw[4] == ShareKeys.TYPE:
            share_msgs[node] = len(ShareKeys.decode(raw).ciphertexts)

    out = run_local_session(cfg, inputs, drop=drop, observe=observe)
    u3 = [u for u in cfg.participants if u not in drop or drop[u] >= Phase.CONSISTENCY]
    assert "n21" in u3 and "n25" in u3
    np.testing.assert_array_equal(out, fp.sum_mod(inputs[u] for u in u3))
    # Each node exchanged shares with its <= 8 neighbours only, not with 29 peers.
    assert share_msgs and max(share_msgs.values()) <= 8 and min(share_msgs.values()) >= 7


def test_worst_case_dropouts_within_guarantee() -> None:
    # k+1-t drop-outs all inside one neighbourhood, after sharing: still exact.
    cfg = _config(30, 8)
    inputs = _inputs(cfg, 2)
    victims = sorted(cfg.neighbours_of("n00"))[:4]
    drop = dict.fromkeys(victims, Phase.MASKED_INPUT)
    out = run_local_session(cfg, inputs, drop=drop)
    np.testing.assert_array_equal(out, fp.sum_mod(inputs[u] for u in cfg.participants if u not in drop))


def _predicted_ok(cfg: SecAggConfig, drop: dict[str, Phase]) -> bool:
    """The completion rule documented on SecAggConfig, computed independently of the server.

    U4 signed the survivor set (Round 3), U5 answered the unmasking request (Round 4); the
    secrets are rebuilt from U5's shares, and U5 is a subset of U4.
    """

    def alive(p: Phase) -> set[str]:
        return {u for u in cfg.participants if u not in drop or drop[u] > p}

    u1, u2, u3, u4, u5 = (
        alive(Phase.ADVERTISE_KEYS),
        alive(Phase.SHARE_KEYS),
        alive(Phase.MASKED_INPUT),
        alive(Phase.CONSISTENCY),
        alive(Phase.UNMASK),
    )
    t = cfg.t
    if min(len(u1), len(u2), len(u3), len(u4), len(u5)) < t:
        return False
    # Roster and share exchange happen within U1, so holders are H(u) ∩ U5 (U5 ⊆ U4 ⊆ U1).
    if any(len(cfg.holders_of(u) & u5) < t for u in u3):
        return False
    if any(len(cfg.neighbours_of(u) & u5) < t for u in u2 - u3 if cfg.neighbours_of(u) & u3):
        return False
    return cfg.is_connected(u3)


def test_random_dropouts_follow_the_documented_rule() -> None:
    cfg = _config(24, 6, t=3)  # guarantee: 4 drop-outs
    rng = random.Random(99)
    outcomes = {True: 0, False: 0}
    phases = [Phase.ADVERTISE_KEYS, Phase.SHARE_KEYS, Phase.MASKED_INPUT, Phase.CONSISTENCY, Phase.UNMASK]
    dropped_in = set()
    for trial in range(30):
        victims = rng.sample(list(cfg.participants), rng.randint(3, 10))
        drop = {u: rng.choice(phases) for u in victims}
        inputs = _inputs(cfg, trial)
        expected_ok = _predicted_ok(cfg, drop)
        try:
            out = run_local_session(cfg, inputs, drop=drop)
        except ProtocolAborted:
            assert not expected_ok, drop
            outcomes[False] += 1
        else:
            assert expected_ok, drop
            u3 = [u for u in cfg.participants if u not in drop or drop[u] >= Phase.CONSISTENCY]
            np.testing.assert_array_equal(out, fp.sum_mod(inputs[u] for u in u3))
            outcomes[True] += 1
            dropped_in |= set(drop.values())
    assert outcomes[True] and outcomes[False]  # both branches exercised
    assert dropped_in == set(phases)  # successful sessions lost nodes in every round


def _ring_cut_config() -> tuple[SecAggConfig, list[str]]:
    cfg = _config(8, 2, t=2)  # a plain ring: each node has 2 neighbours
    return cfg, _ring(cfg)


def test_disconnected_survivors_abort_instead_of_leaking_partial_sums() -> None:
    cfg, ring = _ring_cut_config()
    # Two non-adjacent ring nodes drop after sharing: every neighbourhood keeps >= t = 2,
    # but the survivors fall into two arcs whose separate sums the server could unmask.
    drop = {ring[0]: Phase.MASKED_INPUT, ring[4]: Phase.MASKED_INPUT}
    with pytest.raises(ProtocolAborted, match="disconnected") as exc:
        run_local_session(cfg, _inputs(cfg, 3), drop=drop)
    assert exc.value.extra["phase"] == "masked_input"
    # One drop-out (the guaranteed k+1-t = 1) leaves a connected path and succeeds.
    assert cfg.guaranteed_dropout_tolerance == 1
    drop = {ring[0]: Phase.MASKED_INPUT}
    inputs = _inputs(cfg, 4)
    out = run_local_session(cfg, inputs, drop=drop)
    np.testing.assert_array_equal(out, fp.sum_mod(inputs[u] for u in cfg.participants if u not in drop))


def test_client_refuses_disconnected_survivor_set() -> None:
    cfg, ring = _ring_cut_config()
    server = SecAggServer(cfg)
    clients = {u: SecAggClient(u, cfg) for u in cfg.participants}
    for u, c in clients.items():
        server.receive(u, c.advertise_keys())
    server.close_advertise_keys()
    for u, c in clients.items():
        server.receive(u, c.share_keys(server.roster_for(u)))
    server.close_share_keys()
    for u, c in clients.items():
        c.masked_input(np.zeros(M, np.uint64), server.shares_for(u))
    u3 = tuple(u for u in ring if u not in (ring[0], ring[4]))
    with pytest.raises(ProtocolAborted, match="disconnected") as exc:
        clients[ring[2]].consistency_check(ConsistencyCheck(cfg.session_id, u3))
    assert exc.value.extra["phase"] == "consistency"
    assert clients[ring[2]].phase is Phase.ABORTED


def test_neighbourhood_below_threshold_aborts_naming_the_node() -> None:
    cfg = _config(12, 4, t=4)  # neighbourhoods of 5, tolerance 1
    u = "n05"
    two = sorted(cfg.neighbours_of(u))[:2]
    drop = dict.fromkeys(two, Phase.MASKED_INPUT)
    with pytest.raises(ProtocolAborted) as exc:
        run_local_session(cfg, _inputs(cfg, 5), drop=drop)
    assert exc.value.extra["phase"] == "masked_input"
    assert exc.value.extra["survivors"] < 4


def test_sparse_masked_inputs_still_hide_inputs() -> None:
    cfg = _config(12, 4)
    zeros = {u: np.zeros(M, np.uint64) for u in cfg.participants}
    ys: dict[str, np.ndarray] = {}

    def observe(node: str, raw: bytes) -> None:
        if raw[4] == MaskedInput.TYPE:
            ys[node] = MaskedInput.decode(raw).vector

    assert not run_local_session(cfg, zeros, observe=observe).any()
    assert len(ys) == 12 and all(np.all(y != 0) for y in ys.values())
