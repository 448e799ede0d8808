"""Scoring a private linear model: error and time of the DP-feature-sums design, same run.

(1) Error (exact, from the noise plans; no sampling): the standard deviation of the noise on a
    group's score sum ``sum_rows (w . x + b)`` for the 3-node ``visits`` dataset at epsilon = 1,
    * first version: one measurement calibrated to the analyst's *honest* row bound
      ``sum_j |w_j| max|x_j| + |b|`` (CKKS, secret weights; unsound against a lying analyst),
    * now: DP count + one DP sum per feature, combined with the weights in the SDK, without and
      with the collusion margin (t - c honest noise shares, c = 1 at 3 nodes).
(2) Time: ``Client.score`` against the plain federated query it runs (3 nodes x N rows), medians
    of ``--repeat`` runs in the same cluster. The first version's CKKS path measured 9.1-9.4x the
    plain query (issue #13), mostly sandboxed parsing of contexts and ciphertexts.

Run: .venv/bin/python benchmarks/bench_score.py [--rows 10000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
sys.path.insert(0, str(ROOT / "benchmarks"))

WEIGHTS, BIAS = [0.013, -0.0021], 0.5
FEATURES = ["age", "cost"]
EPSILON = 1.0


def noise_error() -> dict[str, float]:
    """Noise sd of one group's score sum under each design (3 nodes, all surviving)."""
    from e2e_helpers import MANIFEST

    from xdp_compute.crypto.secagg import default_threshold
    from xdp_compute.domain.manifest import parse_manifest_text
    from xdp_compute.gateway.query_service import DEFAULT_DELTA_FRACTION
    from xdp_compute.privacy import Measurement, plan_noise
    from xdp_compute.query import plan_query
    from xdp_compute.query.score import score_sql

    ds = parse_manifest_text(MANIFEST.format(node="n", region="CN-FJ", budget=10, min_group=5, categories="[]",
                                             approval="false"), check_files=False).datasets[0]
    delta, n, t = 1e-5 * DEFAULT_DELTA_FRACTION, 3, default_threshold(3)
    # First version: the SDK's honest row bound, 16 fractional bits, one score + one count measurement.
    bound = abs(BIAS) + sum(abs(w) * max(abs(c.min or 0), abs(c.max or 0))
                            for w, c in zip(WEIGHTS, (ds.column(f) for f in FEATURES), strict=True) if c)
    sens = math.ceil(bound * 2**16) + 1
    old = plan_noise(EPSILON, delta, [Measurement("score", sens, 1, sens), Measurement("count", 1, 1, 1)], t)
    old_sd = math.sqrt(float(old.measurements[0].sigma_node2) * n) / 2**16
    out = {"row_bound": bound, "first_version_sd": old_sd}
    plan = plan_query(score_sql("visits", FEATURES, None, []), ds)
    for label, honest in (("now_no_margin_sd", t), ("now_with_margin_sd", t - 1)):
        noise = plan_noise(EPSILON, delta, [Measurement(mm.key, mm.sensitivity, 1, mm.sensitivity)
                                            for mm in plan.measurements], honest)
        sig = {m.name: m.sigma_node2 for m in noise.measurements}
        var = 0.0
        for w, f in zip(WEIGHTS, FEATURES, strict=True):
            mm = next(m for m in plan.measurements if m.key == f"sum({f})")
            var += w * w * float(sig[mm.key]) * n / mm.scale**2
        out[label] = math.sqrt(var)
    return out


def timing(rows: int, repeat: int) -> dict[str, float]:
    from bench_query import three_node_cluster

    from xdp_compute.query.score import score_sql

    cluster, analyst, _, _ = three_node_cluster(rows, "xdp-bench-score-")
    try:
        c = cluster.client(analyst)
        sql = score_sql("visits", FEATURES, "age > 30", ["clinic"])
        c.query(sql, epsilon=0.1)  # warm-up
        plain, scored = [], []
        for _ in range(repeat):
            t = time.perf_counter()
            c.query(sql, epsilon=0.1)
            plain.append(time.perf_counter() - t)
            t = time.perf_counter()
            c.score("visits", FEATURES, WEIGHTS, BIAS, where="age > 30", group_by=["clinic"], epsilon=0.1)
            scored.append(time.perf_counter() - t)
        p, s = statistics.median(plain), statistics.median(scored)
        return {"rows_per_node": rows, "plain_query_ms": p * 1000, "score_ms": s * 1000, "ratio": s / p}
    finally:
        cluster.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=10_000, help="rows per node")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    err = noise_error()
    print(f"score-sum noise sd, epsilon {EPSILON}, 3 nodes (row bound {err['row_bound']:.2f}):")
    print(f"  {'first version (analyst-declared bound, unsound)':<52} {err['first_version_sd']:10.3f}")
    print(f"  {'now, DP feature sums, no collusion margin':<52} {err['now_no_margin_sd']:10.3f}"
          f"  ({err['now_no_margin_sd'] / err['first_version_sd']:.2f}x)")
    print(f"  {'now, with the margin (t - 1 honest shares)':<52} {err['now_with_margin_sd']:10.3f}"
          f"  ({err['now_with_margin_sd'] / err['first_version_sd']:.2f}x)")
    t = timing(args.rows, args.repeat)
    print(f"time, 3 nodes x {args.rows:,} rows: plain query {t['plain_query_ms']:.1f} ms, "
          f"score {t['score_ms']:.1f} ms, ratio {t['ratio']:.2f}x (first version: 9.1-9.4x)")
    print("RESULT " + json.dumps({**err, **t}))


if __name__ == "__main__":
    main()
