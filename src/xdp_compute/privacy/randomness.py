"""Sources of uniform random integers for DP noise.

Every sampler in :mod:`xdp_compute.privacy.samplers` draws only through the two methods of
:class:`RandomnessSource`, so the noise is exactly as good as the source. Production code uses
:class:`SystemRandomness` (the OS CSPRNG, as the house rules require); tests inject
:class:`SeededRandomness` to make statistical tests reproducible.
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Protocol, runtime_checkable

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

__all__ = ["RandomnessSource", "SeededRandomness", "SystemRandomness", "default_randomness"]


@runtime_checkable
class RandomnessSource(Protocol):
    """Uniform random integers; the only interface the exact samplers need."""

    def randbits(self, k: int) -> int:
        """Return a uniform integer in [0, 2**k); ``k >= 0``."""
        ...

    def randbelow(self, n: int) -> int:
        """Return a uniform integer in [0, n); ``n >= 1``."""
        ...


class SystemRandomness:
    """The OS CSPRNG through :mod:`secrets`; the default for every noise draw."""

    def randbits(self, k: int) -> int:
        if k < 0:
            raise ValueError("number of bits must be non-negative")
        return secrets.randbits(k) if k else 0

    def randbelow(self, n: int) -> int:
        if n < 1:
            raise ValueError("upper bound must be positive")
        return secrets.randbelow(n)


class SeededRandomness:
    """Deterministic DRBG for TESTS ONLY: never use it for noise that protects real data.

    The stream is the AES-256-CTR keystream (zero nonce, counter from 0) under the key
    SHA-256(tagged seed), where the tagged seed is ``b"bytes:" + seed`` for bytes and
    ``b"int:" + seed.to_bytes(signed, big-endian, minimal length)`` for ints. The same seed
    always yields the same integers on every platform. Anyone who knows the seed can
    recompute every "random" value, which is exactly why it is unfit for production noise.
    """

    _CHUNK = 1 << 14  # keystream bytes generated per AES call; amortises the call overhead

    def __init__(self, seed: bytes | int) -> None:
        if isinstance(seed, bool) or not isinstance(seed, (bytes, int)):
            raise TypeError("seed must be bytes or int")
        if isinstance(seed, int):
            # Tagged so that an int seed and a bytes seed never share a stream by accident.
            n_bytes = (seed.bit_length() + 8) // 8
            seed_bytes = b"int:" + seed.to_bytes(n_bytes, "big", signed=True)
        else:
            seed_bytes = b"bytes:" + seed
        key = hashlib.sha256(seed_bytes).digest()
        self._encryptor = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()
        self._buffer = b""
        self._pos = 0

    def _take(self, n: int) -> bytes:
        if self._pos + n > len(self._buffer):
            need = max(self._CHUNK, n)
            rest = self._buffer[self._pos :]
            self._buffer = rest + self._encryptor.update(bytes(need))
            self._pos = 0
        out = self._buffer[self._pos : self._pos + n]
        self._pos += n
        return out

    def randbits(self, k: int) -> int:
        if k < 0:
            raise ValueError("number of bits must be non-negative")
        if k == 0:
            return 0
        n_bytes = (k + 7) // 8
        return int.from_bytes(self._take(n_bytes), "big") >> (8 * n_bytes - k)

    def randbelow(self, n: int) -> int:
        if n < 1:
            raise ValueError("upper bound must be positive")
        k = n.bit_length()
        # Rejection sampling keeps the result exactly uniform (no modulo bias); each try
        # succeeds with probability > 1/2.
        while True:
            r = self.randbits(k)
            if r < n:
                return r


def default_randomness() -> RandomnessSource:
    """Return the production source (the OS CSPRNG)."""
    return SystemRandomness()
