"""Paillier encrypted delivery on the node: sealed secure aggregation through ``TaskExecutor.handle``.

In-process executors play the nodes and ``SecAggServer(revealed=...)`` plus the Paillier ring
helpers play the gateway, exactly as over gRPC minus the transport (issue #11, item 7).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_node_tasks import BASIS, SEED, Node, _expected_noisy, _node, _plan, _sigmas, _sum

from xdp_compute.contract import (
    HeQueryBegin,
    HeQueryBegun,
    HeQueryMaskedInput,
    HeQueryMaskedReply,
    SecAggConsistency,
    SecAggMaskedInput,
    SecAggSession,
    SecAggShareKeys,
    SecAggUnmask,
    encode,
)
from xdp_compute.crypto.secagg import MaskedInput, Phase, SecAggConfig, SecAggServer
from xdp_compute.query.plan import from_ring
from xdp_compute.query.sealed import cell_slots, revealed_slots

P = pytest.importorskip("xdp_compute.crypto.paillier")


@pytest.fixture(scope="module")
def keys() -> tuple[P.PaillierPublic, P.PaillierPrivate]:
    return P.generate_keypair(2048)


@pytest.fixture
def nodes(tmp_path: Path) -> list[Node]:
    out = [_node(tmp_path, f"h{i}", 60 + 20 * i, seed=i) for i in range(3)]
    yield out
    for n in out:
        n.executor.close()  # the obfuscator pools' background processes


def _begin(node: Node, public: P.PaillierPublic, session: SecAggSession,
           scheme: P.PackingScheme | None = None) -> HeQueryBegin:
    plan = _plan(node)
    return HeQueryBegin(plan=plan.to_dict(), sigma_node2=_sigmas(plan), public_key=public.to_dict(),
                        scheme=(scheme or P.ring_scheme(public.bits)).to_dict(), secagg=session,
                        noise_basis=BASIS)


def _sealed_rounds(nodes: list[Node], public: P.PaillierPublic, *, drop_before_masking: tuple[str, ...] = ()
                   ) -> tuple[SecAggServer, dict[str, P.EncryptedVector], list[str]]:
    """Rounds 0, 1, 2 (sealed), 3 and 4; returns the closed server, U3's ciphertexts and U3."""
    ids = [n.executor.node_id for n in nodes]
    by_id = {n.executor.node_id: n for n in nodes}
    plan = _plan(nodes[0])
    sid = "job-1:sealed"
    config = SecAggConfig(session_id=sid, participants=ids, vector_length=plan.vector_length, threshold=2)
    session = SecAggSession(session_id=sid, participants=ids, vector_length=plan.vector_length, threshold=2)
    server = SecAggServer(config, revealed=revealed_slots(plan))
    for u in ids:  # Round 0
        reply = by_id[u].ask(_begin(by_id[u], public, session))
        assert isinstance(reply, HeQueryBegun)
        server.receive(u, reply.secagg)
    server.close_advertise_keys()
    for u in server.survivors(Phase.ADVERTISE_KEYS):  # Round 1
        reply = by_id[u].ask(SecAggShareKeys(session_id=sid, secagg=server.roster_for(u).encode()))
        server.receive(u, reply.secagg)  # type: ignore[attr-defined]
    server.close_share_keys()
    cts = {}
    for u in server.survivors(Phase.SHARE_KEYS):  # Round 2, sealed
        if u in drop_before_masking:
            continue
        reply = by_id[u].ask(HeQueryMaskedInput(session_id=sid, secagg=server.shares_for(u).encode()))
        assert isinstance(reply, HeQueryMaskedReply)
        # In the clear: only the COUNT(*) slot of each cell.
        assert MaskedInput.decode(reply.secagg).vector.shape == (len(plan.cells),)
        server.receive(u, reply.secagg)
        cts[u] = P.EncryptedVector.from_bytes(reply.ciphertext, public, max_bytes=1 << 20)
    check = server.close_masked_input()
    u3 = list(server.survivors(Phase.MASKED_INPUT))
    for u in u3:  # Round 3: the same consistency check as a plain session
        reply = by_id[u].ask(SecAggConsistency(session_id=sid, secagg=check.encode()))
        server.receive(u, reply.secagg)  # type: ignore[attr-defined]
    request = server.close_consistency()
    assert server.survivors(Phase.CONSISTENCY) == tuple(u3)
    for u in u3:  # Round 4
        reply = by_id[u].ask(SecAggUnmask(session_id=sid, secagg=request.encode()))
        server.receive(u, reply.secagg)  # type: ignore[attr-defined]
    return server, cts, u3


def test_sealed_sum_decrypts_to_the_sum_of_noisy_vectors_and_reveals_only_counts(
        nodes: list[Node], keys: tuple[P.PaillierPublic, P.PaillierPrivate], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDP_TEST_NOISE_SEED", SEED)
    public, private = keys
    server, cts, u3 = _sealed_rounds(nodes, public)
    revealed = server.close_unmask()
    plan = _plan(nodes[0])
    expected = _sum([_expected_noisy(n, plan, 0) for n in nodes])
    # The gateway's plaintext: the noisy COUNT(*) total per cell, nothing else.
    assert revealed.tolist() == [int(expected[i]) for i in revealed_slots(plan)]
    total = P.unmask_sealed_sum(public, P.aggregate_encrypted(public, [cts[u] for u in u3]), server.mask_total)
    assert P.decrypt_ring_sum(private, total) == [int(x) for x in expected]


def test_one_nodes_ciphertext_decrypts_to_uniform_words_even_with_the_gateways_masks(
        nodes: list[Node], keys: tuple[P.PaillierPublic, P.PaillierPrivate], monkeypatch: pytest.MonkeyPatch) -> None:
    """The attack of issue #11 item 7 at unit level: the gateway forwards one node's ciphertext."""
    monkeypatch.setenv("XDP_TEST_NOISE_SEED", SEED)
    public, private = keys
    server, cts, u3 = _sealed_rounds(nodes, public)
    server.close_unmask()
    plan = _plan(nodes[0])
    for k, u in enumerate(u3):
        words = P.decrypt_ring_sum(private, cts[u])
        partial = [int(x) for x in _expected_noisy(nodes[k], plan, 0)]
        with_masks = [(w - int(m)) % (1 << 64) for w, m in zip(words, server.mask_total, strict=True)]
        for view in (words, with_masks):
            # Far from the partial in every word (a uniform word is within 2^32 of it w.p. 2^-31).
            assert all(abs(from_ring((w - x) % (1 << 64))) > 1 << 32 for w, x in zip(view, partial, strict=True))


def test_a_node_dropping_before_masking_leaves_the_sealed_sum_of_the_survivors(
        nodes: list[Node], keys: tuple[P.PaillierPublic, P.PaillierPrivate], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDP_TEST_NOISE_SEED", SEED)
    public, private = keys
    dropped = nodes[1].executor.node_id
    server, cts, u3 = _sealed_rounds(nodes, public, drop_before_masking=(dropped,))
    server.close_unmask()
    assert dropped not in u3 and len(u3) == 2
    plan = _plan(nodes[0])
    expected = _sum([_expected_noisy(n, plan, 0) for n in nodes if n.executor.node_id != dropped])
    total = P.unmask_sealed_sum(public, P.aggregate_encrypted(public, [cts[u] for u in u3]), server.mask_total)
    assert P.decrypt_ring_sum(private, total) == [int(x) for x in expected]


def test_blanked_cells_decrypt_to_uniform_values_and_the_rest_to_the_sum(
        nodes: list[Node], keys: tuple[P.PaillierPublic, P.PaillierPrivate], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDP_TEST_NOISE_SEED", SEED)
    public, private = keys
    server, cts, u3 = _sealed_rounds(nodes, public)
    server.close_unmask()
    plan = _plan(nodes[0])
    expected = [int(x) for x in _sum([_expected_noisy(n, plan, 0) for n in nodes])]
    blank = cell_slots(plan, [0])
    total = P.unmask_sealed_sum(public, P.aggregate_encrypted(public, [cts[u] for u in u3]), server.mask_total,
                                blank)
    got = P.decrypt_ring_sum(private, total)
    for i, (g, e) in enumerate(zip(got, expected, strict=True)):
        if i in blank:
            assert abs(from_ring((g - e) % (1 << 64))) > 1 << 32
        else:
            assert g == e


def test_a_sealed_session_never_sends_its_masked_input_in_the_clear(
        nodes: list[Node], keys: tuple[P.PaillierPublic, P.PaillierPrivate]) -> None:
    public, _ = keys
    node = nodes[0]
    plan = _plan(node)
    ids = [n.executor.node_id for n in nodes]
    session = SecAggSession(session_id="s", participants=ids, vector_length=plan.vector_length, threshold=2)
    node.ask(_begin(node, public, session))
    # A gateway asking for the plain Round 2 of a sealed session is refused before any share is read.
    header, blobs = encode(SecAggMaskedInput(session_id="s", secagg=b"shares"))
    out = node.executor.handle("secagg_masked_input", "job-1", header, blobs)
    assert not out.ok and "sealed" in out.error


@pytest.mark.parametrize("scheme_args, words", [((62, 128), "value_bits"), ((64, 3), "contributions")])
def test_a_packing_that_cannot_hold_ring_values_is_refused(
        nodes: list[Node], keys: tuple[P.PaillierPublic, P.PaillierPrivate], scheme_args: tuple[int, int],
        words: str) -> None:
    public, _ = keys
    node = nodes[0]
    plan = _plan(node)
    ids = [n.executor.node_id for n in nodes]
    session = SecAggSession(session_id="s", participants=ids, vector_length=plan.vector_length, threshold=2)
    header, blobs = encode(_begin(node, public, session, P.PackingScheme(public.bits, *scheme_args)))
    out = node.executor.handle("he_query_begin", "job-1", header, blobs)
    assert not out.ok and words in out.error


def test_the_round_2_copy_of_the_masked_input_is_not_kept(
        nodes: list[Node], keys: tuple[P.PaillierPublic, P.PaillierPrivate]) -> None:
    public, _ = keys
    _, cts, u3 = _sealed_rounds(nodes, public)
    assert all(len(n.executor.he._sealed) == 0 for n in nodes)
    assert np.all([cts[u].n_contributions == 1 for u in u3])
