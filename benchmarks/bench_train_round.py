"""A federated DP training round end to end vs one plain-torch epoch over the union (issue #13 goal 7).

Three real node processes (one compute thread each, training libraries preloaded at start), each
holding ``--rows`` rows of a synthetic 20-feature binary task. Measured in the same run:

- ``plain epoch``: one epoch of non-private SGD (the same logistic regression, the same batch size)
  over the union of the three nodes' rows in this process, one thread — the baseline;
- ``first round``: a 1-round training job from submission to its released model (DP-SGD on every
  node, secure aggregation, release gate), right after the nodes came up;
- ``steady round``: (time of an R-round job − time of a 1-round job) / (R − 1), so the job's fixed
  costs (planning, preparing the rows, the final evaluation and release) cancel out.

Prints medians and the ratios to the plain epoch, then ``RESULT <json>``.
Run: .venv/bin/python benchmarks/bench_train_round.py [--rows 20000] [--rounds 4] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))

FEATURES = [f"x{i:02d}" for i in range(20)]
BATCH = 64


def _data(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.uniform(-1, 1, size=(rows, len(FEATURES)))
    w = np.linspace(-1, 1, len(FEATURES))
    y = (X @ w + rng.normal(0, 0.3, rows)) > 0
    return X, y


def _manifest(node: str, rows: int) -> str:
    cols = "\n".join(f'{n} = {{ type = "float", min = -1.0, max = 1.0, uses = ["aggregate"] }}' for n in FEATURES)
    return f"""
[node]
name = "{node}"
region = "CN-FJ"

[[datasets]]
name = "accounts"
source = "accounts.csv"
classification = "internal"
categories = ["finance"]
epsilon_budget = 1000000
delta = 0.001
min_group_size = 5
max_rows = {rows}

[datasets.columns]
{cols}
churned = {{ type = "bool", uses = ["aggregate"] }}
"""


def _csv(X: np.ndarray, y: np.ndarray) -> str:
    lines = [",".join([*FEATURES, "churned"])]
    lines += [",".join([*(f"{v:.5f}" for v in row), "true" if t else "false"]) for row, t in zip(X, y, strict=True)]
    return "\n".join(lines) + "\n"


def plain_epoch(X: np.ndarray, y: np.ndarray) -> float:
    import torch

    torch.set_num_threads(1)
    Xt, yt = torch.tensor(X, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)
    model = torch.nn.Linear(X.shape[1], 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    t = time.perf_counter()
    for i in range(0, len(Xt), BATCH):
        opt.zero_grad()
        loss_fn(model(Xt[i:i + BATCH]).squeeze(-1), yt[i:i + BATCH]).backward()
        opt.step()
    return time.perf_counter() - t


def _train(client: Any, rounds: int) -> tuple[float, int]:
    """(seconds from submission to the released model, rounds the job ran); polled every 10 ms."""
    t = time.perf_counter()
    job = client.train("accounts", model="logreg", features=FEATURES, label="churned", rounds=rounds,
                       batch_size=BATCH, lr=0.5, target_epsilon=50.0, delta=1e-5)
    job.wait(progress=False, timeout=900, poll=0.01)
    seconds = time.perf_counter() - t
    job.model()
    return seconds, int(job.model_card()["rounds_done"])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=20_000, help="rows per node")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    from e2e_helpers import start_sharing

    from xdp_compute.cli.cluster import LocalCluster

    parts = [_data(args.rows, seed) for seed in range(3)]
    root = Path(tempfile.mkdtemp(prefix="xdp-bench-train-"))
    cluster = LocalCluster(root=root, env={"XDP_HEARTBEAT_SECONDS": "1"}, node_threads=1, preload=True)
    try:
        cluster.start_gateway()
        admin, ml = cluster.token("admin", "admin"), cluster.token("analyst", "ml-team")
        nodes = []
        for j, (X, y) in enumerate(parts):
            node = f"bank-{j}"
            token = cluster.token("holder", f"{node}-holder")
            m = cluster.write_node_files(node, _manifest(node, args.rows), {"accounts.csv": _csv(X, y)})
            nodes.append((node, f"{node}-holder", token, m))
        start_sharing(cluster, admin, "accounts", nodes)
        cluster.wait_online(admin, [n for n, *_ in nodes])
        up = time.perf_counter()
        client = cluster.client(ml)
        first = _train(client, 1)[0]
        first_after_up = time.perf_counter() - up
        X = np.concatenate([p[0] for p in parts])
        y = np.concatenate([p[1] for p in parts])
        epochs, ones, many = [], [], []
        for _ in range(args.repeat):  # alternating, so a slow moment costs every setup alike
            epochs.append(plain_epoch(X, y))
            ones.append(_train(client, 1))
            many.append(_train(client, args.rounds))
        client.close()
    finally:
        cluster.close()
    epoch = statistics.median(epochs)
    steady = [(m - o) / (rm - ro) for (m, rm), (o, ro) in zip(many, ones, strict=True)]
    out = {"rows_per_node": args.rows, "plain_epoch_s": epoch, "first_job_s": first,
           "first_job_after_nodes_up_s": first_after_up, "one_round_job_s": statistics.median(o for o, _ in ones),
           "rounds_done": [r for _, r in many],
           "steady_round_s": statistics.median(steady), "steady_round_range_s": [min(steady), max(steady)],
           "steady_over_plain_epoch": statistics.median(steady) / epoch}
    print(f"3 nodes x {args.rows:,} rows, 20 features, logistic regression, batch {BATCH} (medians of "
          f"{args.repeat})")
    print(f"  plain-torch epoch over the union (1 thread)     {epoch * 1e3:9.1f} ms")
    print(f"  steady federated DP round                        {out['steady_round_s'] * 1e3:9.1f} ms   "
          f"x{out['steady_over_plain_epoch']:.2f} the plain epoch")
    print(f"  first 1-round job after the nodes came up        {first:9.2f} s (whole job: plan, prepare, "
          "round, evaluation, release)")
    print(f"  a 1-round job once warm                          {out['one_round_job_s']:9.2f} s")
    print("RESULT " + json.dumps(out))


if __name__ == "__main__":
    main()
