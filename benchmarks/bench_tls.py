"""The cost of TLS on the 3-node federated DP query: the same cluster shape, same run, with and without.

Plaintext: ``--insecure`` on loopback (what the e2e tests use). TLS: HTTPS between client and
gateway, mutual TLS (ECDSA P-256 certificates from ``xdp admin pki``) between the three node
processes and the gateway. Each measurement is one whole query (REST -> plan -> tasks to the
nodes over gRPC -> secure aggregation rounds -> release gate -> log); the SDK client keeps its
connection, as a real analyst's would. Also: a fresh connection per request (/healthz), which
pays the TLS handshake every time. Prints medians and the TLS/plaintext ratios.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))

SQL = "SELECT clinic, COUNT(*) AS n, AVG(cost) AS mean_cost FROM visits WHERE age > 30 GROUP BY clinic"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=20_000, help="rows per node")
    ap.add_argument("--repeat", type=int, default=20)
    args = ap.parse_args()
    from e2e_helpers import start_hospitals

    # Both clusters run side by side and the queries alternate between them, so a slow moment of
    # the (shared) machine costs both setups alike.
    clusters = {tls: start_hospitals(Path(tempfile.mkdtemp(prefix=f"xdp-bench-tls-{int(tls)}-")), n=3,
                                     rows=args.rows, budget=1e6, tls=tls) for tls in (False, True)}
    try:
        clients = {tls: h.cluster.client(h.tokens["analyst"]) for tls, h in clusters.items()}
        for c in clients.values():
            c.query(SQL, epsilon=0.1)  # warm-up: imports, connections, first plan
        query: dict[bool, list[float]] = {False: [], True: []}
        fresh: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(args.repeat):
            for tls, c in clients.items():
                t = time.perf_counter()
                c.query(SQL, epsilon=0.1)
                query[tls].append(time.perf_counter() - t)
            for tls, h in clusters.items():
                with httpx.Client(verify=h.cluster.verify, timeout=10) as http:  # a new TLS session each
                    t = time.perf_counter()
                    http.get(h.cluster.url + "/healthz")
                    fresh[tls].append(time.perf_counter() - t)
        for c in clients.values():
            c.close()
    finally:
        for h in clusters.values():
            h.cluster.close()
    print(f"3 nodes x {args.rows:,} rows; {args.repeat} alternating measurements per setup (medians)")
    print(f"{'':<40} {'plaintext':>11} {'TLS':>11} {'ratio':>7}")
    for data, label in ((query, "3-node DP query (kept connection)"),
                        (fresh, "REST /healthz on a new connection")):
        p, t = statistics.median(data[False]) * 1000, statistics.median(data[True]) * 1000
        pair = statistics.median(b / a for a, b in zip(data[False], data[True], strict=True))
        print(f"{label:<40} {p:9.1f}ms {t:9.1f}ms {t / p:6.2f}x  (median of paired ratios {pair:.2f}x)")


if __name__ == "__main__":
    main()
