"""A node's training answers depend on public inputs only (issue #11, items 2 and 3).

The node plans DP-SGD and its count release from the spec, delta and its dataset's declared
``max_rows`` before reading a row: whatever WHERE the analyst sends — matching all rows, some, or
none — the node takes part and answers with the same costs, steps and plan; a delta >= 1/max_rows
is refused the same way whatever the rows.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from xdp_compute.contract import (
    SecAggSession,
    TrainBegin,
    TrainEval,
    TrainEvaluated,
    TrainPrepare,
    TrainPrepared,
    TrainRoundBegun,
    decode_reply,
    encode,
)
from xdp_compute.domain.manifest import load_manifest
from xdp_compute.node.executors import TaskExecutor
from xdp_compute.query import plan_query

pytest.importorskip("torch")

MANIFEST = """
[node]
name = "{node}"
region = "CN-FJ"

[[datasets]]
name = "patients"
source = "patients.csv"
classification = "internal"
epsilon_budget = 10
delta = 1e-3
max_rows = 500

[datasets.columns]
age      = {{ type = "int",      min = 0, max = 100, uses = ["aggregate", "filter"] }}
income   = {{ type = "float",    min = 0, max = 1000, uses = ["aggregate"] }}
sick     = {{ type = "bool",     uses = ["aggregate", "filter"] }}
"""
# delta budget 1e-3: the node's own ledger charges each job's delta (1e-5), and this file runs
# several jobs on one node.
SPEC = {"dataset": "patients", "model": "logreg", "features": ["age", "income"], "label": "sick",
        "rounds": 2, "target_epsilon": 2.0}


@pytest.fixture
def executor(tmp_path: Path) -> TaskExecutor:
    rng = np.random.default_rng(0)
    with (tmp_path / "patients.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["age", "income", "sick"])
        for _ in range(150):
            age = int(rng.integers(0, 60))  # nobody is over 60
            w.writerow([age, round(float(rng.uniform(0, 1000)), 2), "true" if age > 30 else "false"])
    (tmp_path / "node.toml").write_text(MANIFEST.format(node="h0"))
    ex = TaskExecutor(load_manifest(tmp_path / "node.toml"))
    ex.node_id = "id-h0"
    return ex


def _ask(ex: TaskExecutor, request: Any, job_id: str) -> Any:
    header, blobs = encode(request)
    out = ex.handle(request.KIND, job_id, header, blobs)
    assert out.ok, out.error
    return decode_reply(request.KIND, out.header, out.blobs)


def _prepare(ex: TaskExecutor, where: str | None, delta: float = 1e-5) -> TrainPrepare:
    plan = None
    if where is not None:
        plan = plan_query(f"SELECT COUNT(*) FROM patients WHERE {where}", ex.manifest.datasets[0]).to_dict()
    return TrainPrepare(spec=SPEC, n_features=2, n_classes=2, delta=delta, where_plan=plan)


def _trace(ex: TaskExecutor, where: str | None, job_id: str) -> list[tuple[Any, ...]]:
    """Everything public the node answers over a whole job."""
    prep = _ask(ex, _prepare(ex, where), job_id)
    assert isinstance(prep, TrainPrepared)
    trace: list[tuple[Any, ...]] = [("prepared", prep.next_cost, prep.delta, prep.rounds_planned)]
    params = np.zeros(3, dtype="<f8").tobytes()
    left = 2.0
    for rnd in (1, 2):
        session = SecAggSession(session_id=f"{job_id}:round{rnd}", participants=["id-h0", "id-other"],
                                vector_length=4, threshold=2)
        reply = _ask(ex, TrainBegin(round=rnd, epsilon_reserved=left, params=params, secagg=session), job_id)
        assert isinstance(reply, TrainRoundBegun)
        trace.append(("round", rnd, reply.epsilon, reply.epsilon_round, reply.steps, reply.next_cost,
                      sorted(reply.metrics)))
        left -= reply.epsilon_round
    final = _ask(ex, TrainEval(params=params), job_id)
    assert isinstance(final, TrainEvaluated)
    trace.append(("evaluated", final.epsilon, sorted(final.metrics)))
    return trace


def test_the_node_answers_the_same_for_all_some_or_no_matching_rows(executor: TaskExecutor) -> None:
    everyone = _trace(executor, None, "job-all")
    some = _trace(executor, "age > 40", "job-some")
    nobody = _trace(executor, "age > 90", "job-none")  # no row matches: before the fix, prepare failed
    assert everyone == some == nobody
    assert everyone[0][1] is not None and everyone[-1][1] <= 2.0 + 1e-9


@pytest.mark.parametrize("where", [None, "age > 90"])
def test_delta_at_or_above_one_over_max_rows_is_refused_whatever_the_rows(executor: TaskExecutor,
                                                                          where: str | None) -> None:
    header, blobs = encode(_prepare(executor, where, delta=1 / 500))
    out = executor.handle("train_prepare", "job-d", header, blobs)
    assert not out.ok and "max_rows = 500" in out.error
