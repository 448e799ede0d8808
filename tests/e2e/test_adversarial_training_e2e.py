"""An adversarial ML team against real node processes (issue #11, items 2, 3 and 5 for training).

Before the fix, a training job's per-round charges were a deterministic, injective function of
each node's WHERE-filtered row count (q = batch / n, sigma and steps from n), readable live from
``GET /v1/budget``; a node with no matching rows (or delta >= 1/n) failed ``train_prepare`` and
was named ``missing`` in the released model card, and below 2 nodes the job was refunded.

Here two jobs that differ only in their WHERE — different filtered counts on every node, and one
node with no matching row at all — must leave the same observable trace: the same charges (GET
/v1/budget before/after and the ledger's reservation rows), the same participation and non-numeric
model card, and both released (neither failed nor refunded).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from e2e_helpers import start_sharing

from xdp_compute import Client
from xdp_compute.cli.cluster import LocalCluster

pytestmark = pytest.mark.slow

MAX_ROWS = 200  # each node's declared (public) maximum row count for the dataset
SIZES = {"ward-0": 110, "ward-1": 130, "ward-2": 120}
# The groups each node's rows fall in: with WHERE grp < 5, ward-0 keeps all its rows, ward-1 about
# 2/7 of them and ward-2 none.
GROUPS = {"ward-0": (0, 5), "ward-1": (3, 10), "ward-2": (5, 10)}
FEATURES = ["x0", "x1", "x2", "x3"]
TRAIN = {"model": "logreg", "features": FEATURES, "label": "sick", "rounds": 3, "target_epsilon": 1.0,
         "delta": 1e-5}
# The fields of the model card that are not DP-noised numbers: they must not depend on the data.
PUBLIC_CARD_FIELDS = ("architecture", "dataset", "nodes", "rounds_planned", "rounds_done", "rounds",
                      "rounds_missing_nodes", "epsilon_per_node", "delta", "target_epsilon", "stopped_early",
                      "released_params", "privacy")

MANIFEST = """
[node]
name = "{node}"
region = "CN-FJ"

[[datasets]]
name = "wards"
source = "wards.csv"
classification = "sensitive"
categories = ["health"]
epsilon_budget = 100.0
delta = 1e-4
min_group_size = 5
max_rows = {max_rows}

[datasets.columns]
x0   = {{ type = "float", min = 0, max = 1, uses = ["aggregate"] }}
x1   = {{ type = "float", min = 0, max = 1, uses = ["aggregate"] }}
x2   = {{ type = "float", min = 0, max = 1, uses = ["aggregate"] }}
x3   = {{ type = "float", min = 0, max = 1, uses = ["aggregate"] }}
grp  = {{ type = "int", min = 0, max = 9, uses = ["filter"] }}
sick = {{ type = "bool", uses = ["aggregate"] }}
"""


def wards_csv(node: str, seed: int) -> str:
    rng = np.random.default_rng(seed)
    n = SIZES[node]
    lo, hi = GROUPS[node]
    X = rng.uniform(0, 1, size=(n, 4))
    sick = X @ np.array([2.0, -1.0, 1.0, 0.0]) + rng.normal(0, 0.3, n) > 1.0
    grp = rng.integers(lo, hi, n)
    lines = ["x0,x1,x2,x3,grp,sick"]
    lines += [f"{X[i, 0]:.4f},{X[i, 1]:.4f},{X[i, 2]:.4f},{X[i, 3]:.4f},{grp[i]},{str(bool(sick[i])).lower()}"
              for i in range(n)]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def wards(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalCluster, dict[str, str], dict[str, str]]]:
    root = tmp_path_factory.mktemp("adversarial-training")
    cluster = LocalCluster(root=root, env={"XDP_HEARTBEAT_SECONDS": "0.5", "XDP_ROUND_TIMEOUT": "8"})
    try:
        cluster.start_gateway()
        tokens = {"admin": cluster.token("admin", "admin"), "ml": cluster.token("analyst", "ml-team")}
        files = {}
        nodes = []
        for i, node in enumerate(SIZES):
            tokens[node] = cluster.token("holder", f"{node}-holder")
            files[node] = wards_csv(node, 10 + i)
            m = cluster.write_node_files(node, MANIFEST.format(node=node, max_rows=MAX_ROWS),
                                         {"wards.csv": files[node]})
            nodes.append((node, f"{node}-holder", tokens[node], m))
        start_sharing(cluster, tokens["admin"], "wards", nodes)
        cluster.wait_online(tokens["admin"], list(SIZES))
        yield cluster, tokens, files
    finally:
        cluster.close()


def _matching(files: dict[str, str], pred: Any) -> dict[str, int]:
    out = {}
    for node, text in files.items():
        rows = [line.split(",") for line in text.strip().splitlines()[1:]]
        out[node] = sum(1 for r in rows if pred(int(r[4])))
    return out


def _budget(ml: Client) -> dict[str, Any]:
    b = ml.budget("wards")
    return {"nodes": {n["node"]: (n["epsilon_spent"], n["epsilon_reserved"], n["delta_spent"]) for n in b["nodes"]},
            "analyst": (b["analyst"].get("epsilon_spent", 0.0), b["analyst"].get("epsilon_reserved", 0.0),
                        b["analyst"].get("delta_spent", 0.0))}


def _diff(after: dict[str, Any], before: dict[str, Any]) -> dict[str, Any]:
    return {"nodes": {n: tuple(round(a - b, 12) for a, b in zip(after["nodes"][n], before["nodes"][n], strict=True))
                      for n in after["nodes"]},
            "analyst": tuple(round(a - b, 12) for a, b in zip(after["analyst"], before["analyst"], strict=True))}


def _ledger_rows(cluster: LocalCluster, job_id: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(cluster.root / "gateway.db") as c:
        return sorted(c.execute(
            "SELECT COALESCE(n.name, 'analyst'), r.eps, r.delta, r.state FROM reservations r "
            "LEFT JOIN node_datasets d ON d.id = r.node_dataset_id LEFT JOIN nodes n ON n.id = d.node_id "
            "WHERE r.job_id = ?", (job_id,)).fetchall())


def _run(cluster: LocalCluster, ml: Client, where: str) -> dict[str, Any]:
    before = _budget(ml)
    job = ml.train("wards", where=where, **TRAIN)
    at_submission = _budget(ml)  # read live, as the attack did
    live = [at_submission]
    for _ in range(2400):
        st = job.status()
        live.append(_budget(ml))
        if st["status"] not in ("reserved", "running"):
            break
        time.sleep(0.05)
    job.wait(progress=False, timeout=600)
    after = _budget(ml)
    return {"job": job, "card": job.model_card(), "status": job.status()["status"],
            "reserved_at_submission": _diff(at_submission, before), "charged": _diff(after, before),
            "live": [_diff(x, before) for x in live], "ledger": _ledger_rows(cluster, job.job_id)}


def test_two_jobs_differing_only_in_where_leave_the_same_trace(
        wards: tuple[LocalCluster, dict[str, str], dict[str, str]]) -> None:
    cluster, tokens, files = wards
    everyone = _matching(files, lambda g: g >= 0)
    few = _matching(files, lambda g: g < 5)
    assert everyone == SIZES and few["ward-0"] == SIZES["ward-0"] and 0 < few["ward-1"] < SIZES["ward-1"]
    assert few["ward-2"] == 0  # one node has no matching row at all
    with Client(cluster.url, tokens["ml"]) as ml:
        a = _run(cluster, ml, "grp >= 0")
        b = _run(cluster, ml, "grp < 5")
    print(f"\ncharges, all rows {everyone}: {a['charged']}\ncharges, WHERE grp < 5 {few}: {b['charged']}")
    # Neither job failed, was refused or refunded.
    assert a["status"] == b["status"] == "released"
    assert all(state == "committed" for *_, state in a["ledger"] + b["ledger"])
    # Identical charges: the ledger's reservation rows, and GET /v1/budget before/after.
    assert [r[:3] for r in a["ledger"]] == [r[:3] for r in b["ledger"]]
    assert a["charged"] == b["charged"]
    # The whole planned cost is held at submission (the public plan), on every node alike.
    assert a["reserved_at_submission"] == b["reserved_at_submission"]
    node_eps = {n: v[0] + v[1] for n, v in a["reserved_at_submission"]["nodes"].items()}
    assert node_eps == {n: pytest.approx(TRAIN["target_epsilon"], abs=1e-12) for n in SIZES}
    # Whatever was read live while the jobs ran was the same set of values for both.
    assert {repr(x) for x in a["live"]} == {repr(x) for x in b["live"]}
    # The same participation and the same non-numeric model card; nobody is "missing".
    for key in PUBLIC_CARD_FIELDS:
        assert a["card"][key] == b["card"][key], key
    assert a["card"]["nodes"] == sorted(SIZES) and not a["card"]["rounds_missing_nodes"]
    assert all(r["nodes"] == sorted(SIZES) for r in b["card"]["rounds"])
    assert set(b["card"]["metrics_per_node"]) == set(SIZES)


def test_delta_too_large_for_the_declared_rows_is_refused_before_anything_is_reserved(
        wards: tuple[LocalCluster, dict[str, str], dict[str, str]]) -> None:
    cluster, tokens, _ = wards
    with Client(cluster.url, tokens["ml"]) as ml:
        before = _budget(ml)
        # delta >= 1 / max_rows (declared, public) is refused at submission, whatever the WHERE.
        for where in ("grp >= 0", "grp < 5", "grp > 100"):
            r = httpx.post(cluster.url + "/v1/trainings", timeout=60,
                           headers={"authorization": f"Bearer {tokens['ml']}"},
                           json={"dataset": "wards", **TRAIN, "delta": 1.0 / MAX_ROWS, "where": where})
            assert r.status_code == 400, r.text
            assert "delta" in r.text and "max_rows" in r.text
        assert _budget(ml) == before
