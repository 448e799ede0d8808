"""Pseudorandom generator for secure-aggregation masks: AES-256-CTR keystream read as uint64.

Bonawitz et al. 2017, §3 (PRG) and Round 2: masks are PRG(seed) in Z_2^64^m. We key AES-256
with a 32-byte seed, start the 128-bit big-endian counter at 0 and read the keystream (the
encryption of zeros) as little-endian uint64 words. Each seed is used for one expansion only,
so counter reuse cannot happen; to guarantee that, every seed is first derived through
HKDF-SHA256 (RFC 5869) with an ``info`` that binds the purpose, the session (job + round) and the
parties, so the same key material never yields the same mask in two jobs or two rounds.

Speed: ``update_into`` into a small cache-resident scratch buffer (no big temporaries), and for
long vectors the index range is split across threads (OpenSSL releases the GIL); CTR mode lets
each thread start at its own block counter, so the output is identical for any worker count.
"""

from __future__ import annotations

import os
import struct
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from xdp_compute.errors import InvalidSpec

__all__ = [
    "SEED_BYTES",
    "MaskTerm",
    "combined_mask",
    "derive_seed",
    "expand",
    "hkdf_info",
]

U64Vector = npt.NDArray[np.uint64]

SEED_BYTES = 32
_PROTOCOL_LABEL = b"xdp-compute/secagg/v1"
# 64 Ki words = 512 KiB per chunk: fits L2, amortises the per-call overhead.
_CHUNK_WORDS = 1 << 16
_ZEROS = bytes(8 * _CHUNK_WORDS)
# Below this much work (words x terms) threads cost more than they save.
_PARALLEL_MIN_WORK = 1 << 19
_MAX_LENGTH = 1 << 34  # AES-CTR would be fine far beyond; this only rejects absurd requests.

#: (seed, sign) with sign +1 or -1: one term of a mask sum.
MaskTerm = tuple[bytes, int]

_pool_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None


def _executor() -> ThreadPoolExecutor:
    """Shared small pool for long expansions, created on first use (no work at import time)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1)),
                                       thread_name_prefix="xdp-prg")
        return _pool


def hkdf_info(purpose: str, context: Sequence[bytes | str]) -> bytes:
    """Unambiguous HKDF ``info``: protocol label, purpose and each context item length-prefixed."""
    parts = [_PROTOCOL_LABEL, purpose.encode()]
    for item in context:
        parts.append(item.encode() if isinstance(item, str) else bytes(item))
    return b"".join(struct.pack(">I", len(p)) + p for p in parts)


def derive_seed(ikm: bytes, *, purpose: str, context: Sequence[bytes | str]) -> bytes:
    """HKDF-SHA256(ikm, info=purpose+context) -> 32 bytes, for PRG seeds and AEAD keys.

    ``context`` must bind the session (job id and round) and, for pairwise keys, both parties,
    so that identical key material in another session gives an unrelated output.
    """
    if len(ikm) < 16:
        raise InvalidSpec("HKDF input key material must be at least 16 bytes")
    return HKDF(
        algorithm=hashes.SHA256(), length=SEED_BYTES, salt=None, info=hkdf_info(purpose, context)
    ).derive(ikm)


def _check_seed(seed: bytes) -> None:
    if not isinstance(seed, (bytes, bytearray)) or len(seed) != SEED_BYTES:
        raise InvalidSpec(f"PRG seed must be {SEED_BYTES} bytes")


def _fill(out: U64Vector, start_word: int, terms: Sequence[MaskTerm]) -> None:
    """out[:] += sum(sign * PRG(seed)[start_word : start_word + len(out)]) mod 2^64."""
    n = out.shape[0]
    # Two words per AES block: start_word is even, so the slice begins on a block boundary.
    counter = (start_word // 2).to_bytes(16, "big")
    encryptors = [
        (Cipher(algorithms.AES(seed), modes.CTR(counter)).encryptor(), sign) for seed, sign in terms
    ]
    scratch = np.empty(8 * _CHUNK_WORDS + 15, dtype=np.uint8)  # update_into needs block-1 spare
    zeros = memoryview(_ZEROS)
    for off in range(0, n, _CHUNK_WORDS):
        k = min(_CHUNK_WORDS, n - off)
        dst = out[off : off + k]
        words = scratch[: 8 * k].view("<u8")
        for enc, sign in encryptors:
            enc.update_into(zeros[: 8 * k], scratch)
            if sign > 0:
                np.add(dst, words, out=dst)
            else:
                np.subtract(dst, words, out=dst)


def combined_mask(terms: Sequence[MaskTerm], length: int, *, workers: int | None = None) -> U64Vector:
    """Return sum over terms of sign * PRG(seed), a uint64 vector of ``length`` words mod 2^64.

    One pass over the output however many terms there are. ``workers`` (default: automatic)
    only changes speed, never the result.
    """
    if not isinstance(length, int) or isinstance(length, bool) or not 0 <= length <= _MAX_LENGTH:
        raise InvalidSpec(f"PRG length must be an int in [0, {_MAX_LENGTH}], got {length!r}")
    for seed, sign in terms:
        _check_seed(seed)
        if sign not in (1, -1):
            raise InvalidSpec(f"mask term sign must be +1 or -1, got {sign!r}")
    out = np.zeros(length, dtype=np.uint64)
    if not terms or length == 0:
        return out
    if workers is None:
        workers = min(4, os.cpu_count() or 1) if length * len(terms) >= _PARALLEL_MIN_WORK else 1
    workers = max(1, min(workers, length // 2 or 1))
    if workers == 1:
        _fill(out, 0, terms)
        return out
    # Even split points keep every slice on an AES block boundary.
    bounds = [((length * i // workers) // 2) * 2 for i in range(workers)] + [length]
    futures = [
        _executor().submit(_fill, out[bounds[i] : bounds[i + 1]], bounds[i], terms)
        for i in range(workers)
        if bounds[i + 1] > bounds[i]
    ]
    for f in futures:
        f.result()
    return out


def expand(seed: bytes, length: int, *, workers: int | None = None) -> U64Vector:
    """PRG(seed): the AES-256-CTR keystream under ``seed`` as ``length`` little-endian uint64s."""
    return combined_mask([(seed, 1)], length, workers=workers)
