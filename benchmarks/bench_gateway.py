"""Gateway cost per node per query, and released-query throughput (issue #13 goals 2 and 3).

Two gateways in one run: ``new`` is this checkout; ``base`` is the same gateway command run from
an older tree (``--baseline-rev``, default HEAD, extracted with ``git archive`` into a temporary
directory and put first on the gateway's PYTHONPATH). The nodes, the SDK and the data are the
same for both; only the gateway process differs.

(a) CPU per node per query: for n = 3, 10, 20 real node processes (one holder each, all in one
    dataset), both clusters run side by side and batches of sequential small queries alternate
    between them. The gateway's CPU time (user + system, every thread, from /proc via psutil) is
    read around each batch and divided by nodes x queries ("gross"). Nodes heartbeat and witness
    the log in the background; "net" subtracts the gateway's idle CPU rate, measured for a few
    seconds just before each batch, times the batch's wall time.
(b) Throughput: 3 nodes, N analyst threads (one SDK client and one token each) issuing small
    released queries back to back for ``--seconds``; released queries/s, errors, p50/p95 latency.
    One cluster is loaded at a time (the other idles), the two alternating, ``--repeat`` times.

``--profile DIR`` records the gateway with py-spy (``--py-spy PATH``) during one extra batch at
the largest n for each setup and prints the top costs (self and inclusive share of samples).

Load note: a shared 2-core machine; nodes, analysts and the gateway compete for the same cores,
so every figure is printed as median [min-max] over the alternating repeats.
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))

SQL = "SELECT clinic, COUNT(*) AS n FROM visits GROUP BY clinic"
EPS = 0.01
# An explicit small delta: the default (0.1% of the nodes' 1e-5 budget) would exhaust the delta
# ledgers after 1,000 queries, well within one throughput run.
DELTA = 1e-10


def baseline_src(rev: str) -> Path:
    """``src`` of ``rev`` in a temporary directory (the baseline gateway imports it first)."""
    out = Path(tempfile.mkdtemp(prefix="xdp-bench-gw-base-"))
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "src"], check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(out)], input=archive.stdout, check=True)
    return out / "src"


def start(variant: str, n: int, base: Path, rows: int) -> Any:
    from e2e_helpers import start_hospitals

    env = {"PYTHONPATH": str(base)} if variant == "base" else {}
    # Default heartbeat (2 s), not the tests' 0.5 s: background traffic as in a deployment.
    return start_hospitals(Path(tempfile.mkdtemp(prefix=f"xdp-bench-gw-{variant}-{n}-")), n=n, rows=rows,
                           budget=1e9, env={"XDP_HEARTBEAT_SECONDS": "2"}, gateway_env=env)


def gateway_cpu(h: Any) -> float:
    t = psutil.Process(h.cluster.procs["gateway"].popen.pid).cpu_times()
    return float(t.user + t.system)


def span(xs: list[float], fmt: str = "{:.1f}") -> str:
    return f"{fmt.format(statistics.median(xs))} [{fmt.format(min(xs))}-{fmt.format(max(xs))}]"


def batch(h: Any, client: Any, queries: int, idle: float) -> tuple[float, float, float]:
    """(gross CPU s, net CPU s, wall s) of the gateway around ``queries`` sequential queries."""
    c0, t0 = gateway_cpu(h), time.perf_counter()
    time.sleep(idle)
    rate = (gateway_cpu(h) - c0) / (time.perf_counter() - t0)
    c1, t1 = gateway_cpu(h), time.perf_counter()
    for _ in range(queries):
        client.query(SQL, epsilon=EPS, delta=DELTA)
    wall = time.perf_counter() - t1
    cpu = gateway_cpu(h) - c1
    return cpu, cpu - rate * wall, wall


def record(h: Any, py_spy: str, out: Path) -> subprocess.Popen[bytes]:
    """Start py-spy on the gateway (stop it with SIGINT: it then writes ``out``)."""
    pid = h.cluster.procs["gateway"].popen.pid
    return subprocess.Popen([py_spy, "record", "--pid", str(pid), "--format", "raw", "--rate", "200",
                             "--output", str(out), "--nonblocking"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def profile(h: Any, client: Any, queries: int, py_spy: str, out: Path) -> None:
    rec = record(h, py_spy, out)
    time.sleep(1.0)
    for _ in range(queries):
        client.query(SQL, epsilon=EPS, delta=DELTA)
    rec.send_signal(2)  # SIGINT: py-spy writes its output and exits
    rec.wait(30)


def summarize(path: Path, top: int = 15) -> str:
    """Top functions of a py-spy raw (collapsed) profile: self and inclusive share of samples."""
    self_n: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        k = int(count)
        total += k
        frames = [f.split(" (")[0] + " (" + f.split(" (")[1].split(":")[0].split("/")[-1] + ")" if " (" in f else f
                  for f in stack.split(";")]
        self_n[frames[-1]] += k
        for f in set(frames):
            incl[f] += k
    lines = [f"  {total} samples; top self:"]
    lines += [f"    {v / total:6.1%}  {f}" for f, v in self_n.most_common(top)]
    lines += ["  top inclusive:"]
    lines += [f"    {v / total:6.1%}  {f}" for f, v in incl.most_common(top)]
    return "\n".join(lines)


def part_a(args: argparse.Namespace, base: Path) -> None:
    print(f"(a) gateway CPU per node per query: {args.queries} sequential queries per batch, "
          f"{args.repeat} alternating batches per setup, {args.rows} rows per node")
    for n in args.nodes:
        clusters = {v: start(v, n, base, args.rows) for v in args.variants}
        try:
            clients = {v: h.cluster.client(h.tokens["analyst"]) for v, h in clusters.items()}
            for c in clients.values():
                for _ in range(3):
                    c.query(SQL, epsilon=EPS, delta=DELTA)  # warm-up
            res: dict[str, list[tuple[float, float, float]]] = {v: [] for v in clusters}
            for r in range(args.repeat):
                order = list(clusters) if r % 2 == 0 else list(reversed(clusters))
                for v in order:
                    res[v].append(batch(clusters[v], clients[v], args.queries, args.idle))
            for v, rs in res.items():
                per = n * args.queries
                print(f"  n={n:<3} {v:<5} gross {span([g / per * 1e3 for g, _, _ in rs])} ms/node/query   "
                      f"net {span([x / per * 1e3 for _, x, _ in rs])} ms   "
                      f"wall {span([w / args.queries * 1e3 for _, _, w in rs], '{:.0f}')} ms/query", flush=True)
            if args.profile and n == max(args.nodes):
                args.profile.mkdir(parents=True, exist_ok=True)
                for v, h in clusters.items():
                    out = args.profile / f"gateway-{v}-n{n}.txt"
                    profile(h, clients[v], args.queries, args.py_spy, out)
                    print(f"  py-spy profile of the {v} gateway at n={n} ({out}):\n{summarize(out)}", flush=True)
            for c in clients.values():
                c.close()
        finally:
            for h in clusters.values():
                h.cluster.close()


def load(h: Any, analysts: int, seconds: float, prof: tuple[str, Path] | None = None) -> dict[str, Any]:
    tokens = [h.cluster.token("analyst", f"load-{time.monotonic_ns()}-{i}") for i in range(analysts)]
    lat: list[float] = []
    errors: collections.Counter[str] = collections.Counter()
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def analyst(tok: str) -> None:
        with h.cluster.client(tok) as c:
            while time.perf_counter() < stop:
                t = time.perf_counter()
                try:
                    c.query(SQL, epsilon=EPS, delta=DELTA)
                except Exception as e:  # noqa: BLE001 - counted and reported, not hidden
                    with lock:
                        errors[f"{type(e).__name__}: {str(e)[:80]}"] += 1
                    continue
                with lock:
                    lat.append(time.perf_counter() - t)

    rec = record(h, *prof) if prof else None
    t0 = time.perf_counter()
    threads = [threading.Thread(target=analyst, args=(tok,)) for tok in tokens]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if rec is not None:
        rec.send_signal(2)
        rec.wait(30)
        print(f"  py-spy profile under load ({analysts} analysts, {prof[1]}):\n{summarize(prof[1])}", flush=True)
    q = statistics.quantiles(lat, n=20) if len(lat) >= 2 else [float("nan")] * 19
    return {"qps": len(lat) / wall, "errors": sum(errors.values()), "kinds": dict(errors),
            "p50": statistics.median(lat) if lat else float("nan"), "p95": q[18]}


def part_b(args: argparse.Namespace, base: Path) -> None:
    print(f"(b) throughput: {args.tp_nodes} nodes, small released queries, {args.seconds:g} s per run, "
          f"{args.repeat} alternating runs per setup")
    clusters = {v: start(v, args.tp_nodes, base, args.rows) for v in args.variants}
    try:
        for h in clusters.values():
            with h.cluster.client(h.tokens["analyst"]) as c:
                for _ in range(3):
                    c.query(SQL, epsilon=EPS, delta=DELTA)
        for a in args.analysts:
            res: dict[str, list[dict[str, Any]]] = {v: [] for v in clusters}
            for r in range(args.repeat):
                order = list(clusters) if r % 2 == 0 else list(reversed(clusters))
                for v in order:
                    prof = None
                    if args.profile and r == 0 and a == max(args.analysts):
                        args.profile.mkdir(parents=True, exist_ok=True)
                        prof = (args.py_spy, args.profile / f"gateway-{v}-load{a}.txt")
                    res[v].append(load(clusters[v], a, args.seconds, prof))
            for v, rs in res.items():
                kinds: collections.Counter[str] = collections.Counter()
                for x in rs:
                    kinds.update(x["kinds"])
                print(f"  analysts={a:<3} {v:<5} released/s {span([x['qps'] for x in rs])}  "
                      f"errors {sum(x['errors'] for x in rs)}  p50 {span([x['p50'] * 1e3 for x in rs], '{:.0f}')} ms  "
                      f"p95 {span([x['p95'] * 1e3 for x in rs], '{:.0f}')} ms"
                      + (f"  {dict(kinds)}" if kinds else ""), flush=True)
    finally:
        for h in clusters.values():
            h.cluster.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--part", choices=("a", "b", "ab"), default="ab")
    ap.add_argument("--nodes", type=lambda s: [int(x) for x in s.split(",")], default=[3, 10, 20])
    ap.add_argument("--queries", type=int, default=10, help="queries per batch in (a)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--idle", type=float, default=3.0, help="seconds of idle CPU measured before each batch")
    ap.add_argument("--rows", type=int, default=300, help="rows per node")
    ap.add_argument("--variants", type=lambda s: s.split(","), default=["base", "new"])
    ap.add_argument("--baseline-rev", default="HEAD", help="git revision whose gateway is the baseline")
    ap.add_argument("--baseline-src", type=Path, default=None, help="a src/ directory to use as baseline")
    ap.add_argument("--tp-nodes", type=int, default=3)
    ap.add_argument("--analysts", type=lambda s: [int(x) for x in s.split(",")], default=[4, 16])
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--profile", type=Path, default=None, help="write py-spy profiles here")
    ap.add_argument("--py-spy", default=os.environ.get("PY_SPY", "py-spy"))
    args = ap.parse_args()
    base = args.baseline_src or baseline_src(args.baseline_rev)
    print(f"baseline gateway: {args.baseline_rev if not args.baseline_src else base}; machine load "
          f"{os.getloadavg()[0]:.2f} (1 min) on {os.cpu_count()} cores", flush=True)
    if "a" in args.part:
        part_a(args, base)
    if "b" in args.part:
        part_b(args, base)


if __name__ == "__main__":
    main()
