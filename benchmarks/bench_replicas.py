"""Released queries per second with one and two gateway replicas on one PostgreSQL (issue #18).

One run, one database, one set of nodes: two gateway processes (replicas A and B) over the same
PostgreSQL and three node processes, each node with a session to both replicas. Analyst threads
(one SDK client and token each, as ``bench_gateway.py``'s load generator) issue small released
queries back to back for ``--seconds``:

- ``1 replica``: every analyst talks to A (B is up and holds its node sessions, but serves no
  analyst);
- ``2 replicas``: half the analysts talk to A, half to B.

The two setups alternate ``--repeat`` times; each line prints released queries/s, errors and
p50/p95 latency as median [min-max] over the repeats, and the ratio of the medians.

PostgreSQL: ``--db URL`` (a database this run may fill), else ``XDP_TEST_PG_URL``, else a
throwaway local server as the tests start one (``tests/conftest.py``).

Load note: on a shared 2-core machine the replicas, the nodes, the analysts and PostgreSQL compete
for the same cores, so a second replica cannot add CPU; what it shows is that serialising the log
through the database costs little, and where the bottleneck is.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
sys.path.insert(0, str(ROOT / "tests"))

SQL = "SELECT clinic, COUNT(*) AS n FROM visits GROUP BY clinic"
EPS = 0.01
DELTA = 1e-10  # explicit and small: the default would exhaust the delta ledgers in one run


def span(xs: list[float], fmt: str = "{:.1f}") -> str:
    return f"{fmt.format(statistics.median(xs))} [{fmt.format(min(xs))}-{fmt.format(max(xs))}]"


def start(db: str, nodes: int, rows: int) -> tuple[Any, list[str], dict[str, str]]:
    """Replicas A and B on ``db`` and ``nodes`` nodes with a session to each; (cluster, urls, tokens)."""
    from e2e_helpers import MANIFEST, invite, visits_csv

    from xdp_compute.cli.cluster import LocalCluster, free_port

    root = Path(tempfile.mkdtemp(prefix="xdp-bench-replicas-"))
    cluster = LocalCluster(root=root, db=db, env={"XDP_HEARTBEAT_SECONDS": "2",
                                                  "XDP_LOG_KEY_FILE": str(root / "release-log.key")})
    cluster.start_gateway()
    http_b, grpc_b = free_port(), free_port()
    proc = cluster._spawn("gateway-b", ["gateway", "--db", db, "--http", f"127.0.0.1:{http_b}",
                                        "--grpc", f"127.0.0.1:{grpc_b}", "--insecure"])
    url_b = f"http://127.0.0.1:{http_b}"
    deadline = time.time() + 60
    while True:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url_b + "/healthz", timeout=1).status_code == 200:
                break
        if time.time() > deadline or not proc.alive():
            raise RuntimeError(f"replica B did not start:\n{proc.tail()}")
        time.sleep(0.2)
    tokens = {"admin": cluster.token("admin", "admin")}
    names = [f"clinic-{i}" for i in range(nodes)]
    for i, node in enumerate(names):
        tokens[node] = cluster.token("holder", f"{node}-holder")
        m = cluster.write_node_files(node, MANIFEST.format(node=node, region="CN-FJ", budget=1e9, min_group=5,
                                                           categories='["transport"]', approval="false"),
                                     {"visits.csv": visits_csv(i, rows)})
        if i > 0:
            invite(cluster, tokens[names[0]], f"{node}-holder")
        cluster.start_node(node, tokens[node], m, gateway=f"{cluster.grpc_addr},127.0.0.1:{grpc_b}")
        if i == 0:
            cluster.wait_online(tokens["admin"], [node])
    cluster.wait_online(tokens["admin"], names)
    return cluster, [cluster.url, url_b], tokens


def load(cluster: Any, urls: list[str], analysts: int, seconds: float) -> dict[str, Any]:
    """``analysts`` threads, analyst i on ``urls[i % len(urls)]``, for ``seconds``."""
    from xdp_compute import Client

    tokens = [cluster.token("analyst", f"load-{uuid.uuid4().hex[:8]}-{i}") for i in range(analysts)]
    lat: list[float] = []
    errors: collections.Counter[str] = collections.Counter()
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def analyst(i: int, tok: str) -> None:
        with Client(urls[i % len(urls)], tok) as c:
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

    t0 = time.perf_counter()
    threads = [threading.Thread(target=analyst, args=(i, tok)) for i, tok in enumerate(tokens)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    q = statistics.quantiles(lat, n=20) if len(lat) >= 2 else [float("nan")] * 19
    return {"qps": len(lat) / wall, "errors": sum(errors.values()), "kinds": dict(errors),
            "p50": statistics.median(lat) if lat else float("nan"), "p95": q[18]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--db", help="PostgreSQL URL (default XDP_TEST_PG_URL, else a throwaway local server)")
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--rows", type=int, default=300)
    ap.add_argument("--analysts", type=int, nargs="+", default=[4, 8])
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    import os

    server = None
    db = args.db or os.environ.get("XDP_TEST_PG_URL")
    if not db:
        import conftest

        server = conftest.pg_url.__wrapped__()  # the tests' throwaway PostgreSQL (a generator)
        db = next(server)
    import psycopg

    name = "xdp_bench_" + uuid.uuid4().hex[:8]
    with psycopg.connect(db, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    db_url = f"{db.rsplit('/', 1)[0]}/{name}"
    cluster = None
    try:
        cluster, urls, _ = start(db_url, args.nodes, args.rows)
        print(f"replicas: {args.nodes} nodes (a session to each replica), PostgreSQL, small released queries, "
              f"{args.seconds:g} s per run, {args.repeat} alternating runs per setup", flush=True)
        from xdp_compute import Client

        for u in urls:  # warm both replicas
            with Client(u, cluster.token("analyst", f"warm-{uuid.uuid4().hex[:8]}")) as c:
                for _ in range(2):
                    c.query(SQL, epsilon=EPS, delta=DELTA)
        setups = {"1 replica": urls[:1], "2 replicas": urls}
        for a in args.analysts:
            res: dict[str, list[dict[str, Any]]] = {k: [] for k in setups}
            for r in range(args.repeat):
                for k in (list(setups) if r % 2 == 0 else list(reversed(setups))):
                    res[k].append(load(cluster, setups[k], a, args.seconds))
            for k, rs in res.items():
                kinds: collections.Counter[str] = collections.Counter()
                for x in rs:
                    kinds.update(x["kinds"])
                print(f"  analysts={a:<3} {k:<10} released/s {span([x['qps'] for x in rs])}  "
                      f"errors {sum(x['errors'] for x in rs)}  p50 {span([x['p50'] * 1e3 for x in rs], '{:.0f}')} ms  "
                      f"p95 {span([x['p95'] * 1e3 for x in rs], '{:.0f}')} ms" + (f"  {dict(kinds)}" if kinds else ""),
                      flush=True)
            one = statistics.median(x["qps"] for x in res["1 replica"])
            two = statistics.median(x["qps"] for x in res["2 replicas"])
            print(f"  analysts={a:<3} two replicas / one: {two / one:.2f}x", flush=True)
    finally:
        if cluster is not None:
            cluster.close()
            cluster.stop("gateway-b")
        with contextlib.suppress(Exception), psycopg.connect(db, autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if server is not None:
            next(server, None)


if __name__ == "__main__":
    main()
