"""CKKS encrypted scoring end to end: SDK encrypts w, nodes score, gateway adds, SDK decrypts."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from xdp_compute.crypto import ckks as C
from xdp_compute.errors import Conflict, InvalidCiphertext, InvalidKey, InvalidSpec, WrongKey


@pytest.fixture(scope="module")
def sctx() -> C.ScoringContext:
    return C.make_scoring_context(12, 20)


def _score(
    sctx: C.ScoringContext, enc: bytes, F: np.ndarray, noise: np.ndarray | None = None, flood: float = 0.0
) -> bytes:
    noise = np.zeros(F.shape[0]) if noise is None else noise
    return C.score_partial(sctx.public_bytes, enc, F, noise, flood, sandbox=False)


def test_public_context_is_public_with_only_the_needed_galois_keys(sctx: C.ScoringContext) -> None:
    info = C.validate_public_context(sctx.public_bytes, sandbox=False)
    assert info.poly_modulus_degree == 8192
    assert info.coeff_mod_bit_sizes == (60, 40, 60) and info.total_coeff_bits <= 218
    assert info.scale_bits == 40
    assert info.n_galois_keys == len(sctx.plan.galois_elements()) > 0
    assert not info.has_relin_keys
    assert info.fingerprint == sctx.fingerprint


@pytest.mark.parametrize(
    ("d", "max_groups", "groups"), [(12, 20, 20), (12, 20, 7), (300, 3, 3), (2, 600, 600)]
)
def test_scores_match_plaintext_with_noise_off(d: int, max_groups: int, groups: int) -> None:
    rng = np.random.default_rng(d + groups)
    ctx = C.make_scoring_context(d, max_groups)
    w = rng.uniform(-2, 2, d)
    F = rng.uniform(-50, 50, (groups, d))
    out = _score(ctx, C.encrypt_weights(ctx, w), F)
    np.testing.assert_allclose(C.decrypt_scores(ctx, out, groups), F @ w, atol=1e-3)


def test_bias_is_a_weight_on_the_row_count_column(sctx: C.ScoringContext) -> None:
    rng = np.random.default_rng(5)
    rows = rng.uniform(0, 1, (200, 11))
    groups = rng.integers(0, 20, 200)
    w, bias = rng.normal(size=11), 0.75
    F = np.zeros((20, 12))
    for g in range(20):
        members = rows[groups == g]
        F[g, :11] = members.sum(axis=0)
        F[g, 11] = len(members)  # the constant-1 feature: its sum is the row count
    out = _score(sctx, C.encrypt_weights(sctx, np.append(w, bias)), F)
    expected = np.array([(rows[groups == g] @ w + bias).sum() for g in range(20)])
    np.testing.assert_allclose(C.decrypt_scores(sctx, out, 20), expected, atol=1e-3)


def test_dp_noise_is_added_per_group(sctx: C.ScoringContext) -> None:
    rng = np.random.default_rng(6)
    w, F = rng.normal(size=12), rng.normal(size=(20, 12))
    noise = rng.integers(-1000, 1000, 20).astype(float)
    out = _score(sctx, C.encrypt_weights(sctx, w), F, noise)
    np.testing.assert_allclose(C.decrypt_scores(sctx, out, 20), F @ w + noise, atol=1e-3)


def test_flooding_noise_is_present_and_bounded(sctx: C.ScoringContext) -> None:
    rng = np.random.default_rng(7)
    w, F = rng.normal(size=12), rng.normal(size=(20, 12))
    out = _score(sctx, C.encrypt_weights(sctx, w), F, flood=1.0)
    deviation = C.decrypt_scores(sctx, out, 20) - F @ w
    # N(0, 1) per group: 20 draws all within 1e-3 of 0 has probability < 1e-56; one beyond 7
    # has probability < 1e-10.
    assert np.max(np.abs(deviation)) > 1e-3
    assert np.max(np.abs(deviation)) < 7.0
    assert C.scores_header(out)["flood_variance"] == 1.0


def test_large_scores_are_scaled_into_range() -> None:
    rng = np.random.default_rng(8)
    ctx = C.make_scoring_context(4, 3)
    w = rng.uniform(500, 1000, 4)
    F = rng.uniform(1e4, 2e4, (3, 4))  # scores ~ 5e7, far above the 2^17 slot bound
    enc = C.encrypt_weights(ctx, w, score_bound=1e8)
    out = _score(ctx, enc, F)
    np.testing.assert_allclose(C.decrypt_scores(ctx, out, 3), F @ w, rtol=1e-7)


def test_three_nodes_through_the_sandboxed_gateway(sctx: C.ScoringContext) -> None:
    rng = np.random.default_rng(9)
    w = rng.normal(size=12)
    enc = C.encrypt_weights(sctx, w)
    parts = [rng.normal(size=(20, 12)) * 10 for _ in range(3)]
    outs = [C.score_partial(sctx.public_bytes, enc, F, np.zeros(20), 0.0) for F in parts[:1]]
    outs += [_score(sctx, enc, F) for F in parts[1:]]
    total = C.add_ciphertexts(sctx.public_bytes, outs)
    header = C.scores_header(total)
    assert header["n_contributions"] == 3 and header["n_groups"] == 20
    np.testing.assert_allclose(C.decrypt_scores(sctx, total, 20), sum(F @ w for F in parts), atol=1e-3)


def test_results_are_bound_to_their_context(sctx: C.ScoringContext) -> None:
    other = C.make_scoring_context(12, 20)
    rng = np.random.default_rng(10)
    out = _score(sctx, C.encrypt_weights(sctx, rng.normal(size=12)), rng.normal(size=(20, 12)))
    with pytest.raises(WrongKey):
        C.decrypt_scores(other, out, 20)
    with pytest.raises(InvalidCiphertext, match="another CKKS context"):
        C.score_partial(
            other.public_bytes, C.encrypt_weights(sctx, np.ones(12)), np.ones((2, 12)), np.zeros(2), 0.0
        )
    with pytest.raises(InvalidCiphertext, match="another CKKS context"):
        C.add_ciphertexts(other.public_bytes, [out])
    with pytest.raises(InvalidCiphertext, match="20 groups"):
        C.decrypt_scores(sctx, out, 19)


def test_node_input_validation(sctx: C.ScoringContext) -> None:
    enc = C.encrypt_weights(sctx, np.ones(12))
    with pytest.raises(InvalidSpec):
        C.encrypt_weights(sctx, np.ones(11))
    with pytest.raises(InvalidSpec):
        C.encrypt_weights(sctx, [np.nan] * 12)
    with pytest.raises(InvalidSpec, match="G x 12"):
        _score(sctx, enc, np.ones((3, 11)))
    with pytest.raises(InvalidSpec, match="allows"):
        _score(sctx, enc, np.ones((21, 12)))
    with pytest.raises(InvalidSpec, match="one value per group"):
        _score(sctx, enc, np.ones((3, 12)), np.zeros(4))
    with pytest.raises(InvalidSpec, match="finite"):
        _score(sctx, enc, np.full((3, 12), np.inf))
    with pytest.raises(InvalidSpec):
        _score(sctx, enc, np.ones((3, 12)), flood=-1.0)


def test_context_without_the_plan_keys_is_rejected() -> None:
    ctx = C.make_scoring_context(12, 20)
    bare = bytes(
        ctx.context.serialize(
            save_public_key=True, save_secret_key=False, save_galois_keys=False, save_relin_keys=False
        )
    )
    stripped = C.ScoringContext(ctx.context, ctx.plan, bare)
    enc = C.encrypt_weights(stripped, np.ones(12))
    with pytest.raises(C.InvalidHeContext, match="Galois"):
        C.score_partial(bare, enc, np.ones((2, 12)), np.zeros(2), 0.0, sandbox=False)


def test_scoring_context_file_round_trip_and_permissions(tmp_path, sctx: C.ScoringContext) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "bank.ckks"
    C.save_scoring_context(path, sctx)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    loaded = C.load_scoring_context(path)
    assert loaded.fingerprint == sctx.fingerprint and loaded.plan == sctx.plan
    rng = np.random.default_rng(11)
    w, F = rng.normal(size=12), rng.normal(size=(20, 12))
    out = _score(sctx, C.encrypt_weights(sctx, w), F)
    np.testing.assert_allclose(C.decrypt_scores(loaded, out, 20), F @ w, atol=1e-3)
    with pytest.raises(Conflict):
        C.save_scoring_context(path, sctx)
    os.chmod(path, 0o644)
    with pytest.raises(InvalidKey, match="readable by group or others"):
        C.load_scoring_context(path)
