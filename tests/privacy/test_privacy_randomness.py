"""Randomness sources: the CSPRNG default and the seeded test DRBG."""

from __future__ import annotations

import hashlib

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from scipy import stats

from xdp_compute.privacy import randomness as randomness_mod
from xdp_compute.privacy.randomness import (
    RandomnessSource,
    SeededRandomness,
    SystemRandomness,
    default_randomness,
)

ALPHA = 1e-6


def test_seeded_stream_is_aes256_ctr_keyed_by_sha256_of_seed() -> None:
    key = hashlib.sha256(b"bytes:" + b"known answer").digest()
    keystream = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor().update(bytes(64))
    rng = SeededRandomness(b"known answer")
    got = b"".join(rng.randbits(64).to_bytes(8, "big") for _ in range(8))
    assert got == keystream


def test_seeded_is_deterministic_and_seed_sensitive() -> None:
    r1, r2 = SeededRandomness(7), SeededRandomness(7)
    seq1 = [r1.randbelow(10**12) for _ in range(50)]
    seq2 = [r2.randbelow(10**12) for _ in range(50)]
    assert seq1 == seq2
    other = SeededRandomness(8)
    assert [other.randbelow(10**12) for _ in range(50)] != seq1
    # An int seed and the bytes that look like it are different streams.
    as_bytes = SeededRandomness(b"\x07")
    assert [as_bytes.randbelow(10**12) for _ in range(50)] != seq1


@pytest.mark.parametrize("source", [SeededRandomness(b"uniform"), SystemRandomness()])
def test_randbelow_is_uniform(source: RandomnessSource) -> None:
    n, draws = 7, 14_000
    counts = [0] * n
    for _ in range(draws):
        counts[source.randbelow(n)] += 1
    assert stats.chisquare(counts).pvalue > ALPHA


@pytest.mark.parametrize("source", [SeededRandomness(b"bits"), SystemRandomness()])
def test_randbits_range_and_uniformity(source: RandomnessSource) -> None:
    counts = [0] * 16
    for _ in range(8_000):
        counts[source.randbits(4)] += 1
    assert stats.chisquare(counts).pvalue > ALPHA
    big = [source.randbits(203) for _ in range(200)]
    assert all(0 <= x < 2**203 for x in big)
    assert max(big).bit_length() > 195  # top bits are actually used
    assert source.randbits(0) == 0
    assert all(source.randbelow(1) == 0 for _ in range(20))


@pytest.mark.parametrize("source", [SeededRandomness(1), SystemRandomness()])
def test_bad_arguments_raise(source: RandomnessSource) -> None:
    with pytest.raises(ValueError):
        source.randbelow(0)
    with pytest.raises(ValueError):
        source.randbits(-1)


def test_seed_type_checked() -> None:
    with pytest.raises(TypeError):
        SeededRandomness("text")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        SeededRandomness(True)


def test_default_is_os_csprng(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = randomness_mod.secrets.randbelow

    def spy(n: int) -> int:
        calls.append(n)
        return real(n)

    monkeypatch.setattr(randomness_mod.secrets, "randbelow", spy)
    source = default_randomness()
    assert isinstance(source, SystemRandomness)
    assert isinstance(source, RandomnessSource)
    source.randbelow(1000)
    assert calls == [1000]
