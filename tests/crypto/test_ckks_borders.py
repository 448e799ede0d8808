"""CKKS borders: every outside context and ciphertext is checked in a sandbox; bad input -> 4xx."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import tenseal as ts

from xdp_compute.crypto import ckks as C
from xdp_compute.crypto.ckks import sandbox
from xdp_compute.errors import BadRequest, InvalidCiphertext, PayloadTooLarge


@pytest.fixture(scope="module")
def sctx() -> C.ScoringContext:
    return C.make_scoring_context(6, 4)


@pytest.fixture(scope="module")
def weights(sctx: C.ScoringContext) -> bytes:
    return C.encrypt_weights(sctx, np.arange(6, dtype=float))


def test_sandboxed_validation_accepts_the_public_context(sctx: C.ScoringContext) -> None:
    info = C.validate_public_context(sctx.public_bytes)
    assert info.fingerprint == sctx.fingerprint
    assert info.poly_modulus_degree == 8192 and info.n_galois_keys == len(sctx.plan.galois_elements())


def test_context_with_secret_key_is_refused(sctx: C.ScoringContext) -> None:
    private = bytes(sctx.context.serialize(save_secret_key=True))
    with pytest.raises(C.UnsafeHeContext, match="secret key") as info:
        C.validate_public_context(private)
    assert isinstance(info.value, BadRequest) and info.value.status == 400


def test_weak_parameters_are_refused() -> None:
    weak = ts.context(ts.SCHEME_TYPE.CKKS, 4096, coeff_mod_bit_sizes=[40, 20, 40])
    weak.global_scale = 2.0**20
    data = bytes(weak.serialize(save_secret_key=False))
    with pytest.raises(C.UnsafeHeContext, match="degree 4096"):
        C.validate_public_context(data)


def test_oversized_payloads_are_refused_before_parsing(sctx: C.ScoringContext, weights: bytes) -> None:
    with pytest.raises(PayloadTooLarge) as info:
        C.validate_public_context(sctx.public_bytes, max_bytes=1024)
    assert info.value.status == 413
    with pytest.raises(PayloadTooLarge):
        C.score_partial(
            sctx.public_bytes, weights, np.ones((2, 6)), np.zeros(2), 0.0, max_ciphertext_bytes=1024
        )
    with pytest.raises(PayloadTooLarge):
        C.add_ciphertexts(sctx.public_bytes, [weights], max_ciphertext_bytes=1024)


def test_truncated_and_garbage_contexts_are_400(sctx: C.ScoringContext) -> None:
    for data in (sctx.public_bytes[: len(sctx.public_bytes) // 3], np.random.default_rng(1).bytes(50_000)):
        with pytest.raises(C.InvalidHeContext):
            C.validate_public_context(data)
    with pytest.raises(C.InvalidHeContext):
        C.validate_public_context(b"")


def test_truncated_ciphertexts_are_400_and_the_caller_survives(
    sctx: C.ScoringContext, weights: bytes
) -> None:
    F, noise = np.ones((4, 6)), np.zeros(4)
    with pytest.raises(InvalidCiphertext):
        C.score_partial(sctx.public_bytes, weights[: len(weights) - 777], F, noise, 0.0)
    with pytest.raises(InvalidCiphertext):
        C.score_partial(sctx.public_bytes, weights[:30], F, noise, 0.0)
    good = C.score_partial(sctx.public_bytes, weights, F, noise, 0.0)  # this process still works
    np.testing.assert_allclose(C.decrypt_scores(sctx, good, 4), F @ np.arange(6), atol=1e-3)
    with pytest.raises(InvalidCiphertext):
        C.add_ciphertexts(sctx.public_bytes, [good, good[:-4096]])
    # Zero the SEAL ciphertext header (just after the envelope header and the protobuf tags).
    start = 8 + int.from_bytes(good[4:8], "big") + 8
    corrupted = good[:start] + bytes(64) + good[start + 64 :]
    with pytest.raises(InvalidCiphertext):
        C.add_ciphertexts(sctx.public_bytes, [good, corrupted])
    with pytest.raises(InvalidCiphertext):
        C.add_ciphertexts(sctx.public_bytes, [weights])  # weights are not a score envelope


def _fake_worker(monkeypatch: pytest.MonkeyPatch, code: str) -> None:
    monkeypatch.setattr(sandbox, "_worker_command", lambda: [sys.executable, "-c", code])


@pytest.mark.parametrize(
    ("code", "match"),
    [
        ("import os; os.abort()", "crashed"),
        ("import ctypes; ctypes.string_at(0)", "crashed"),  # segmentation fault
        ("import sys; sys.stdout.write('garbage')", "no valid answer"),
    ],
    ids=["abort", "segfault", "garbage"],
)
def test_a_crashing_parser_becomes_a_400(
    monkeypatch: pytest.MonkeyPatch, sctx: C.ScoringContext, code: str, match: str
) -> None:
    _fake_worker(monkeypatch, code)
    with pytest.raises(C.HeSandboxFailure, match=match) as info:
        C.validate_public_context(sctx.public_bytes)
    assert info.value.status == 400


def test_a_hanging_parser_is_killed(monkeypatch: pytest.MonkeyPatch, sctx: C.ScoringContext) -> None:
    _fake_worker(monkeypatch, "import time; time.sleep(60)")
    with pytest.raises(C.HeSandboxFailure, match="did not finish"):
        C.validate_public_context(sctx.public_bytes, timeout=1.0)
