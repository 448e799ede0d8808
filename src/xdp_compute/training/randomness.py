"""Randomness for DP-SGD: Poisson sampling and Gaussian noise from a ChaCha20 keystream (numpy only).

Every random draw of a training job — which rows a step samples, the Gaussian noise on each
clipped gradient sum, the noise on the FedAvg count — comes from ``TrainingRandomness``: the
ChaCha20 keystream (RFC 8439 §2.4, via ``cryptography``) under a 256-bit key taken from the OS
CSPRNG (``os.urandom``) for each use (one key per round, one for the count). Knowing earlier
outputs or the other nodes' noise says nothing about the next draw, unlike torch's Mersenne
Twister, whose state can be recovered from its outputs.

Uniforms are 53-bit: the top 53 bits of each 64-bit keystream word, ``(k + 1) / 2^53`` in (0, 1].
Normals are Box-Muller (Box & Muller 1958) pairs over such uniforms, in float64.

**The floating-point caveat** (Mironov, CCS 2012): a float Gaussian is not exactly a Gaussian —
its values lie on an irregular grid whose low bits can, in principle, reveal the unnoised value.
This remains for DP-SGD noise, as in Opacus outside its slow ``secure_mode``. It is accepted here
because no single noisy gradient is released: only the model after many noisy steps, averaged
over nodes and rounded to the secure-aggregation fixed-point grid (2^-16), leaves the node. The
released *counts and metrics* do not have this caveat: they use the exact integer samplers of
``xdp_compute.privacy``.

``TrainingRandomness.seeded`` gives a reproducible stream for TESTS ONLY (its key is a hash of
the seed, so anyone knowing the seed recomputes every "random" value).
"""

from __future__ import annotations

import hashlib
import math
import os

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

_CHUNK = 1 << 16  # keystream bytes per ChaCha20 call, to amortise the call overhead


class TrainingRandomness:
    """Uniforms and normals from the ChaCha20 keystream under ``key`` (32 bytes)."""

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("the ChaCha20 key must be 32 bytes")
        # RFC 8439 §2.4 with a zero nonce: a key is used for one stream only (a fresh key per use).
        self._enc = Cipher(algorithms.ChaCha20(key, bytes(16)), mode=None).encryptor()
        self._buf = b""
        self._pos = 0

    @classmethod
    def from_os(cls) -> TrainingRandomness:
        """A fresh stream keyed from the OS CSPRNG: what production code uses."""
        return cls(os.urandom(32))

    @classmethod
    def seeded(cls, seed: bytes | str | int) -> TrainingRandomness:
        """A reproducible stream, for TESTS ONLY (never for noise protecting real data)."""
        raw = seed if isinstance(seed, bytes) else str(seed).encode()
        return cls(hashlib.sha256(b"xdp-test-training-randomness:" + raw).digest())

    def _bytes(self, n: int) -> bytes:
        if self._pos + n > len(self._buf):
            rest = self._buf[self._pos:]
            self._buf = rest + self._enc.update(bytes(max(_CHUNK, n - len(rest))))
            self._pos = 0
        out = self._buf[self._pos:self._pos + n]
        self._pos += n
        return out

    def uniform(self, n: int) -> np.ndarray:
        """``n`` uniforms in (0, 1] (float64, 53 random bits each)."""
        if n <= 0:
            return np.zeros(0, dtype=np.float64)
        words = np.frombuffer(self._bytes(8 * n), dtype="<u8")
        return ((words >> np.uint64(11)).astype(np.float64) + 1.0) * (1.0 / 2.0**53)

    def normal(self, n: int) -> np.ndarray:
        """``n`` standard normals (float64), Box-Muller over keystream uniforms."""
        if n <= 0:
            return np.zeros(0, dtype=np.float64)
        m = (n + 1) // 2
        u = self.uniform(2 * m)
        r = np.sqrt(-2.0 * np.log(u[:m]))
        t = 2.0 * math.pi * u[m:]
        return np.concatenate([r * np.cos(t), r * np.sin(t)])[:n]


__all__ = ["TrainingRandomness"]
