"""Benchmark SecAgg+ at scale (issue #13 goal 4): 100, 300 and 1,000 simulated nodes.

(e) Whole protocol, all nodes in one process, every message through its wire form, with the
    (k, t) the gateway would choose (``secagg_plus_parameters`` at the default rates: 5% drop-out,
    a third of the nodes corrupt) and 5% of the nodes dropping out (spread over the five phases).
    Per-node client cost (mean over the survivors, encoding and decoding included) and the
    server's total; the complete graph (Bonawitz et al. 2017, majority threshold) at the same
    n = 100 as the baseline measured in the same run.

Run: .venv/bin/python benchmarks/bench_secagg_scale.py [--quick] [--repeats R] [--m M]
Prints a table and a final ``RESULT {json}`` line. Best of the repeats (the machine is shared).
"""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

import numpy as np
from bench_secagg import timed_session  # the one timed session driver (benchmarks/ is on sys.path)

from xdp_compute.crypto.secagg import Phase, SecAggConfig, default_threshold, secagg_plus_parameters

PHASES = [Phase.ADVERTISE_KEYS, Phase.SHARE_KEYS, Phase.MASKED_INPUT, Phase.CONSISTENCY, Phase.UNMASK]


def run_session(n: int, m: int, k: int | None, t: int, dropout: float, seed: int) -> dict[str, float]:
    """One session; returns mean client ms per surviving node and the server's total ms."""
    parts = [f"node-{i:04d}" for i in range(n)]
    cfg = SecAggConfig(session_id=f"bench-e/{n}/{k}/{seed}", participants=parts, vector_length=m,
                       threshold=t, neighbours=k)
    rng = np.random.default_rng(seed)
    inputs = {u: rng.integers(0, 2**64, m, dtype=np.uint64) for u in parts}
    chosen = rng.choice(n, math.floor(dropout * n + 1e-9), replace=False)
    drop = {parts[i]: PHASES[j % len(PHASES)] for j, i in enumerate(chosen)}
    return timed_session(cfg, inputs, drop)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="one repeat, n = 100 and 300 only")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--m", type=int, default=1000, help="vector length")
    ap.add_argument("--dropout", type=float, default=0.05)
    ap.add_argument("--corrupt", type=float, default=1 / 3)
    args = ap.parse_args()
    repeats = 1 if args.quick else args.repeats
    sizes = [100, 300] if args.quick else [100, 300, 1000]
    rows: list[dict[str, Any]] = []
    plans = [("complete", 100, None, default_threshold(100))]
    for n in sizes:
        p = secagg_plus_parameters(n, dropout_rate=args.dropout, corrupt_rate=args.corrupt, colluding=1)
        plans.append(("secagg+", n, p.neighbours, p.threshold))
    for mode, n, k, t in plans:
        runs = [run_session(n, args.m, k, t, args.dropout, seed) for seed in range(repeats)]
        rows.append({"mode": mode, "n": n, "k": k if k is not None else n - 1, "t": t,
                     "client_ms_per_node": min(r["client_ms"] for r in runs),
                     "server_ms": min(r["server_ms"] for r in runs),
                     "client_ms_all": [r["client_ms"] for r in runs], "server_ms_all": [r["server_ms"] for r in runs]})
    print(f"(e) SecAgg+ at scale: vector length {args.m}, {args.dropout:.0%} of nodes drop out (over all phases), "
          f"(k, t) for {args.dropout:g} drop-out / {args.corrupt:.3g} corrupt; best of {repeats}")
    print(f"    {'mode':<9} {'n':>5} {'k':>4} {'t':>4} {'client ms/node':>15} {'server ms':>10} {'server ms/node':>15}")
    for r in rows:
        print(f"    {r['mode']:<9} {r['n']:>5} {r['k']:>4} {r['t']:>4} {r['client_ms_per_node']:15.1f} "
              f"{r['server_ms']:10.0f} {r['server_ms'] / r['n']:15.2f}")
    sparse = {r["n"]: r for r in rows if r["mode"] == "secagg+"}
    base = next(r for r in rows if r["mode"] == "complete")
    top = max(sparse)
    growth = {
        "n_ratio": top / 100,
        "log_n_ratio": math.log(top) / math.log(100),
        "k_ratio": sparse[top]["k"] / sparse[100]["k"],
        "client_per_node_ratio": sparse[top]["client_ms_per_node"] / sparse[100]["client_ms_per_node"],
        "server_per_node_ratio": (sparse[top]["server_ms"] / top) / (sparse[100]["server_ms"] / 100),
        "secagg_plus_vs_complete_at_100": sparse[100]["client_ms_per_node"] / base["client_ms_per_node"],
    }
    print(f"    from n=100 to n={top} (x{growth['n_ratio']:.0f} nodes; log n x{growth['log_n_ratio']:.2f}): "
          f"k x{growth['k_ratio']:.2f}, client cost per node x{growth['client_per_node_ratio']:.2f}, "
          f"server cost per node x{growth['server_per_node_ratio']:.2f}")
    print(f"    at n=100, SecAgg+ client cost is x{growth['secagg_plus_vs_complete_at_100']:.2f} of the complete graph's")
    print("RESULT " + json.dumps({"rows": rows, "growth": growth, "m": args.m}))


if __name__ == "__main__":
    main()
