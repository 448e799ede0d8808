"""Benchmark SecAgg+ at scale (issue #13 goal 4): 100, 300 and 1,000 simulated nodes.

(e) Whole protocol, all nodes in one process, every message through its wire form, with the
    (k, t) the gateway would choose (``secagg_plus_parameters`` at the default rates: 5% drop-out,
    a third of the nodes corrupt) and 5% of the nodes dropping out (spread over the five phases).
    Per-node client cost (mean over the survivors, encoding and decoding included) and the
    server's total; the complete graph (Bonawitz et al. 2017, majority threshold) at the same
    n = 100 as the reference measured in the same run.

    A node's cost includes its own session setup: a real node builds its own
    ``SecAggConfig`` and derives its neighbourhood from the session id (``setup``, timed on a
    fresh config per node; the protocol itself then runs on one shared config object, so that
    1,000 whole graphs of the old code need not sit in memory at once). Each node gets the
    Round 4 request the gateway sends it: its share holders' signatures only
    (``SecAggServer.unmask_request_for``) where the code has it, else the one broadcast request.
    Each client gets the server's messages as bytes and decodes them itself, as the node's task
    does (``node/tasks/secagg.py`` passes the gRPC payload straight to ``SecAggClient``).

    ``--baseline-rev REV`` (or ``--baseline-src DIR``): the same driver against the secure
    aggregation of an older tree (``git archive REV src``), alternating with this tree's run by
    run, each in its own process, so both see the same load.

    Costs are the CPU time of the one thread (``--clock cpu``, the default; ``--clock wall`` for
    elapsed time, which on a shared machine swings with the load). ``--src DIR`` measures another
    src/ tree (e.g. a frozen ``git archive`` of this one) in a child process.

Run: .venv/bin/python benchmarks/bench_secagg_scale.py [--quick] [--repeats R] [--m M]
         [--baseline-rev REV | --baseline-src DIR] [--src DIR] [--sizes 100,300,1000] [--clock cpu|wall]
Prints a table and a final ``RESULT {json}`` line. Best of the repeats, and every run (the
machine is shared), with the 1-minute load seen between runs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
#: ``cpu``: this thread's CPU time (the machine is shared: wall time swings with the load); ``wall``.
CLOCK = os.environ.get("XDP_BENCH_CLOCK", "cpu")


def run_session(n: int, m: int, k: int | None, t: int, dropout: float, seed: int) -> dict[str, float]:
    """One session; returns mean client ms per surviving node (setup included), the setup part,
    and the server's total ms. Checks the sum."""
    from xdp_compute.crypto.secagg import (
        Phase,
        SecAggClient,
        SecAggConfig,
        SecAggServer,
        decode_message,
    )

    phases = [Phase.ADVERTISE_KEYS, Phase.SHARE_KEYS, Phase.MASKED_INPUT, Phase.CONSISTENCY, Phase.UNMASK]
    parts = [f"node-{i:04d}" for i in range(n)]
    sid = f"bench-e/{n}/{k}/{seed}"

    def config() -> SecAggConfig:
        return SecAggConfig(session_id=sid, participants=parts, vector_length=m, threshold=t, neighbours=k)

    rng = np.random.default_rng(seed)
    inputs = {u: rng.integers(0, 2**64, m, dtype=np.uint64) for u in parts}
    chosen = rng.choice(n, math.floor(dropout * n + 1e-9), replace=False)
    drop = {parts[i]: phases[j % len(phases)] for j, i in enumerate(chosen)}

    clock = time.thread_time if CLOCK == "cpu" else time.perf_counter
    client_s = dict.fromkeys(parts, 0.0)
    setup_s = dict.fromkeys(parts, 0.0)
    server_s = 0.0
    for u in parts:  # each node's own setup: its config and its neighbourhood
        t0 = clock()
        own = config()
        own.holders_of(u)
        setup_s[u] = clock() - t0
        del own

    def active(u: str, phase: Phase) -> bool:
        return u not in drop or phase < drop[u]

    def as_client(u: str, fn: Callable[[], Any]) -> Any:
        t0 = clock()
        out = fn()
        client_s[u] += clock() - t0
        return out

    def as_server(fn: Callable[[], Any]) -> Any:
        nonlocal server_s
        t0 = clock()
        out = fn()
        server_s += clock() - t0
        return out

    cfg = config()
    server = as_server(lambda: SecAggServer(cfg))
    clients = {u: SecAggClient(u, cfg) for u in parts}
    per_node = hasattr(server, "unmask_request_for")
    for u in parts:
        if active(u, Phase.ADVERTISE_KEYS):
            raw = as_client(u, lambda c=clients[u]: c.advertise_keys().encode())
            as_server(lambda u=u, raw=raw: server.receive(u, raw))
    as_server(server.close_advertise_keys)
    for u in server.survivors(Phase.ADVERTISE_KEYS):
        if active(u, Phase.SHARE_KEYS):
            roster = as_server(lambda u=u: server.roster_for(u).encode())
            raw = as_client(u, lambda u=u, r=roster: clients[u].share_keys(r).encode())
            as_server(lambda u=u, raw=raw: server.receive(u, raw))
    as_server(server.close_share_keys)
    for u in server.survivors(Phase.SHARE_KEYS):
        if active(u, Phase.MASKED_INPUT):
            es = as_server(lambda u=u: server.shares_for(u).encode())
            raw = as_client(u, lambda u=u, es=es: clients[u].masked_input(inputs[u], es).encode())
            as_server(lambda u=u, raw=raw: server.receive(u, raw))
    check = as_server(lambda: server.close_masked_input().encode())
    for u in server.survivors(Phase.MASKED_INPUT):
        if active(u, Phase.CONSISTENCY):
            raw = as_client(u, lambda u=u: clients[u].consistency_check(check).encode())
            as_server(lambda u=u, raw=raw: server.receive(u, decode_message(raw)))
    broadcast = as_server(lambda: server.close_consistency().encode())
    for u in server.survivors(Phase.CONSISTENCY):
        if active(u, Phase.UNMASK):
            req = as_server(lambda u=u: server.unmask_request_for(u).encode()) if per_node else broadcast
            raw = as_client(u, lambda u=u, req=req: clients[u].unmask(req).encode())
            as_server(lambda u=u, raw=raw: server.receive(u, decode_message(raw)))
    total = as_server(server.close_unmask)
    expect = np.zeros(m, dtype=np.uint64)
    for u in parts:
        if u not in drop or drop[u] >= Phase.CONSISTENCY:  # in U3: its masked input is in the sum
            expect += inputs[u]
    assert np.array_equal(total, expect), "wrong sum"
    kept = [u for u in parts if u not in drop]
    return {"client_ms": 1000 * sum(client_s[u] + setup_s[u] for u in kept) / len(kept),
            "setup_ms": 1000 * sum(setup_s[u] for u in kept) / len(kept),
            "server_ms": 1000 * server_s}


def plans(sizes: list[int], dropout: float, corrupt: float) -> list[tuple[str, int, int | None, int]]:
    from xdp_compute.crypto.secagg import default_threshold, secagg_plus_parameters

    out: list[tuple[str, int, int | None, int]] = [("complete", 100, None, default_threshold(100))]
    for n in sizes:
        p = secagg_plus_parameters(n, dropout_rate=dropout, corrupt_rate=corrupt, colluding=1)
        out.append(("secagg+", n, p.neighbours, p.threshold))
    return out


def one_pass(sizes: list[int], m: int, dropout: float, corrupt: float, seed: int) -> list[dict[str, Any]]:
    """Every plan once (seed ``seed``)."""
    rows = []
    for mode, n, k, t in plans(sizes, dropout, corrupt):
        r = run_session(n, m, k, t, dropout, seed)
        rows.append({"mode": mode, "n": n, "k": k if k is not None else n - 1, "t": t, **r})
    return rows


def baseline_src(rev: str) -> Path:
    """``src`` of ``rev`` in a temporary directory."""
    out = Path(tempfile.mkdtemp(prefix="xdp-bench-secagg-base-"))
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "src"], check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(out)], input=archive.stdout, check=True)
    return out / "src"


def child(src: Path, sizes: list[int], m: int, dropout: float, corrupt: float, seed: int) -> list[dict[str, Any]]:
    """One pass in a fresh process importing xdp_compute from ``src``."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    cmd = [sys.executable, __file__, "--one-pass", "--seed", str(seed), "--m", str(m), "--dropout", str(dropout),
           "--corrupt", str(corrupt), "--sizes", ",".join(map(str, sizes))]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    line = next(x for x in out.stdout.splitlines() if x.startswith("PASS "))
    return list(json.loads(line[5:]))


def summarise(passes: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    rows = []
    for i, first in enumerate(passes[0]):
        runs = [p[i] for p in passes]
        rows.append({k: first[k] for k in ("mode", "n", "k", "t")}
                    | {"client_ms_per_node": min(r["client_ms"] for r in runs),
                       "setup_ms_per_node": min(r["setup_ms"] for r in runs),
                       "server_ms": min(r["server_ms"] for r in runs),
                       "client_ms_all": [r["client_ms"] for r in runs],
                       "server_ms_all": [r["server_ms"] for r in runs]})
    return rows


def growth(rows: list[dict[str, Any]]) -> dict[str, float]:
    sparse = {r["n"]: r for r in rows if r["mode"] == "secagg+"}
    base = next(r for r in rows if r["mode"] == "complete")
    top, low = max(sparse), min(sparse)
    return {
        "n_ratio": top / low,
        "log_n_ratio": math.log(top) / math.log(low),
        "k_ratio": sparse[top]["k"] / sparse[low]["k"],
        "client_per_node_ratio": sparse[top]["client_ms_per_node"] / sparse[low]["client_ms_per_node"],
        "server_per_node_ratio": (sparse[top]["server_ms"] / top) / (sparse[low]["server_ms"] / low),
        "secagg_plus_vs_complete_at_100": sparse[low]["client_ms_per_node"] / base["client_ms_per_node"],
    }


def table(title: str, rows: list[dict[str, Any]]) -> None:
    print(title)
    print(f"    {'mode':<9} {'n':>5} {'k':>4} {'t':>4} {'client ms/node':>15} {'(setup)':>8} {'server ms':>10} "
          f"{'server ms/node':>15}   client ms/node, server ms: every run")
    for r in rows:
        runs = " ".join(f"{c:.1f}/{s:.0f}" for c, s in zip(r["client_ms_all"], r["server_ms_all"], strict=True))
        print(f"    {r['mode']:<9} {r['n']:>5} {r['k']:>4} {r['t']:>4} {r['client_ms_per_node']:15.1f} "
              f"{r['setup_ms_per_node']:8.2f} {r['server_ms']:10.0f} {r['server_ms'] / r['n']:15.2f}   {runs}")
    g = growth(rows)
    print(f"    from n={min(r['n'] for r in rows if r['mode'] == 'secagg+')} to "
          f"n={max(r['n'] for r in rows)} (x{g['n_ratio']:.0f} nodes; log n x{g['log_n_ratio']:.2f}): "
          f"k x{g['k_ratio']:.2f}, client cost per node x{g['client_per_node_ratio']:.2f}, "
          f"server cost per node x{g['server_per_node_ratio']:.2f}")
    print(f"    at n=100, SecAgg+ client cost is x{g['secagg_plus_vs_complete_at_100']:.2f} of the complete graph's")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="one repeat, n = 100 and 300 only")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--m", type=int, default=1000, help="vector length")
    ap.add_argument("--dropout", type=float, default=0.05)
    ap.add_argument("--corrupt", type=float, default=1 / 3)
    ap.add_argument("--sizes", default=None, help="comma-separated SecAgg+ sizes (default 100,300,1000)")
    ap.add_argument("--baseline-rev", default=None, help="git revision whose secure aggregation is the baseline")
    ap.add_argument("--baseline-src", type=Path, default=None, help="a src/ directory to use as baseline")
    ap.add_argument("--src", type=Path, default=None, help="measure this src/ directory instead of the tree's "
                    "(in a child process, like the baseline)")
    ap.add_argument("--clock", choices=("cpu", "wall"), default=None,
                    help="cpu (default): the thread's CPU time, steadier on a shared machine; wall: elapsed time")
    ap.add_argument("--one-pass", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.clock:
        os.environ["XDP_BENCH_CLOCK"] = args.clock  # children inherit it
        global CLOCK
        CLOCK = args.clock
    sizes = [int(x) for x in args.sizes.split(",")] if args.sizes else [100, 300] if args.quick else [100, 300, 1000]
    if args.one_pass:
        print("PASS " + json.dumps(one_pass(sizes, args.m, args.dropout, args.corrupt, args.seed)))
        return
    repeats = 1 if args.quick else args.repeats
    base = args.baseline_src or (baseline_src(args.baseline_rev) if args.baseline_rev else None)
    here = args.src or ROOT / "src"
    loads: list[float] = []
    new_passes, old_passes = [], []
    for seed in range(repeats):
        loads.append(os.getloadavg()[0])
        if base is not None or args.src is not None:
            if base is not None:
                old_passes.append(child(base, sizes, args.m, args.dropout, args.corrupt, seed))
                loads.append(os.getloadavg()[0])
            new_passes.append(child(here, sizes, args.m, args.dropout, args.corrupt, seed))
        else:
            new_passes.append(one_pass(sizes, args.m, args.dropout, args.corrupt, seed))
    loads.append(os.getloadavg()[0])
    head = (f"vector length {args.m}, {args.dropout:.0%} of nodes drop out (over all phases), (k, t) for "
            f"{args.dropout:g} drop-out / {args.corrupt:.3g} corrupt; best of {repeats}; "
            f"1-min load {min(loads):.1f}-{max(loads):.1f}; {CLOCK} time")
    result: dict[str, Any] = {"m": args.m, "load": loads}
    rows = summarise(new_passes)
    table(f"(e) SecAgg+ at scale, this tree: {head}", rows)
    result |= {"rows": rows, "growth": growth(rows)}
    if base is not None:
        old = summarise(old_passes)
        table(f"(e) baseline {args.baseline_rev or base}, same run, alternating:", old)
        print("    this tree / baseline, client ms per node: " + ", ".join(
            f"n={a['n']}{'' if a['mode'] == 'secagg+' else ' complete'} x{a['client_ms_per_node'] / b['client_ms_per_node']:.2f}"
            for a, b in zip(rows, old, strict=True)))
        print("    this tree / baseline, server ms: " + ", ".join(
            f"n={a['n']}{'' if a['mode'] == 'secagg+' else ' complete'} x{a['server_ms'] / b['server_ms']:.2f}"
            for a, b in zip(rows, old, strict=True)))
        result |= {"baseline": {"rev": args.baseline_rev, "rows": old, "growth": growth(old)}}
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
