"""Paillier encrypted delivery end to end vs the plain federated query, same cluster, same run.

3 node processes x N rows, the same GROUP BY query; baseline: the plain path (secure
aggregation, the gateway unmasks the noisy totals); ours: encrypted delivery with a 3072-bit
analyst key (the SDK default), whole path: REST -> plan -> sealed secure aggregation (nodes
encrypt their masked inputs) -> gateway multiplies ciphertexts, removes the masks and blanks
small cells -> release gate -> log -> SDK decryption. The key pair is made once, before timing;
the first encrypted query per key also starts the nodes' obfuscator pools (warm-up, untimed).

Run: .venv/bin/python benchmarks/bench_he_query.py [--rows 100000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests" / "e2e"))

SQL = "SELECT clinic, COUNT(*) AS n, SUM(cost) AS total, AVG(cost) AS mean_cost FROM visits WHERE age > 30 GROUP BY clinic"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=100_000, help="rows per node")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    from bench_query import three_node_cluster

    from xdp_compute import Client

    cluster, analyst, _, root = three_node_cluster(args.rows, "xdp-bench-heq-")
    try:
        c = Client(cluster.url, analyst, key_dir=str(root / "keys"))
        c.query(SQL, epsilon=0.1)  # warm-up (imports, connections)
        c.query(SQL, epsilon=0.1, encrypt=True)  # makes the key pair; starts the nodes' pools
        plain, enc = [], []
        for _ in range(args.repeat):
            t = time.perf_counter()
            c.query(SQL, epsilon=0.1)
            plain.append(time.perf_counter() - t)
            t = time.perf_counter()
            c.query(SQL, epsilon=0.1, encrypt=True)
            enc.append(time.perf_counter() - t)
        p, e = statistics.median(plain), statistics.median(enc)
        print(f"rows per node: {args.rows:,} (3 nodes), 3072-bit key, median of {args.repeat}")
        print(f"{'plain federated DP query':<45} {p * 1000:9.1f} ms")
        print(f"{'Paillier encrypted delivery':<45} {e * 1000:9.1f} ms")
        print(f"{'ratio encrypted / plain':<45} {e / p:9.2f} x")
        print("RESULT " + json.dumps({"rows_per_node": args.rows, "plain_ms": p * 1000, "encrypted_ms": e * 1000,
                                      "ratio": e / p}))
    finally:
        cluster.close()


if __name__ == "__main__":
    main()
