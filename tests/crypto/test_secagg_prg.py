"""AES-256-CTR mask PRG and HKDF seed derivation (crypto/prg.py)."""

from __future__ import annotations

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from xdp_compute.crypto import prg
from xdp_compute.errors import InvalidSpec

SEED_A = bytes(range(32))
SEED_B = bytes(range(1, 33))


def _reference(seed: bytes, m: int) -> np.ndarray:
    enc = Cipher(algorithms.AES(seed), modes.CTR(bytes(16))).encryptor()
    return np.frombuffer(enc.update(bytes(8 * m)) + enc.finalize(), dtype="<u8").astype(np.uint64)


@pytest.mark.parametrize("m", [0, 1, 2, 3, 1000, 65536, 65537, 2 * 65536 + 3])
def test_expand_is_the_aes_ctr_keystream(m: int) -> None:
    out = prg.expand(SEED_A, m, workers=1)
    assert out.dtype == np.uint64 and out.shape == (m,)
    np.testing.assert_array_equal(out, _reference(SEED_A, m))


@pytest.mark.parametrize("workers", [2, 3, 4])
def test_parallel_expansion_equals_serial(workers: int) -> None:
    m = 3 * 65536 + 11  # several chunks, odd length, uneven split
    np.testing.assert_array_equal(prg.expand(SEED_A, m, workers=workers), _reference(SEED_A, m))


def test_combined_mask_is_signed_sum() -> None:
    m = 5001
    got = prg.combined_mask([(SEED_A, 1), (SEED_B, -1), (SEED_B, 1), (SEED_A, 1)], m, workers=2)
    np.testing.assert_array_equal(got, _reference(SEED_A, m) * np.uint64(2))
    assert not prg.combined_mask([], 7).any()


def test_different_seeds_give_different_streams() -> None:
    assert not np.array_equal(prg.expand(SEED_A, 16), prg.expand(SEED_B, 16))


def test_derive_seed_binds_purpose_and_context() -> None:
    ikm = b"\x11" * 32
    base = prg.derive_seed(ikm, purpose="pairwise-mask", context=[b"job1/r0", "a", "b"])
    assert len(base) == prg.SEED_BYTES
    assert base == prg.derive_seed(ikm, purpose="pairwise-mask", context=[b"job1/r0", "a", "b"])
    others = {
        prg.derive_seed(ikm, purpose="self-mask", context=[b"job1/r0", "a", "b"]),
        prg.derive_seed(ikm, purpose="pairwise-mask", context=[b"job1/r1", "a", "b"]),
        prg.derive_seed(ikm, purpose="pairwise-mask", context=[b"job2/r0", "a", "b"]),
        prg.derive_seed(ikm, purpose="pairwise-mask", context=[b"job1/r0", "ab", ""]),
        prg.derive_seed(b"\x12" * 32, purpose="pairwise-mask", context=[b"job1/r0", "a", "b"]),
    }
    assert base not in others and len(others) == 5


def test_hkdf_info_is_unambiguous() -> None:
    assert prg.hkdf_info("p", ["ab", "c"]) != prg.hkdf_info("p", ["a", "bc"])
    assert prg.hkdf_info("p", [b"x"]) == prg.hkdf_info("p", ["x"])


@pytest.mark.parametrize("seed", [b"", b"\x00" * 16, b"\x00" * 33])
def test_rejects_bad_seed(seed: bytes) -> None:
    with pytest.raises(InvalidSpec):
        prg.expand(seed, 4)


def test_rejects_bad_sign_and_length() -> None:
    with pytest.raises(InvalidSpec):
        prg.combined_mask([(SEED_A, 2)], 4)
    with pytest.raises(InvalidSpec):
        prg.expand(SEED_A, -1)
    with pytest.raises(InvalidSpec):
        prg.derive_seed(b"short", purpose="x", context=[])
