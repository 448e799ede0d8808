"""Process-pool task for Paillier obfuscators; kept tiny so spawned workers start fast.

Imports only ``gmpy2``, ``secrets`` and the standard library: a worker started with the
``spawn`` method re-imports this module (and the package ``__init__`` files), not ``phe`` or
the rest of the project.

Two ways to make an obfuscator (a random n-th residue mod n^2), both sound:

* ``"full"`` — Paillier 1999: r^n mod n^2 with r uniform in Z_n^*. One full exponentiation
  with a |n|-bit exponent (~11 ms at |n| = 2048 on one core here).
* ``"djn"`` — Damgård, Jurik and Nielsen, "A generalization of Paillier's public-key system
  with applications to electronic voting" (IJIS 2010, §4.2; Intel's Paillier library calls it
  DJN mode): fix a base h = r0^n mod n^2 (r0 uniform in Z_n^*) and output h^α mod n^2 with α
  uniform in [0, 2^⌈|n|/2⌉) — the exponent length of DJN 2010 §4.2 and of IPCL's DJN mode.
  h is fixed, so h^α uses a precomputed fixed-base table (window w): ⌈|α|/w⌉ modular
  multiplications instead of a |n|-bit exponentiation (~14x less work at |n| = 2048).

  Assumption (stated in docs/private-joins.md): DJN's — under the decisional composite
  residuosity assumption (DCR), h^α with a short α (⌈|n|/2⌉ bits) is computationally
  indistinguishable from a uniform n-th residue (the short-exponent indistinguishability
  DJN 2010 rely on). The full mode needs DCR only. Here h is moreover secret: each process
  draws its own r0 from the OS CSPRNG when it first needs a table for a key; h, r0 and the
  table live only in this process's memory (never logged, persisted, pickled or sent).

Tables are kept per (process, public key), at most :data:`MAX_TABLES` keys (least recently
used evicted) and at most :data:`TABLE_BUDGET_BYTES` each (the window shrinks for big keys).
A process that was forked after building a table rebuilds it (a new h), so two processes never
share a base.
"""

from __future__ import annotations

import os
import secrets
import threading
from collections import OrderedDict

import gmpy2

#: Obfuscator kinds accepted by :func:`obfuscator_batch`.
MODES = ("auto", "djn", "full")
#: At most this many keys' tables per process (least recently used evicted).
MAX_TABLES = 2
#: Upper bound on one table's size; the window shrinks to fit (16 MiB at |n| = 2048, w = 8).
TABLE_BUDGET_BYTES = 40 * 2**20
#: In ``"auto"`` mode a batch this large builds a table; smaller ones use the full r^n unless
#: this process already holds a table for the key (building one costs ~20 full r^n).
AUTO_TABLE_MIN = 32

_tables: OrderedDict[int, _FixedBase] = OrderedDict()
_tables_lock = threading.Lock()


def _uniform_unit(n: gmpy2.mpz) -> gmpy2.mpz:
    while True:
        r = gmpy2.mpz(secrets.randbelow(int(n) - 1) + 1)
        # gcd(r, n) != 1 would reveal a factor of n; it happens with probability ~2^-1000.
        if gmpy2.gcd(r, n) == 1:
            return r


class _FixedBase:
    """h^α mod n^2 for a secret per-process base h = r0^n, by a fixed-base windowed table.

    α = Σ d_i 2^(w·i) with digits d_i < 2^w; rows[i][d] = h^(d·2^(w·i)) mod n^2, so
    h^α = Π rows[i][d_i] — one multiplication per nonzero digit.
    """

    __slots__ = ("_h_rows", "_n2", "alpha_bits", "pid", "window")

    def __init__(self, n: int) -> None:
        n_mpz = gmpy2.mpz(n)
        self._n2 = n_mpz * n_mpz
        self.alpha_bits = (n_mpz.bit_length() + 1) // 2
        self.pid = os.getpid()
        entry = (2 * n_mpz.bit_length() + 7) // 8
        self.window = 8
        while self.window > 4 and (-(-self.alpha_bits // self.window)) * (1 << self.window) * entry > TABLE_BUDGET_BYTES:
            self.window -= 1
        base = gmpy2.powmod(_uniform_unit(n_mpz), n_mpz, self._n2)  # h: secret, this process only
        rows: list[list[gmpy2.mpz]] = []
        for _ in range(-(-self.alpha_bits // self.window)):
            row = [gmpy2.mpz(1), base]
            for _d in range(2, 1 << self.window):
                row.append(row[-1] * base % self._n2)
            rows.append(row)
            base = row[-1] * base % self._n2  # h^(2^(w·(i+1)))
        self._h_rows = rows

    def __repr__(self) -> str:
        return f"<fixed-base table: {len(self._h_rows)} rows, window {self.window}>"

    def __reduce__(self) -> object:
        raise TypeError("a fixed-base obfuscator table is secret and is never pickled")

    def batch(self, count: int) -> list[int]:
        n2, w, mask, bits = self._n2, self.window, (1 << self.window) - 1, self.alpha_bits
        rows = self._h_rows
        out: list[int] = []
        for _ in range(count):
            alpha = secrets.randbits(bits)
            acc = gmpy2.mpz(1)
            i = 0
            while alpha:
                d = alpha & mask
                if d:
                    acc = acc * rows[i][d] % n2
                alpha >>= w
                i += 1
            out.append(int(acc))
        return out


def _table(n: int, *, create: bool) -> _FixedBase | None:
    with _tables_lock:
        table = _tables.get(n)
        if table is not None and table.pid != os.getpid():  # forked: never share a base
            del _tables[n]
            table = None
        if table is not None:
            _tables.move_to_end(n)
            return table
        if not create:
            return None
        table = _FixedBase(n)
        _tables[n] = table
        while len(_tables) > MAX_TABLES:
            _tables.popitem(last=False)
        return table


def table_count() -> int:
    """Keys with a table in this process (for tests and memory checks; reveals no secret)."""
    with _tables_lock:
        return len(_tables)


def full_batch(n: int, count: int) -> list[int]:
    """``count`` obfuscators r^n mod n^2, r uniform in Z_n^* (Paillier 1999; the baseline)."""
    n_mpz = gmpy2.mpz(n)
    n_square = n_mpz * n_mpz
    return [int(gmpy2.powmod(_uniform_unit(n_mpz), n_mpz, n_square)) for _ in range(count)]


def obfuscator_batch(n: int, count: int, mode: str = "auto") -> list[int]:
    """Return ``count`` fresh obfuscators (random n-th residues mod n^2, reduced mod n^2).

    ``mode``: ``"djn"`` — h^α from this process's fixed-base table (built on first use per key);
    ``"full"`` — r^n with r uniform in Z_n^*; ``"auto"`` (default) — ``"djn"`` when this process
    already has a table for n or ``count`` >= :data:`AUTO_TABLE_MIN`, else ``"full"``.
    Randomness comes from the OS CSPRNG (``secrets``) in this process; nothing is shared with the
    parent or other workers.
    """
    if mode not in MODES:
        raise ValueError(f"unknown obfuscator mode {mode!r}")
    if count <= 0:
        return []
    if mode == "full":
        return full_batch(n, count)
    table = _table(n, create=mode == "djn" or count >= AUTO_TABLE_MIN)
    if table is None:
        return full_batch(n, count)
    return table.batch(count)
