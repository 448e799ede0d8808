"""Sealed secure aggregation: SecAggServer with revealed coordinates, and masked ring vectors under Paillier."""

from __future__ import annotations

import numpy as np
import pytest

from xdp_compute.crypto.secagg import (
    MaskedInput,
    Phase,
    RoundConflict,
    SecAggClient,
    SecAggConfig,
    SecAggServer,
)
from xdp_compute.errors import InvalidSpec

P = pytest.importorskip("xdp_compute.crypto.paillier")
RING = 1 << 64


@pytest.fixture(scope="module")
def keys() -> tuple[P.PaillierPublic, P.PaillierPrivate]:
    return P.generate_keypair(2048)


def _sealed_session(inputs: dict[str, np.ndarray], revealed: tuple[int, ...], drop: str | None = None
                    ) -> tuple[SecAggServer, dict[str, np.ndarray]]:
    """Run the five rounds with clients in process; return the server and U3's full masked inputs."""
    ids = list(inputs)
    m = len(next(iter(inputs.values())))
    config = SecAggConfig(session_id="s", participants=ids, vector_length=m, threshold=2)
    server = SecAggServer(config, revealed=revealed)
    clients = {u: SecAggClient(u, config) for u in ids}
    for u in ids:
        server.receive(u, clients[u].advertise_keys().encode())
    server.close_advertise_keys()
    for u in ids:
        server.receive(u, clients[u].share_keys(server.roster_for(u)).encode())
    server.close_share_keys()
    masked = {}
    for u in ids:
        if u == drop:
            continue
        y = clients[u].masked_input(inputs[u], server.shares_for(u))
        masked[u] = y.vector
        server.receive(u, MaskedInput(y.session_id, u, y.vector[list(revealed)]).encode())
    check = server.close_masked_input()
    for u in server.survivors(Phase.MASKED_INPUT):
        server.receive(u, clients[u].consistency_check(check).encode())
    request = server.close_consistency()
    for u in server.survivors(Phase.CONSISTENCY):
        server.receive(u, clients[u].unmask(request).encode())
    with pytest.raises(RoundConflict):
        _ = server.mask_total  # not before the unmasking round closes
    return server, masked


def _inputs(seed: int, n: int = 3, m: int = 6) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    # Signed small values in two's complement, as noisy partials are.
    return {f"n{i}": rng.integers(-1000, 1000, m).astype(np.uint64) for i in range(n)}


@pytest.mark.parametrize("drop", [None, "n1"])
def test_revealed_coordinates_unmask_and_the_mask_total_unmasks_the_rest(drop: str | None) -> None:
    inputs = _inputs(1)
    server, masked = _sealed_session(inputs, (0, 3), drop)
    revealed = server.close_unmask()
    truth = sum((v for u, v in inputs.items() if u != drop), np.zeros(6, dtype=np.uint64))
    assert revealed.tolist() == [int(truth[0]), int(truth[3])]
    ys = sum(masked.values(), np.zeros(6, dtype=np.uint64))
    assert (ys - server.mask_total).tolist() == truth.tolist()


def test_a_sealed_server_refuses_a_full_masked_vector_and_has_no_mask_total_before_round_4() -> None:
    inputs = _inputs(2)
    ids = list(inputs)
    config = SecAggConfig(session_id="s", participants=ids, vector_length=6, threshold=2)
    server = SecAggServer(config, revealed=(1,))
    with pytest.raises(RoundConflict):
        _ = server.mask_total
    clients = {u: SecAggClient(u, config) for u in ids}
    for u in ids:
        server.receive(u, clients[u].advertise_keys().encode())
    server.close_advertise_keys()
    for u in ids:
        server.receive(u, clients[u].share_keys(server.roster_for(u)).encode())
    server.close_share_keys()
    y = clients["n0"].masked_input(inputs["n0"], server.shares_for("n0"))
    with pytest.raises(Exception, match="MaskedInput must hold 1"):
        server.receive("n0", y.encode())  # the whole y_u: a sealed server takes only its revealed words
    with pytest.raises(ValueError):
        SecAggServer(config, revealed=(6,))


def test_masked_ring_vectors_sum_under_paillier_and_single_ones_are_uniform(
        keys: tuple[P.PaillierPublic, P.PaillierPrivate]) -> None:
    public, private = keys
    scheme = P.ring_scheme(public.bits)
    inputs = _inputs(3)
    server, masked = _sealed_session(inputs, (0,))
    server.close_unmask()
    cts = [P.encrypt_masked(public, y, scheme) for y in masked.values()]
    truth = sum(inputs.values(), np.zeros(6, dtype=np.uint64))
    total = P.unmask_sealed_sum(public, P.aggregate_encrypted(public, cts), server.mask_total)
    assert total.n_contributions == 4
    assert P.decrypt_ring_sum(private, total) == [int(x) for x in truth]
    # One forwarded ciphertext: its masked words, not the node's input.
    for ct, x in zip(cts, inputs.values(), strict=True):
        words = P.decrypt_ring_sum(private, ct)
        assert all(min((w - int(v)) % RING, (int(v) - w) % RING) > 1 << 32 for w, v in zip(words, x, strict=True))
    # Blanking: those slots are uniform, the others exact; the plaintext integers stay below
    # (contributions) * 2^64, so nothing carries between slots.
    blanked = P.unmask_sealed_sum(public, P.aggregate_encrypted(public, cts), server.mask_total, [2, 5])
    got = P.decrypt_ring_sum(private, blanked)
    for i, (g, t) in enumerate(zip(got, truth, strict=True)):
        assert (g == int(t)) == (i not in (2, 5))
    raw = P.decrypt_aggregate(private, blanked)
    assert all(0 <= v < 4 * RING for v in raw)


def test_the_unmasking_correction_draws_no_obfuscator_and_keeps_the_survivors_randomness(
        keys: tuple[P.PaillierPublic, P.PaillierPrivate], monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue #13: the gateway's correction is g^c (obfuscator 1), not a fresh r^n. What hides
    the result from anyone without the key is the survivors' obfuscators: two runs over the same values (fresh node obfuscators) give different ciphertexts of the
    same sum."""
    from xdp_compute.crypto.paillier import vectors

    public, private = keys
    scheme = P.ring_scheme(public.bits)
    inputs = _inputs(5)
    server, masked = _sealed_session(inputs, (0,))
    server.close_unmask()
    truth = [int(x) for x in sum(inputs.values(), np.zeros(6, dtype=np.uint64))]
    runs = [P.aggregate_encrypted(public, [P.encrypt_masked(public, y, scheme) for y in masked.values()])
            for _ in range(2)]

    def no_obfuscator(*a: object, **k: object) -> None:
        raise AssertionError("the correction drew an obfuscator")

    monkeypatch.setattr(vectors, "obfuscator_batch", no_obfuscator)
    totals = [P.unmask_sealed_sum(public, r, server.mask_total) for r in runs]
    assert all(P.decrypt_ring_sum(private, t) == truth for t in totals)
    assert totals[0].ciphertexts != totals[1].ciphertexts  # the nodes' randomness, not the gateway's


def test_ring_packing_is_checked(keys: tuple[P.PaillierPublic, P.PaillierPrivate]) -> None:
    public, _ = keys
    with pytest.raises(InvalidSpec, match="value_bits"):
        P.check_ring_scheme(public, P.PackingScheme(public.bits, 62), 3)
    with pytest.raises(InvalidSpec, match="contributions"):
        P.check_ring_scheme(public, P.ring_scheme(public.bits, 3), 3)
    P.check_ring_scheme(public, P.ring_scheme(public.bits, 4), 3)
    with pytest.raises(InvalidSpec):
        P.encrypt_masked(public, np.zeros(3, dtype=np.int64), P.ring_scheme(public.bits))
    ct = P.encrypt_masked(public, np.zeros(3, dtype=np.uint64), P.ring_scheme(public.bits))
    with pytest.raises(InvalidSpec, match="mask total"):
        P.unmask_sealed_sum(public, ct, np.zeros(2, dtype=np.uint64))
