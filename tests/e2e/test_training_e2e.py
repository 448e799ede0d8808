"""DP federated training end to end: breast-cancer data split over 3 real node processes."""

from __future__ import annotations

import csv
import io
import signal
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest
from e2e_helpers import start_sharing
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression

from xdp_compute import Client
from xdp_compute.cli.cluster import LocalCluster

FEATURES = [f"f{i:02d}" for i in range(30)]
MAX_ROWS = 200  # each hospital's declared (public) max_rows: ~190 rows each


def bc_manifest(node: str, budget: float, bounds: list[tuple[float, float]]) -> str:
    uses = {"f01": '["aggregate", "filter"]'}  # texture may be filtered on; the others may not
    default_uses = '["aggregate"]'
    cols = "\n".join(f'{n} = {{ type = "float", min = {lo!r}, max = {hi!r}, uses = {uses.get(n, default_uses)} }}'
                      for n, (lo, hi) in zip(FEATURES, bounds, strict=True))
    return f"""
[node]
name = "{node}"
region = "CN-FJ"

[[datasets]]
name = "tumours"
source = "tumours.csv"
classification = "sensitive"
categories = ["oncology"]
epsilon_budget = {budget}
delta = 1e-5
min_group_size = 5
max_rows = {MAX_ROWS}

[datasets.columns]
{cols}
malignant = {{ type = "bool", uses = ["aggregate"] }}
"""


def start(root: Path, budget: float = 50.0, seed: str | None = None
          ) -> tuple[LocalCluster, dict[str, str], dict[str, np.ndarray]]:
    b = load_breast_cancer()
    bounds = [(float(b.data[:, i].min()), float(b.data[:, i].max())) for i in range(30)]
    env = {"XDP_HEARTBEAT_SECONDS": "0.5", "XDP_ROUND_TIMEOUT": "8"}
    if seed:
        env["XDP_TEST_NOISE_SEED"] = seed  # test-only: the same DP noise every run (a fixed-seed test)
    cluster = LocalCluster(root=root, env=env)
    cluster.start_gateway()
    tokens = {"admin": cluster.token("admin", "admin"), "ml": cluster.token("analyst", "ml-team")}
    perm = np.random.default_rng(0).permutation(len(b.target))
    parts = {}
    nodes = []
    for j, idx in enumerate(np.array_split(perm, 3)):
        node = f"hospital-{j}"
        out = io.StringIO()
        w = csv.writer(out)
        w.writerow([*FEATURES, "malignant"])
        for i in idx:
            w.writerow([*(repr(float(x)) for x in b.data[i]), "true" if b.target[i] == 0 else "false"])
        tokens[node] = cluster.token("holder", f"{node}-holder")
        m = cluster.write_node_files(node, bc_manifest(node, budget, bounds), {"tumours.csv": out.getvalue()})
        nodes.append((node, f"{node}-holder", tokens[node], m))
        parts[node] = idx
    start_sharing(cluster, tokens["admin"], "tumours", nodes)
    cluster.wait_online(tokens["admin"], list(parts))
    return cluster, tokens, parts


def node_split(node: str, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The node's own (public, per-row) train/held-out split of its rows ``idx``."""
    from xdp_compute.domain.manifest import parse_manifest_text
    from xdp_compute.node.tasks.train import HOLDOUT_FRACTION, holdout_key
    from xdp_compute.training import encode, holdout_split

    b = load_breast_cancer()
    bounds = [(float(b.data[:, i].min()), float(b.data[:, i].max())) for i in range(30)]
    ds = parse_manifest_text(bc_manifest(node, 1.0, bounds), check_files=False).datasets[0]
    spec = {"dataset": "tumours", "model": "logreg", "features": FEATURES, "label": "malignant"}
    data = {n: b.data[idx, i] for i, n in enumerate(FEATURES)}
    data["malignant"] = np.array(["true" if t == 0 else "false" for t in b.target[idx]], dtype=object)
    enc = encode(spec, [c.to_dict() for c in ds.columns], data)
    return holdout_split(enc.X, enc.y, HOLDOUT_FRACTION, holdout_key("tumours", node))


def test_dp_logreg_on_breast_cancer_and_ledger_equals_opacus(tmp_path: Path) -> None:
    import torch
    from opacus.accountants import RDPAccountant

    from xdp_compute.node.tasks.train import SGD_SHARE
    from xdp_compute.training import TrainingSpec
    from xdp_compute.training.local import count_noise_multiplier, plan_privacy

    cluster, tokens, parts = start(tmp_path, seed="breast-cancer")
    try:
        ml = Client(cluster.url, tokens["ml"])
        job = ml.train("tumours", model="logreg", features=FEATURES, label="malignant", rounds=40, lr=32.0,
                       target_epsilon=3.0, delta=1e-5)
        job.wait(progress=False, timeout=600)
        model = job.model()
        card = job.model_card()
        b = load_breast_cancer()
        X_parts, y_parts, Xtr_parts, ytr_parts = [], [], [], []
        lo = b.data.min(axis=0)
        hi = b.data.max(axis=0)
        for node, idx in parts.items():
            tr, ho = node_split(node, idx)
            scaled = (b.data[idx] - lo) / (hi - lo)
            X_parts.append(scaled[ho])
            y_parts.append((b.target[idx] == 0)[ho])
            Xtr_parts.append(scaled[tr])
            ytr_parts.append((b.target[idx] == 0)[tr])
        X, y = np.concatenate(X_parts), np.concatenate(y_parts)
        with torch.no_grad():
            p = torch.sigmoid(model(torch.tensor(X, dtype=torch.float32))).squeeze(-1).numpy()
        acc = float(((p > 0.5) == y).mean())
        plain = LogisticRegression(max_iter=5000).fit(np.concatenate(Xtr_parts), np.concatenate(ytr_parts))
        print(f"\nheld-out accuracy over the nodes' held-out rows: DP (eps=3, delta=1e-5) {acc:.3f} | "
              f"non-private on the same split {plain.score(X, y):.3f} | released DP metrics {card['metrics']}")
        assert acc >= 0.90
        assert card["rounds_done"] == 40 and not card["rounds_missing_nodes"]

        # Each ledger is charged the planned total, target_epsilon, reserved at submission; the
        # nodes' Opacus accountant for the public plan (from max_rows, not from the rows) fits in it.
        spec = TrainingSpec.from_dict({"dataset": "tumours", "model": "logreg", "features": FEATURES,
                                       "label": "malignant", "rounds": 40, "lr": 32.0,
                                       "target_epsilon": 3.0 * SGD_SHARE, "delta": 1e-5})
        with sqlite3.connect(cluster.root / "gateway.db") as c:
            spent = dict(c.execute("SELECT n.name, d.eps_spent FROM node_datasets d JOIN nodes n "
                                   "ON n.id = d.node_id").fetchall())
        plan = plan_privacy(spec, MAX_ROWS, 1e-5)
        acc_ = RDPAccountant()
        acc_.history = [(plan.noise_multiplier, plan.sample_rate, 40 * plan.steps_per_round),
                        (count_noise_multiplier(plan, 3.0, 1e-5), 1.0, 1)]
        assert 3.0 - 0.05 < acc_.get_epsilon(delta=1e-5) <= 3.0 + 1e-9
        for node in parts:
            assert spent[node] == pytest.approx(3.0, abs=1e-12), node
            assert card["epsilon_per_node"][node] == pytest.approx(spent[node], abs=1e-12)
        assert ml.verify_receipt(job.delivery)
    finally:
        cluster.close()


def test_node_killed_mid_training_and_card_names_rounds(tmp_path: Path) -> None:
    cluster, tokens, parts = start(tmp_path)
    try:
        ml = Client(cluster.url, tokens["ml"])
        job = ml.train("tumours", model="logreg", features=FEATURES, label="malignant", rounds=8,
                       target_epsilon=3.0)
        for _ in range(600):
            st = job.status()
            if (st.get("progress") or {}).get("round", 0) >= 2 or st["status"] in ("released", "failed"):
                break
            time.sleep(0.05)
        cluster.stop("hospital-2", sig=signal.SIGKILL)
        job.wait(progress=False, timeout=600)
        card = job.model_card()
        lacking = [r["round"] for r in card["rounds_missing_nodes"] if "hospital-2" in r["missing"]]
        assert card["rounds_done"] == 8 and lacking and max(lacking) == 8
        assert all("hospital-2" not in r["nodes"] for r in card["rounds"] if r["round"] in lacking)
    finally:
        cluster.close()


def test_a_job_the_budget_cannot_afford_is_refused_before_anything_runs(tmp_path: Path) -> None:
    from xdp_compute.errors import BudgetExhausted

    cluster, tokens, parts = start(tmp_path, budget=3.5)
    try:
        ml = Client(cluster.url, tokens["ml"])
        ml.query("SELECT COUNT(*) AS n FROM tumours", epsilon=0.9)  # another job used part of the budget
        with sqlite3.connect(cluster.root / "gateway.db") as c:
            before = c.execute("SELECT eps_spent, eps_reserved FROM node_datasets ORDER BY id").fetchall()
        # The whole planned cost (3.0) is reserved at submission, so a job that 2.6 left cannot pay
        # is refused then — never stopped mid-way by a charge that depends on the rows.
        with pytest.raises(BudgetExhausted):
            ml.train("tumours", model="logreg", features=FEATURES, label="malignant", rounds=10,
                     target_epsilon=3.0)
        job = ml.train("tumours", model="logreg", features=FEATURES, label="malignant", rounds=4,
                       target_epsilon=2.5)
        job.wait(progress=False, timeout=600)
        card = job.model_card()
        assert card["rounds_done"] == 4 and card["stopped_early"] is None
        with sqlite3.connect(cluster.root / "gateway.db") as c:
            rows = c.execute("SELECT eps_spent, eps_reserved, eps_budget FROM node_datasets ORDER BY id").fetchall()
        assert all(s == pytest.approx(b[0] + 2.5, abs=1e-9) and r == pytest.approx(0.0, abs=1e-12)
                   for (s, r, _), b in zip(rows, before, strict=True))
        assert hasattr(job.model(), "forward")
    finally:
        cluster.close()


def test_training_with_where_filter_and_uses_enforced(tmp_path: Path) -> None:
    from xdp_compute.errors import XdpError

    cluster, tokens, parts = start(tmp_path)
    try:
        ml = Client(cluster.url, tokens["ml"])
        # f00 is declared with uses = ["aggregate"] only: filtering on it is refused with the reason.
        with pytest.raises(XdpError) as e:
            ml.train("tumours", model="logreg", features=FEATURES[:5], label="malignant", rounds=2,
                     where="f00 > 12")
        assert e.value.status == 400 and "f00" in e.value.detail
        job = ml.train("tumours", model="logreg", features=FEATURES[:5], label="malignant", rounds=2,
                       where="f01 > 18")
        job.wait(progress=False, timeout=300)
        card = job.model_card()
        assert card["rounds_done"] == 2
        # Fewer held-out rows than without the filter: the nodes trained on the filtered rows only.
        b = load_breast_cancer()
        kept = int((b.data[:, 1] > 18).sum())
        held = sum(v["holdout_rows_noisy"] for v in card["metrics_per_node"].values())
        assert held < 0.2 * len(b.target) and abs(held - 0.2 * kept) < 0.2 * kept
    finally:
        cluster.close()
