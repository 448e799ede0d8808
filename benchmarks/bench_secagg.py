"""Benchmark secure aggregation (crypto/secagg/).

(a) One node's masking of 1M uint64 words in a 3-node job (self mask + 2 pairwise masks:
    AES-256-CTR expansion and additions) versus DuckDB's SUM over the same 1M rows, same run.
(c) Whole protocol with 10, 50 and 100 simulated nodes, 10% dropping after sharing keys,
    vector length 1000: per-node client cost and server cost, complete graph and SecAgg+.
(d) The cost of authentication (the active-adversary variant): a whole 3- and 10-node session
    with certified identities (ECDSA P-256 signatures on keys and survivor sets, certificates
    checked against the CA) against the same session unauthenticated, alternating, same run.

Run: .venv/bin/python benchmarks/bench_secagg.py [--quick] [--only a|c|d]
Prints tables and a final ``RESULT {json}`` line. Timings are medians; the machine is shared.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import duckdb
import numpy as np

from xdp_compute.crypto import prg
from xdp_compute.crypto.secagg import (
    ConsistencyCheck,
    EncryptedShares,
    KeyRoster,
    Phase,
    SecAggClient,
    SecAggConfig,
    SecAggServer,
    UnmaskRequest,
    decode_message,
    default_neighbours,
)


def _times_ms(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """(median, min) wall time in ms after one warm-up call."""
    fn()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples) * 1e3, min(samples) * 1e3


# -- (a) masking vs DuckDB SUM ------------------------------------------------------------------


def _three_node_session(m: int) -> tuple[SecAggClient, EncryptedShares]:
    """Run Rounds 0-1 of a 3-node job; return node-0 ready for Round 2 and its routed shares."""
    cfg = SecAggConfig(
        session_id=f"bench/{time.perf_counter_ns()}", participants=["a", "b", "c"], vector_length=m
    )
    server = SecAggServer(cfg)
    clients = {u: SecAggClient(u, cfg) for u in cfg.participants}
    for u, c in clients.items():
        server.receive(u, c.advertise_keys().encode())
    server.close_advertise_keys()
    for u, c in clients.items():
        server.receive(u, c.share_keys(server.roster_for(u)).encode())
    server.close_share_keys()
    return clients["a"], server.shares_for("a")


def bench_masking(m: int, repeats: int) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    values = rng.integers(-(2**40), 2**40, m, dtype=np.int64)
    x = values.view(np.uint64)

    con = duckdb.connect()
    con.register("col", {"v": values})  # a view over the numpy array, no copy
    con.execute("CREATE TABLE t AS SELECT v FROM col")
    assert con.execute("SELECT SUM(v) FROM t").fetchone()[0] == int(values.sum())
    duck = _times_ms(lambda: con.execute("SELECT SUM(v) FROM t").fetchone(), repeats)
    duck_scan = _times_ms(lambda: con.execute("SELECT SUM(v) FROM col").fetchone(), repeats)
    threads = con.execute("SELECT current_setting('threads')").fetchone()[0]

    # The primitive itself: 3 AES-CTR streams (PRG(b_u), +PRG(s_ab), -PRG(s_ac)) and the adds.
    seeds = [bytes([i]) * 32 for i in range(3)]
    terms = [(seeds[0], 1), (seeds[1], 1), (seeds[2], -1)]

    def mask_once(workers: int | None) -> Callable[[], object]:
        def run() -> object:
            mask = prg.combined_mask(terms, m, workers=workers)
            return np.add(x, mask, out=mask)  # y = x + mask, as masked_input does

        return run

    prim = _times_ms(mask_once(None), repeats)
    prim_1t = _times_ms(mask_once(1), repeats)

    # The client API end to end (decrypt 2 shares, derive seeds, expand, add), fresh session each time.
    full, offline, online = [], [], []
    for _ in range(max(3, repeats // 2)):
        client, shares = _three_node_session(m)
        t0 = time.perf_counter()
        client.masked_input(x, shares)
        full.append(time.perf_counter() - t0)
        client, shares = _three_node_session(m)
        t0 = time.perf_counter()
        client.precompute_mask()
        t1 = time.perf_counter()
        client.masked_input(x, shares)
        t2 = time.perf_counter()
        offline.append(t1 - t0)
        online.append(t2 - t1)

    def stat(xs: list[float]) -> tuple[float, float]:
        return statistics.median(xs) * 1e3, min(xs) * 1e3

    rows = {
        "duckdb_sum": duck,
        "duckdb_sum_numpy_scan": duck_scan,
        "mask_primitive": prim,
        "mask_primitive_1thread": prim_1t,
        "masked_input_api": stat(full),
        "precompute_mask": stat(offline),
        "masked_input_online": stat(online),
    }
    out: dict[str, Any] = {"m": m, "duckdb_threads": int(threads)}
    for key, (med, best) in rows.items():
        out[f"{key}_ms"] = med
        out[f"{key}_min_ms"] = best
    for key in ("mask_primitive", "masked_input_api", "masked_input_online"):
        out[f"ratio_{key}_vs_duckdb"] = out[f"{key}_ms"] / out["duckdb_sum_ms"]
        out[f"ratio_{key}_vs_duckdb_min"] = out[f"{key}_min_ms"] / out["duckdb_sum_min_ms"]
    return out


# -- (c) whole protocol -------------------------------------------------------------------------


def timed_session(cfg: SecAggConfig, inputs: dict[str, np.ndarray], drop: dict[str, Phase]) -> dict[str, float]:
    """One whole session through the wire forms; ``drop[u] = phase``: u goes silent from that phase on.

    Returns the mean client ms over the nodes that never dropped (encoding what a client sends and
    decoding what it gets included) and the server's total ms; checks the sum.
    """
    parts = list(cfg.participants)
    client_s = dict.fromkeys(parts, 0.0)
    server_s = 0.0
    clock = time.perf_counter

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

    server = SecAggServer(cfg)
    clients = {u: SecAggClient(u, cfg) for u in parts}
    for u in parts:
        if active(u, Phase.ADVERTISE_KEYS):
            raw = as_client(u, lambda c=clients[u]: c.advertise_keys().encode())
            as_server(lambda u=u, raw=raw: server.receive(u, raw))
    as_server(server.close_advertise_keys)
    for u in server.survivors(Phase.ADVERTISE_KEYS):
        if active(u, Phase.SHARE_KEYS):
            roster = as_server(lambda u=u: server.roster_for(u).encode())
            raw = as_client(u, lambda u=u, r=roster: clients[u].share_keys(KeyRoster.decode(r)).encode())
            as_server(lambda u=u, raw=raw: server.receive(u, raw))
    as_server(server.close_share_keys)
    for u in server.survivors(Phase.SHARE_KEYS):
        if active(u, Phase.MASKED_INPUT):
            es = as_server(lambda u=u: server.shares_for(u).encode())
            raw = as_client(u, lambda u=u, es=es: clients[u].masked_input(inputs[u],
                                                                          EncryptedShares.decode(es)).encode())
            as_server(lambda u=u, raw=raw: server.receive(u, raw))
    check = as_server(lambda: server.close_masked_input().encode())
    for u in server.survivors(Phase.MASKED_INPUT):
        if active(u, Phase.CONSISTENCY):
            raw = as_client(u, lambda u=u: clients[u].consistency_check(ConsistencyCheck.decode(check)).encode())
            as_server(lambda u=u, raw=raw: server.receive(u, decode_message(raw)))
    req = as_server(lambda: server.close_consistency().encode())
    for u in server.survivors(Phase.CONSISTENCY):
        if active(u, Phase.UNMASK):
            raw = as_client(u, lambda u=u: clients[u].unmask(UnmaskRequest.decode(req)).encode())
            as_server(lambda u=u, raw=raw: server.receive(u, decode_message(raw)))
    total = as_server(server.close_unmask)
    expect = np.zeros(cfg.vector_length, dtype=np.uint64)
    for u in parts:
        if u not in drop or drop[u] >= Phase.CONSISTENCY:  # in U3: its masked input is in the sum
            expect += inputs[u]
    assert np.array_equal(total, expect), "wrong sum"
    survivors = [u for u in parts if u not in drop]
    return {"client_ms": statistics.mean(client_s[u] for u in survivors) * 1e3, "server_ms": server_s * 1e3}


def _run_protocol(n: int, m: int, k: int | None, seed: int) -> dict[str, float]:
    parts = [f"node-{i:03d}" for i in range(n)]
    cfg = SecAggConfig(session_id=f"bench-c/{n}/{k}/{seed}", participants=parts, vector_length=m, neighbours=k)
    rng = np.random.default_rng(seed)
    inputs = {u: rng.integers(0, 2**64, m, dtype=np.uint64) for u in parts}
    # 10%, spread over the roster; they vanish after sharing keys.
    return timed_session(cfg, inputs, dict.fromkeys(parts[::10], Phase.MASKED_INPUT))


def bench_protocol(sizes: list[int], m: int, repeats: int) -> list[dict[str, Any]]:
    rows = []
    for mode in ("complete", "secagg+"):
        for n in sizes:
            k = default_neighbours(n) if mode == "secagg+" else None
            runs = [_run_protocol(n, m, k, seed) for seed in range(repeats)]
            # Best of the repeats: the least disturbed by other load on a shared machine.
            client = min(r["client_ms"] for r in runs)
            server = min(r["server_ms"] for r in runs)
            cfg = SecAggConfig(
                session_id="x", participants=[str(i) for i in range(n)], vector_length=m, neighbours=k
            )
            rows.append(
                {
                    "mode": mode,
                    "n": n,
                    "k": k if cfg.sparse else None,
                    "t": cfg.t,
                    "client_ms_per_node": client,
                    "server_ms": server,
                    "client_ms_per_node_per_peer": client / (cfg.neighbourhood_size - 1),
                }
            )
    return rows


# -- (d) signatures ------------------------------------------------------------------------------
def bench_signatures(sizes: list[int], m: int, repeats: int) -> list[dict[str, Any]]:
    import tempfile
    from pathlib import Path

    from xdp_compute.crypto.pki import init_pki, issue_node_certificate
    from xdp_compute.crypto.secagg import NodeSigner, PeerVerifier, run_local_session

    root = Path(tempfile.mkdtemp(prefix="xdp-bench-pki-"))
    paths = init_pki(root)
    ids = [f"n{i}" for i in range(max(sizes))]
    for u in ids:
        issue_node_certificate(root, u, holder=f"holder-{u}")
    signers = {u: NodeSigner.from_pem(paths.node_cert(u).read_bytes(), paths.node_key(u).read_bytes()) for u in ids}
    verifier = PeerVerifier.from_pem(paths.ca_cert.read_bytes())
    rows = []
    for n in sizes:
        cfg = SecAggConfig(session_id="bench/sig", participants=ids[:n], vector_length=m)
        inputs = {u: np.full(m, i, dtype=np.uint64) for i, u in enumerate(ids[:n])}
        plain: list[float] = []
        signed: list[float] = []
        for _ in range(repeats):  # alternating: a slow moment of the machine costs both alike
            t0 = time.perf_counter()
            run_local_session(cfg, inputs)
            plain.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            run_local_session(cfg, inputs, signers={u: signers[u] for u in ids[:n]}, verifier=verifier)
            signed.append(time.perf_counter() - t0)
        p, q = statistics.median(plain) * 1e3, statistics.median(signed) * 1e3
        rows.append({"n": n, "unauthenticated_ms": p, "authenticated_ms": q, "ratio": q / p,
                     "extra_ms_per_node": (q - p) / n})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer repeats")
    ap.add_argument("--only", choices=("a", "c", "d"), default=None, help="run one part only")
    args = ap.parse_args()
    result: dict[str, Any] = {}
    repeats_a = 7 if args.quick else 21
    repeats_c = 1 if args.quick else 3

    if args.only in (None, "a"):
        result["masking"] = _part_a(repeats_a)
    if args.only in (None, "c"):
        result |= _part_c(repeats_c)
    if args.only in (None, "d"):
        result["signatures"] = _part_d(args.quick)
    print("RESULT " + json.dumps(result))


def _part_a(repeats_a: int) -> dict[str, Any]:
    a = bench_masking(1_000_000, repeats_a)
    print("(a) masking 1M uint64 words, 3-node job (self mask + 2 pairwise masks) vs DuckDB SUM")
    print(f"    {'what':<52} {'median':>8} {'x DuckDB':>9} {'min':>8} {'x DuckDB':>9}")
    for label, key in [
        (f"DuckDB SELECT SUM(v) over 1M-row table ({a['duckdb_threads']} threads)", "duckdb_sum"),
        ("DuckDB SELECT SUM(v) scanning the numpy array", "duckdb_sum_numpy_scan"),
        ("mask: 3 AES-CTR streams + adds (auto threads)", "mask_primitive"),
        ("mask: 3 AES-CTR streams + adds (1 thread)", "mask_primitive_1thread"),
        ("SecAggClient.masked_input, all work", "masked_input_api"),
        ("  split: precompute_mask (before data are ready)", "precompute_mask"),
        ("  split: masked_input after precompute (online)", "masked_input_online"),
    ]:
        med, best = a[f"{key}_ms"], a[f"{key}_min_ms"]
        print(
            f"    {label:<52} {med:8.2f} {med / a['duckdb_sum_ms']:9.2f} {best:8.2f} "
            f"{best / a['duckdb_sum_min_ms']:9.2f}"
        )
    return a


def _part_c(repeats_c: int) -> dict[str, Any]:
    m_c = 1000
    rows = bench_protocol([10, 50, 100], m_c, repeats_c)
    print(
        f"\n(c) whole protocol, vector length {m_c}, 10% of nodes drop after sharing keys "
        f"(best of {repeats_c})"
    )
    print(
        f"    {'mode':<9} {'n':>4} {'k':>4} {'t':>4} {'client ms/node':>15} {'per peer':>9} {'server ms':>10}"
    )
    for r in rows:
        print(
            f"    {r['mode']:<9} {r['n']:>4} {r['k'] or '-':>4} {r['t']:>4} {r['client_ms_per_node']:15.2f} "
            f"{r['client_ms_per_node_per_peer']:9.3f} {r['server_ms']:10.1f}"
        )
    growth = {}
    for mode in ("complete", "secagg+"):
        base = next(r for r in rows if r["mode"] == mode and r["n"] == 10)
        big = next(r for r in rows if r["mode"] == mode and r["n"] == 100)
        growth[mode] = big["client_ms_per_node"] / base["client_ms_per_node"]
        print(
            f"    {mode}: per-node client cost x{growth[mode]:.1f} from n=10 to n=100 (linear would be x10)"
        )
    return {"protocol": rows, "per_node_growth_10_to_100": growth}


def _part_d(quick: bool) -> list[dict[str, Any]]:
    m_c = 1000
    sig = bench_signatures([3, 10], m_c, 5 if quick else 15)
    print(f"\n(d) authentication: whole session (all nodes in one process), vector length {m_c}, medians")
    print(f"    {'n':>4} {'unauthenticated ms':>19} {'authenticated ms':>17} {'ratio':>6} {'extra ms/node':>14}")
    for r in sig:
        print(f"    {r['n']:>4} {r['unauthenticated_ms']:19.1f} {r['authenticated_ms']:17.1f} {r['ratio']:6.2f} "
              f"{r['extra_ms_per_node']:14.2f}")
    return sig


if __name__ == "__main__":
    main()
