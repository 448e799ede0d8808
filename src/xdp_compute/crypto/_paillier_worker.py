"""Process-pool task for Paillier obfuscators; kept tiny so spawned workers start fast.

Imports only ``gmpy2`` and ``secrets``: a worker started with the ``spawn`` method re-imports
this module (and the package ``__init__`` files), not ``phe`` or the rest of the project.
"""

from __future__ import annotations

import secrets

import gmpy2


def obfuscator_batch(n: int, count: int) -> list[int]:
    """Return ``count`` fresh obfuscators r^n mod n^2 with r uniform in Z_n^*.

    Paillier 1999, encryption: c = g^m * r^n mod n^2; r^n does not depend on m, so it can be
    computed ahead of time. r comes from the OS CSPRNG (``secrets``) in this process; no state
    is shared with the parent or other workers.
    """
    n_mpz = gmpy2.mpz(n)
    n_square = n_mpz * n_mpz
    out: list[int] = []
    while len(out) < count:
        r = gmpy2.mpz(secrets.randbelow(n - 1) + 1)
        # gcd(r, n) != 1 would reveal a factor of n; it happens with probability ~2^-1000.
        if gmpy2.gcd(r, n_mpz) != 1:
            continue
        out.append(int(gmpy2.powmod(r, n_mpz, n_square)))
    return out
