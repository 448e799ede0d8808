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
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

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
            _pool = ThreadPoolExecutor(
                max_workers=max(1, min(4, os.cpu_count() or 1)), thread_name_prefix="xdp-prg"
            )
        return _pool


def _lp(b: bytes) -> bytes:
    return len(b).to_bytes(4, "big") + b


@lru_cache(maxsize=256)
def _info_prefix(purpose: str) -> bytes:
    return _lp(_PROTOCOL_LABEL) + _lp(purpose.encode())


def hkdf_info(purpose: str, context: Sequence[bytes | str]) -> bytes:
    """Unambiguous HKDF ``info``: protocol label, purpose and each context item length-prefixed."""
    return _info_prefix(purpose) + b"".join(
        _lp(item.encode() if isinstance(item, str) else bytes(item)) for item in context
    )


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


def _fill(padded: U64Vector, lo: int, hi: int, terms: Sequence[MaskTerm]) -> None:
    """padded[lo:hi] = sum(sign * PRG(seed)[lo:hi]) mod 2^64 (overwrites; ``lo`` is even).

    The first term's keystream is written straight into the output (no zero fill, no extra
    pass); ``padded`` has two spare words at the end because older ``cryptography`` releases
    want block_size - 1 bytes of slack in ``update_into`` buffers. Nothing is written there.
    """
    raw = padded.view(np.uint8)
    # Two words per AES block: lo is even, so the slice begins on a block boundary.
    counter = (lo // 2).to_bytes(16, "big")
    encryptors = [
        (Cipher(algorithms.AES(seed), modes.CTR(counter)).encryptor(), sign) for seed, sign in terms
    ]
    (first, first_sign), rest = encryptors[0], encryptors[1:]
    scratch = np.empty(8 * _CHUNK_WORDS + 16, dtype=np.uint8)
    zeros = memoryview(_ZEROS)
    for off in range(lo, hi, _CHUNK_WORDS):
        k = min(_CHUNK_WORDS, hi - off)
        dst = padded[off : off + k]
        first.update_into(zeros[: 8 * k], raw[8 * off : 8 * (off + k) + 16])
        if first_sign < 0:
            np.negative(dst, out=dst)
        words = scratch[: 8 * k].view("<u8")
        for enc, sign in rest:
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
    if not terms or length == 0:
        return np.zeros(length, dtype=np.uint64)
    # A positive term first saves the negation pass (the sum is order-independent).
    ordered = sorted(terms, key=lambda term: -term[1])
    padded = np.empty(length + 2, dtype=np.uint64)
    if workers is None:
        workers = min(4, os.cpu_count() or 1) if length * len(terms) >= _PARALLEL_MIN_WORK else 1
    workers = max(1, min(workers, length // 2 or 1))
    if workers == 1:
        _fill(padded, 0, length, ordered)
    else:
        # Even split points keep every slice on an AES block boundary.
        bounds = [((length * i // workers) // 2) * 2 for i in range(workers)] + [length]
        futures = [
            _executor().submit(_fill, padded, bounds[i], bounds[i + 1], ordered)
            for i in range(workers)
            if bounds[i + 1] > bounds[i]
        ]
        for f in futures:
            f.result()
    return padded[:length]


def expand(seed: bytes, length: int, *, workers: int | None = None) -> U64Vector:
    """PRG(seed): the AES-256-CTR keystream under ``seed`` as ``length`` little-endian uint64s."""
    return combined_mask([(seed, 1)], length, workers=workers)
