"""SecAgg+ at scale (issue #13 goal 4): per-node work bounded by the neighbourhood, same guarantees.

A node reads its neighbourhood off the ring without building the whole graph, checks U3's
connectivity from ring gaps instead of a graph search, and gets in Round 4 only its share
holders' signatures; shares sit at x = 1..h in each owner's window, so the server interpolates
from binomial weights. Each test pins one of these to the slow, obvious version, and the attack
test shows that what a node signs still binds it to the whole survivor set.
"""

from __future__ import annotations

import random
import secrets
from collections import deque
from pathlib import Path

import numpy as np
import pytest

from xdp_compute.crypto import shamir
from xdp_compute.crypto.pki import PkiPaths, init_pki, issue_node_certificate
from xdp_compute.crypto.secagg import (
    ConsistencyCheck,
    MalformedMessage,
    NodeSigner,
    PeerVerifier,
    Phase,
    SecAggClient,
    SecAggConfig,
    SecAggServer,
    UnmaskRequest,
    run_local_session,
)
from xdp_compute.crypto.secagg.server import interpolate_secret
from xdp_compute.errors import ProtocolAborted

M = 8
N_CERTIFIED = 16


def _config(n: int, k: int | None, t: int | None = None, session: str = "job-13/round-0") -> SecAggConfig:
    return SecAggConfig(session_id=session, participants=[f"n{i}" for i in range(n)], vector_length=M,
                        threshold=t, neighbours=k)


def _bfs_connected(cfg: SecAggConfig, nodes: set[str]) -> bool:
    """The old whole-graph breadth-first check, over neighbours_of."""
    if not nodes:
        return False
    start = next(iter(nodes))
    seen, todo = {start}, deque([start])
    while todo:
        for v in cfg.neighbours_of(todo.popleft()):
            if v in nodes and v not in seen:
                seen.add(v)
                todo.append(v)
    return seen == nodes


@pytest.mark.parametrize(("n", "k"), [(12, 2), (20, 4), (40, 6), (41, 10), (30, None)])
def test_ring_gap_connectivity_matches_a_graph_search(n: int, k: int | None) -> None:
    cfg = _config(n, k)
    rng = random.Random(n * 100 + (k or 0))
    disconnected = 0
    for _ in range(400):
        keep = {u for u in cfg.participants if rng.random() < rng.choice((0.3, 0.6, 0.9))}
        want = _bfs_connected(cfg, keep)
        assert cfg.is_connected(keep) == want, sorted(keep)
        disconnected += not want
    if cfg.sparse:
        assert disconnected > 0  # the draw exercised both answers
    assert not cfg.is_connected([])


def test_a_node_derives_only_its_own_neighbourhood() -> None:
    """A node's own config touches its own neighbourhood, not the other n-1 (it was the whole graph)."""
    base = _config(60, 8)
    inputs = {u: np.full(M, i, dtype=np.uint64) for i, u in enumerate(base.participants)}
    server = SecAggServer(base)
    own = {u: _config(60, 8) for u in base.participants}
    clients = {u: SecAggClient(u, own[u]) for u in base.participants}
    for u, c in clients.items():
        server.receive(u, c.advertise_keys().encode())
    server.close_advertise_keys()
    for u, c in clients.items():
        server.receive(u, c.share_keys(server.roster_for(u).encode()).encode())
    server.close_share_keys()
    for u, c in clients.items():
        server.receive(u, c.masked_input(inputs[u], server.shares_for(u).encode()).encode())
    check = server.close_masked_input().encode()
    for u, c in clients.items():
        server.receive(u, c.consistency_check(check).encode())
    server.close_consistency()
    for u, c in clients.items():
        server.receive(u, c.unmask(server.unmask_request_for(u).encode()).encode())
    np.testing.assert_array_equal(server.close_unmask(), sum(inputs.values(), start=np.zeros(M, dtype=np.uint64)))
    for u, cfg in own.items():
        assert set(cfg._neighbour_cache) == {u}, u  # one neighbourhood read off the ring per node


def test_every_secret_is_shared_over_one_window_of_x_coordinates() -> None:
    for cfg in (_config(30, 8), _config(9, None)):
        h = cfg.neighbourhood_size
        for owner in cfg.participants:
            xs = [cfg.share_x(owner, v) for v in cfg.holders_of(owner)]
            assert sorted(xs) == list(range(1, h + 1))
        if cfg.sparse:
            assert {cfg.share_x(u, u) for u in cfg.participants} == {h // 2 + 1}
            owner = cfg.participants[0]
            stranger = next(v for v in cfg.participants if v not in cfg.holders_of(owner))
            with pytest.raises(MalformedMessage, match="holds no share"):
                cfg.share_x(owner, stranger)


@pytest.mark.parametrize(("h", "t"), [(3, 2), (9, 5), (45, 39), (141, 116)])
def test_window_interpolation_agrees_with_generic_shamir(h: int, t: int) -> None:
    rng = random.Random(h)
    for _ in range(5):
        secret = secrets.token_bytes(32)
        shares = shamir.split_secret(secret, t, h, xs=list(range(1, h + 1)))
        for size in (t, rng.randint(t, h), h):
            picked = rng.sample(shares, size)
            points = {s.x: s.y for s in picked}
            assert interpolate_secret(points, h, t, 32) == secret
            assert shamir.reconstruct_secret(picked, t, secret_len=32) == secret
    points = {s.x: s.y for s in shares[: t - 1]}
    with pytest.raises(shamir.InvalidShare, match=f"need {t} shares"):
        interpolate_secret(points, h, t, 32)
    bad = {s.x: s.y for s in shares}
    # A garbage share (random lanes; a small offset goes unseen): caught but with probability < 2^-84.
    bad[shares[0].x] = shamir.Share.of(1, [secrets.randbelow(shamir.PRIME) for _ in range(shamir.LANES)]).y
    with pytest.raises(shamir.InvalidShare, match="not a valid secret"):
        interpolate_secret(bad, h, t, 32)
    with pytest.raises(shamir.InvalidShare, match="outside"):
        interpolate_secret({h + 1: shares[0].y, **{s.x: s.y for s in shares[:t]}}, h, t, 32)


def test_sessions_with_dropouts_sum_correctly_in_both_graphs() -> None:
    for cfg, drop in ((_config(40, 10), {"n3": Phase.SHARE_KEYS, "n7": Phase.MASKED_INPUT, "n9": Phase.UNMASK}),
                      (_config(7, None, t=4), {"n1": Phase.MASKED_INPUT, "n5": Phase.UNMASK})):
        rng = np.random.default_rng(cfg.n)
        inputs = {u: rng.integers(0, 2**64, M, dtype=np.uint64) for u in cfg.participants}
        total = run_local_session(cfg, inputs, drop=drop)
        in_sum = [u for u in cfg.participants if u not in drop or drop[u] >= Phase.CONSISTENCY]
        np.testing.assert_array_equal(total, sum((inputs[u] for u in in_sum), start=np.zeros(M, dtype=np.uint64)))


# --------------------------------------------------------------------- authenticated SecAgg+
@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PkiPaths:
    root = tmp_path_factory.mktemp("pki")
    paths = init_pki(root)
    for i in range(N_CERTIFIED):
        issue_node_certificate(root, f"n{i}", holder=f"holder-{i}")
    return paths


def _signer(pki: PkiPaths, node: str) -> NodeSigner:
    return NodeSigner.from_pem(pki.node_cert(node).read_bytes(), pki.node_key(node).read_bytes())


def _verifier(pki: PkiPaths) -> PeerVerifier:
    return PeerVerifier.from_pem(Path(pki.ca_cert).read_bytes())


def test_an_authenticated_sparse_session_gets_only_holders_signatures(pki: PkiPaths) -> None:
    cfg = _config(N_CERTIFIED, 6, t=5)
    signers = {u: _signer(pki, u) for u in cfg.participants}
    inputs = {u: np.full(M, i + 1, dtype=np.uint64) for i, u in enumerate(cfg.participants)}
    drop = {"n2": Phase.MASKED_INPUT, "n11": Phase.CONSISTENCY}
    total = run_local_session(cfg, inputs, drop=drop, signers=signers, verifier=_verifier(pki))
    np.testing.assert_array_equal(total, sum((inputs[u] for u in cfg.participants if u != "n2"),
                                             start=np.zeros(M, dtype=np.uint64)))
    # The per-node request: U3 and the signatures of the node's own holders that signed, no more.
    server, clients = _to_round_3(pki, cfg)
    check = server.close_masked_input()
    for u, c in clients.items():
        server.receive(u, c.consistency_check(check))
    server.close_consistency()
    for u in cfg.participants:
        req = server.unmask_request_for(u)
        assert set(req.signatures) == cfg.holders_of(u)
        assert req.survivors == check.survivors
    assert set(server.unmask_request().signatures) == set(cfg.participants)


def _to_round_3(pki: PkiPaths, cfg: SecAggConfig) -> tuple[SecAggServer, dict[str, SecAggClient]]:
    clients = {u: SecAggClient(u, cfg, signer=_signer(pki, u), verifier=_verifier(pki)) for u in cfg.participants}
    server = SecAggServer(cfg)
    for u, c in clients.items():
        server.receive(u, c.advertise_keys())
    server.close_advertise_keys()
    for u, c in clients.items():
        server.receive(u, c.share_keys(server.roster_for(u)))
    server.close_share_keys()
    for u, c in clients.items():
        server.receive(u, c.masked_input(np.zeros(M, dtype=np.uint64), server.shares_for(u)))
    return server, clients


def test_survivor_sets_that_differ_outside_both_neighbourhoods_are_detected(pki: PkiPaths) -> None:
    """The gateway tells two neighbours a and b survivor sets that agree on everything either
    of them deals with (their neighbourhoods' parts are equal) and differ only at a node x far
    from both. Had a node signed only its own part of U3, b's signature would verify for a and
    both sets would pass; a signs the whole set, so b's signature over the other set does not
    verify, and without it a lacks t signers over its own set: it reveals nothing."""
    cfg = _config(N_CERTIFIED, 6, t=5)
    ring, _ = cfg._ring
    a, b = ring[0], ring[1]
    x = ring[len(ring) // 2]
    assert x not in cfg.holders_of(a) | cfg.holders_of(b)
    whole = tuple(cfg.participants)
    without_x = tuple(u for u in whole if u != x)
    local = cfg.holders_of(a) | cfg.holders_of(b)
    assert set(whole) & local == set(without_x) & local  # the parts a and b deal with agree

    server, clients = _to_round_3(pki, cfg)
    server.close_masked_input()
    # a and the rest of its holders on a's side are told `whole`; b and its side are told `without_x`.
    side_b = {ring[i % len(ring)] for i in range(1, 5)}  # b and the next three on the ring
    told = {u: (without_x if u in side_b else whole) for u in cfg.holders_of(a)}
    sigs = {u: clients[u].consistency_check(ConsistencyCheck(cfg.session_id, s)).signature for u, s in told.items()}
    assert len({told[u] for u in told}) == 2
    # Forwarding every holder's signature as if all were over `whole`: those from b's side do not verify.
    with pytest.raises(ProtocolAborted, match="over the survivor set does not verify") as exc:
        clients[a].unmask(UnmaskRequest(cfg.session_id, whole, sigs))
    assert any(f"signature of '{v}'" in exc.value.detail for v in side_b)

    server, clients = _to_round_3(pki, cfg)
    server.close_masked_input()
    sigs = {u: clients[u].consistency_check(ConsistencyCheck(cfg.session_id, s)).signature for u, s in told.items()}
    # Forwarding only the signatures over `whole`: fewer than t of a's holders signed it.
    over_whole = {u: sig for u, sig in sigs.items() if told[u] == whole}
    assert len(over_whole) < cfg.t
    with pytest.raises(ProtocolAborted, match=f"{len(over_whole)} of {a}'s share holders signed"):
        clients[a].unmask(UnmaskRequest(cfg.session_id, whole, over_whole))
    # b, told the other set, refuses a request naming `whole` outright.
    with pytest.raises(ProtocolAborted, match="another survivor set"):
        clients[b].unmask(UnmaskRequest(cfg.session_id, whole, over_whole))
