"""A stock of precomputed Paillier obfuscators r^n mod n^2, refilled in background processes.

Encryption is c = (1 + m*n) * r^n mod n^2 (Paillier 1999 with g = n + 1): the only
exponentiation, r^n, does not depend on m, so it is computed off the critical path in worker
processes (:func:`xdp_compute.crypto._paillier_worker.obfuscator_batch`, gmpy2). The worker
task lives outside this package so that spawned workers import only gmpy2 and ``secrets``.

By default the obfuscators are DJN ones (Damgård–Jurik–Nielsen 2010): h^α mod n^2 with a
secret per-worker base h = r0^n and α uniform of ⌈|n|/2⌉ bits, from a fixed-base table in each
worker — about 14x cheaper than r^n at |n| = 2048. Assumption: under DCR, h^α with such a short
α is indistinguishable from a uniform n-th residue (see ``_paillier_worker`` and
docs/private-joins.md). ``mode="full"`` gives the plain r^n (the baseline in the benchmarks).
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ProcessPoolExecutor, wait
from typing import Self

from xdp_compute.crypto._paillier_worker import MODES, obfuscator_batch
from xdp_compute.crypto.paillier.keys import PaillierPublic


def _spawn_executor(workers: int) -> ProcessPoolExecutor:
    # 'spawn', not 'fork': the gateway/node processes run threads (gRPC, uvicorn), and forking a
    # threaded process can deadlock; workers only need gmpy2 and secrets.
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))


class ObfuscatorPool:
    """A stock of precomputed Paillier obfuscators r^n mod n^2, refilled in background processes.

    ``take(k)`` hands out k obfuscators, each exactly once (an obfuscator reused for two
    ciphertexts would let their quotient reveal m1 - m2), waiting for or computing any
    shortfall in the worker processes. After each ``take`` the stock is topped up to ``target``
    in the background. ``phe``/gmpy2 hold the GIL, hence processes, not threads.
    Obfuscators are secret (r^n unmasks its ciphertext): never log or persist them.

    ``workers=0`` computes in the calling thread (no processes; for tests and tiny jobs).
    An ``executor`` may be shared between pools; the pool then does not shut it down.

    ``mode``: ``"djn"`` (default, :attr:`default_mode`) — short-exponent DJN obfuscators from a
    per-worker secret fixed-base table; ``"full"`` — r^n (baseline); ``"auto"`` — DJN once a
    batch is large enough to pay for the table. A pool is never pickled and its ``repr`` shows
    no obfuscator.
    """

    #: Mode used when none is given (benchmarks set "full" to measure the baseline).
    default_mode = "djn"

    def __init__(
        self,
        public: PaillierPublic,
        *,
        target: int = 256,
        workers: int | None = None,
        chunk: int = 8,
        executor: Executor | None = None,
        start: bool = True,
        mode: str | None = None,
    ) -> None:
        if target < 0 or chunk < 1:
            raise ValueError("target must be >= 0 and chunk >= 1")
        self.mode = self.default_mode if mode is None else mode
        if self.mode not in MODES:
            raise ValueError(f"unknown obfuscator mode {self.mode!r}")
        self.public = public
        self.target = target
        self.chunk = chunk
        self._lock = threading.Lock()
        self._ready: list[int] = []
        self._pending: dict[Future[list[int]], int] = {}
        self._closed = False
        worker_count = (os.cpu_count() or 1) if workers is None else workers
        self._own_executor = executor is None and worker_count > 0
        self._executor: Executor | None = (
            executor
            if executor is not None
            else (_spawn_executor(worker_count) if worker_count > 0 else None)
        )
        self._workers = max(1, worker_count)
        if start:
            self.fill()

    def __repr__(self) -> str:
        return (f"ObfuscatorPool(key={self.public.fingerprint[:16]}, mode={self.mode}, "
                f"target={self.target}, workers={self._workers if self._executor else 0})")

    def __reduce__(self) -> object:
        raise TypeError("an obfuscator pool holds secrets and is never pickled")

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def available(self) -> int:
        """Obfuscators ready now (finished background work included)."""
        with self._lock:
            self._harvest()
            return len(self._ready)

    def fill(self, count: int | None = None, *, wait_done: bool = False) -> None:
        """Schedule work so that ready + pending >= ``count`` (default ``target``); optionally wait."""
        goal = self.target if count is None else count
        with self._lock:
            self._harvest()
            short = goal - len(self._ready) - sum(self._pending.values())
            # Large fills go in larger chunks (at most 1024): fewer tasks to submit and wait on.
            self._schedule(short, chunk=max(self.chunk, min(1024, short // (4 * self._workers))))
            pending = list(self._pending)
        if wait_done and pending:
            wait(pending)
            with self._lock:
                self._harvest()

    def take(self, count: int) -> list[int]:
        """Remove and return ``count`` distinct fresh obfuscators (computing any shortfall now)."""
        if count < 0:
            raise ValueError("count must be >= 0")
        with self._lock:
            if self._closed:
                raise RuntimeError("obfuscator pool is closed")
            self._harvest()
            while len(self._ready) < count:
                if self._closed:
                    raise RuntimeError("obfuscator pool was closed while waiting")
                # Recomputed each round: another thread may have taken what we waited for.
                short = count - len(self._ready) - sum(self._pending.values())
                if short > 0:
                    if self._executor is None:
                        self._ready.extend(obfuscator_batch(self.public.n, short, self.mode))
                        continue
                    # Split the shortfall over all workers so a large batch runs in parallel.
                    self._schedule(short, chunk=max(1, -(-short // self._workers)))
                pending = list(self._pending)
                self._lock.release()
                try:
                    wait(pending, return_when=FIRST_COMPLETED)
                finally:
                    self._lock.acquire()
                self._harvest()
            taken, self._ready = self._ready[:count], self._ready[count:]
            self._schedule(self.target - len(self._ready) - sum(self._pending.values()))
        return taken

    def close(self) -> None:
        """Drop the stock and stop background work (shuts down an executor the pool created)."""
        with self._lock:
            self._closed = True
            self._ready.clear()
            for fut in self._pending:
                fut.cancel()
            self._pending.clear()
        if self._own_executor and isinstance(self._executor, ProcessPoolExecutor):
            self._executor.shutdown(wait=True, cancel_futures=True)

    def _harvest(self) -> None:
        for fut in [f for f in self._pending if f.done()]:
            del self._pending[fut]
            if not fut.cancelled():
                self._ready.extend(fut.result())  # a worker error propagates to the caller

    def _schedule(self, count: int, *, chunk: int | None = None) -> None:
        if count <= 0 or self._closed:
            return
        size = chunk or self.chunk
        if self._executor is None:
            self._ready.extend(obfuscator_batch(self.public.n, count, self.mode))
            return
        while count > 0:
            batch = min(size, count)
            self._pending[self._executor.submit(obfuscator_batch, self.public.n, batch, self.mode)] = batch
            count -= batch
