"""Private join-aggregate (issue #16) vs a plaintext DuckDB join of the same tables, same run.

Two holders of N rows each, half of them overlapping (keys in different orders, a few repeated:
dropped), the query ``SELECT h.district, i.tier, COUNT(*), SUM(i.claim), AVG(i.claim) ... GROUP BY
h.district, i.tier``. Ours: every round of docs/private-joins.md with the real node task code on
both sides and the real gateway driver (``gateway.join.private_join``) over the task contract's
wire encoding, in one process plus the Paillier obfuscator worker processes (gRPC and REST are
left out: their cost per job is fixed and measured in bench_he_query.py), then the analyst's
decryption and finalisation. Baseline: DuckDB's inner join + GROUP BY on the plaintext CSVs.
Each holder pads to its declared max_rows = N. Key: 2048-bit Paillier (the minimum; 3072 costs
about 3x per exponentiation). Reported: seconds, and microseconds per joined row (per input row
of one side, the protocol's unit of work, and per row of the true intersection).

Obfuscators: ``--modes djn`` (default) uses the Damgård–Jurik–Nielsen obfuscators h^α of the
pool (secret per-worker base, α of |n|/2 bits, fixed-base table); ``full`` the plain r^n of
Paillier 1999 (the baseline: the same run can do both, e.g. ``--modes djn,full --sizes 1000``).
Each row also reports one obfuscator of each kind measured in this run.

Run: .venv/bin/python benchmarks/bench_join.py [--sizes 1000,10000] [--bits 2048] [--modes djn,full]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

SQL = ("SELECT h.district, i.tier, COUNT(*) AS n, SUM(i.claim) AS total, AVG(i.claim) AS mean "
       "FROM hospital h JOIN insurer i ON h.citizen = i.citizen GROUP BY h.district, i.tier")


def plaintext(root: Path) -> float:
    import duckdb

    started = time.perf_counter()
    con = duckdb.connect()
    con.execute(f"""SELECT h.district, i.tier, COUNT(*), SUM(i.claim), AVG(i.claim)
                    FROM read_csv_auto('{root / "h" / "hospital.csv"}') h
                    JOIN read_csv_auto('{root / "i" / "insurer.csv"}') i ON h.citizen = trim(i.citizen)
                    GROUP BY h.district, i.tier""").fetchall()
    con.close()
    return time.perf_counter() - started


def exponentiation_ms(public: object, count: int = 20) -> float:
    """One r^n mod n^2 in this run (the unit of Paillier work), to read the others against."""
    import secrets

    import gmpy2

    n = gmpy2.mpz(public.n)  # type: ignore[attr-defined]
    n2 = n * n
    started = time.perf_counter()
    for _ in range(count):
        gmpy2.powmod(secrets.randbelow(int(n) - 2) + 1, n, n2)
    return (time.perf_counter() - started) / count * 1e3


def djn_ms(public: object, count: int = 200) -> float:
    """One DJN obfuscator h^α from a warm fixed-base table in this process."""
    from xdp_compute.crypto._paillier_worker import obfuscator_batch

    obfuscator_batch(public.n, 1, "djn")  # type: ignore[attr-defined]  # builds the table
    started = time.perf_counter()
    obfuscator_batch(public.n, count, "djn")  # type: ignore[attr-defined]
    return (time.perf_counter() - started) / count * 1e3


def one(n: int, bits: int, mode: str) -> dict[str, float | str]:
    from join_data import Wire, delivery, prepared, write_nodes

    from xdp_compute.crypto.paillier import ObfuscatorPool, generate_keypair

    ObfuscatorPool.default_mode = mode  # every pool of this run: the nodes' and the gateway's
    from xdp_compute.gateway.join import private_join
    from xdp_compute.sdk.join import decrypt_join

    public, private = generate_keypair(bits)
    with tempfile.TemporaryDirectory(prefix="xdp-bench-join-") as tmp:
        root = Path(tmp)
        pops, h, i = write_nodes(root, 11, n, n, n // 2, n)
        base = min(plaintext(root) for _ in range(3))
        r_n = exponentiation_ms(public)
        h_a = djn_ms(public)
        p = prepared(SQL, h, i, public, 4.0)
        wire = Wire({"hospital-node": h, "insurer-node": i})
        try:
            started = time.perf_counter()
            cts = asyncio.run(private_join(wire, "bench", p, timeout=3600))  # type: ignore[arg-type]
            rounds = time.perf_counter() - started
            result = decrypt_join(private, delivery(p, public, cts))
            total = time.perf_counter() - started
        finally:
            h.close()
            i.close()
    true = len(set(pops.hospital) & set(pops.insurer))
    assert abs(sum(r["n"] for r in result.rows) - true) < 50
    return {"obfuscators": mode, "rows_per_side": n, "intersection": true, "padded_list": n + p.plan.dummy_max,
            "plaintext_duckdb_s": round(base, 4), "private_join_s": round(total, 2),
            "rounds_s": round(rounds, 2), "ratio": round(total / base, 1), "one_r^n_ms": round(r_n, 2), "one_h^alpha_ms": round(h_a, 2),
            "us_per_input_row": round(total / n * 1e6), "us_per_joined_row": round(total / true * 1e6)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1000,10000")
    ap.add_argument("--bits", type=int, default=2048)
    ap.add_argument("--modes", default="djn", help="comma-separated: djn (default), full (baseline r^n)")
    args = ap.parse_args()
    for n in (int(x) for x in args.sizes.split(",")):
        for mode in args.modes.split(","):
            print(json.dumps(one(n, args.bits, mode)), flush=True)


if __name__ == "__main__":
    main()
