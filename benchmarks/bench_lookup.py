"""Hidden lookups (issue #17): table build time, table size, online latency and bytes, same run.

A real gateway and one holder's node on loopback (``LocalCluster``); the holder's dataset has
N keys (default 10^4, 10^5, 10^6) and a lookup product; the analyst is subscribed. Per N:

* **build**: the first ``table-info`` call, which makes the node read its rows and build the
  table (N OPRF evaluations and encryptions; dummies would fill any capacity above N);
* **table**: its size and the time to fetch it through the gateway into the SDK (once per version);
* **online**: ``Client.lookup`` with the table cached (one table-info and one evaluate round trip,
  each reaching the node), median and 90th percentile of ``--repeat`` lookups, half of them of
  absent keys; bytes on the wire per lookup (HTTP requests and answers, measured by a TCP relay),
  against the OPRF payload itself (32 bytes up; 32 bytes and a 64-byte proof down);
* **baseline**: in the same run, an authenticated ``GET /v1/me`` round trip, so latencies read as
  ratios on this machine.

Run: .venv/bin/python benchmarks/bench_lookup.py [--keys 10000,100000,1000000] [--repeat 40]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))

LABEL_BYTES = 64
MANIFEST = """
[node]
name = "bureau-node"
region = "CN-FJ"

[[datasets]]
name = "credit"
source = "credit.csv"
classification = "sensitive"
epsilon_budget = 10.0
max_rows = {n}

[datasets.lookup]
key = "citizen_id"
columns = ["score", "defaulted"]
capacity = {n}
label_bytes = {label}

[datasets.columns]
citizen_id = {{ type = "text", uses = [] }}
score      = {{ type = "int", min = 300, max = 900, uses = ["aggregate"] }}
defaulted  = {{ type = "bool", uses = ["aggregate"] }}
"""


def key(i: int) -> str:
    return f"3502{i:014d}"


def write_csv(path: Path, n: int) -> None:
    with path.open("w") as f:
        f.write("citizen_id,score,defaulted\n")
        f.writelines(f"{key(i)},{300 + i % 600},{'true' if i % 7 == 0 else 'false'}\n" for i in range(n))


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def run(n: int, repeat: int) -> dict[str, Any]:
    from tls_relay import TcpRelay

    from xdp_compute import Client
    from xdp_compute.cli.cluster import LocalCluster

    root = Path(tempfile.mkdtemp(prefix=f"xdp-bench-lookup-{n}-"))
    cluster = LocalCluster(root=root, env={"XDP_HEARTBEAT_SECONDS": "1"})
    try:
        cluster.start_gateway()
        admin, holder_t = cluster.token("admin", "admin"), cluster.token("holder", "bureau")
        analyst_t = cluster.token("analyst", "lender")
        d = root / "bureau-node"
        d.mkdir()
        write_csv(d / "credit.csv", n)
        (d / "node.toml").write_text(MANIFEST.format(n=n, label=LABEL_BYTES))
        cluster.start_node("bureau-node", holder_t, d / "node.toml")
        cluster.wait_online(admin, ["bureau-node"])
        with Client(cluster.url, holder_t) as holder, Client(cluster.url, analyst_t, timeout=1800) as analyst:
            product = holder.create_product("credit", "lookup", "bench", 0.1, 10 * repeat + 10,
                                            columns=["score", "defaulted"]).id
            holder.approve_subscription(analyst.subscribe(product).id)
            t0 = time.perf_counter()
            info = analyst._post(f"/v1/lookups/{product}/table-info")
            build = time.perf_counter() - t0
            t0 = time.perf_counter()
            first = analyst.lookup(product, key(n // 2))  # fetches the table, then one lookup
            fetch = time.perf_counter() - t0
            assert first.found and first.record == {"score": 300 + (n // 2) % 600, "defaulted": (n // 2) % 7 == 0}
        with TcpRelay(("127.0.0.1", cluster.http_port)) as relay, \
                Client(f"http://{relay.addr}", analyst_t, timeout=600) as c:
            c.lookup(product, key(1))  # this client's own copy of the table
            me, online, wire = [], [], []
            for i in range(repeat):
                t0 = time.perf_counter()
                c.me()
                me.append(time.perf_counter() - t0)
                before = sum(len(x.up) + len(x.down) for x in relay.connections)
                k = key((i * 7919) % n) if i % 2 == 0 else f"9999{i:014d}"
                t0 = time.perf_counter()
                r = c.lookup(product, k)
                online.append(time.perf_counter() - t0)
                wire.append(sum(len(x.up) + len(x.down) for x in relay.connections) - before)
                assert r.found is (i % 2 == 0)
        return {"keys": n, "capacity": info["capacity"], "label_bytes": LABEL_BYTES,
                "table_bytes": info["table_bytes"], "build_s": round(build, 2),
                "fetch_and_first_lookup_s": round(fetch, 2),
                "online_median_ms": round(1000 * statistics.median(online), 2),
                "online_p90_ms": round(1000 * percentile(online, 0.9), 2),
                "baseline_me_median_ms": round(1000 * statistics.median(me), 2),
                "online_over_baseline": round(statistics.median(online) / statistics.median(me), 1),
                "online_wire_bytes": int(statistics.median(wire)),
                "oprf_payload_bytes": 32 + 32 + 64}  # blinded point up; evaluated point and proof down
    finally:
        cluster.close()
        shutil.rmtree(root, ignore_errors=True)  # the data and the 10^6-row table are large


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keys", default="10000,100000,1000000")
    ap.add_argument("--repeat", type=int, default=40)
    args = ap.parse_args()
    rows = []
    for n in (int(x) for x in args.keys.split(",")):
        row = run(n, args.repeat)
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"\n{'keys':>9} {'table MB':>9} {'build s':>8} {'fetch s':>8} {'online ms (p90)':>16} {'x /v1/me':>9} "
          f"{'wire B/lookup':>14}")
    for r in rows:
        print(f"{r['keys']:>9} {r['table_bytes'] / 1e6:>9.1f} {r['build_s']:>8} {r['fetch_and_first_lookup_s']:>8} "
              f"{r['online_median_ms']:>8} ({r['online_p90_ms']}) {r['online_over_baseline']:>9} "
              f"{r['online_wire_bytes']:>14}")


if __name__ == "__main__":
    main()
