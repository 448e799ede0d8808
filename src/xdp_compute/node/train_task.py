"""DP federated training on the node: local DP-SGD rounds, noisy FedAvg weight, noisy evaluation.

Only what secure aggregation masks (update x weight, weight) and locally noised evaluation sums
leave the node. The node's privacy is tracked in Opacus RDP format: the DP-SGD steps plus one
Gaussian release of its row count (the FedAvg weight, Gaussian mechanism with sample rate 1),
so the epsilon the gateway's ledger is charged equals ``RDPAccountant`` over exactly that history.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from xdp_compute.crypto.fixedpoint import encode as fp_encode
from xdp_compute.errors import BadRequest, BudgetExhausted, InvalidSpec
from xdp_compute.node.jobs import provider
from xdp_compute.node.query_task import noise_source
from xdp_compute.privacy import Measurement, plan_noise, sample_discrete_gaussian_vector

UPDATE_FRAC_BITS = 16
UPDATE_CLIP = float(2**40)
SGD_SHARE = 0.9          # DP-SGD is planned for 90% of the target; the count release takes the rest
HOLDOUT_FRACTION = 0.2
EVAL_SHARE = 0.5         # held-out rows are disjoint: evaluation epsilon <= training epsilon (parallel)
_jobs_lock = threading.Lock()


@dataclass
class TrainState:
    spec: Any
    trainer: Any
    X: np.ndarray
    y: np.ndarray
    Xh: np.ndarray
    yh: np.ndarray
    state: Any
    count_sigma: float
    noisy_count: float
    delta: float
    target: float
    last_used: float
    eval_used: float = 0.0
    next_cost: float | None = None  # what the next round adds to this node's epsilon (None: plan done)


def holdout_seed(dataset: str, node_name: str) -> int:
    """A public, data-independent seed: the same held-out rows for every job on this dataset, so
    evaluations of different models are comparable (the split is not a privacy mechanism)."""
    return int.from_bytes(hashlib.sha256(f"{dataset}:{node_name}".encode()).digest()[:8], "little")


def seeded_training_noise(node_name: str) -> int | None:
    """Test-only reproducible training noise (XDP_TEST_NOISE_SEED); None means the OS CSPRNG."""
    import logging
    import os

    seed = os.environ.get("XDP_TEST_NOISE_SEED")
    if not seed:
        return None
    logging.getLogger("xdp.node.train").warning("XDP_TEST_NOISE_SEED is set: training noise is reproducible "
                                                "and NOT private (tests only)")
    return int.from_bytes(hashlib.sha256(f"{seed}:{node_name}".encode()).digest()[:4], "little") >> 1


def _history(ts: TrainState) -> list[tuple[float, float, int]]:
    hist = list(ts.state.history) if ts.state is not None else []
    return [*hist, (ts.count_sigma, 1.0, 1)]


def epsilon_of(ts: TrainState) -> float:
    """Opacus RDP epsilon of everything this node released for the job (SGD steps + count)."""
    from xdp_compute.training.local import epsilon_for_history

    return float(epsilon_for_history(_history(ts), ts.delta))


def _count_sigma(plan: Any, target: float, delta: float) -> float:
    """Smallest Gaussian noise multiplier for the count so that all planned steps stay <= target."""
    from xdp_compute.training.local import epsilon_for_history

    sgd = [(plan.noise_multiplier, plan.sample_rate, plan.planned_steps)]
    lo, hi = 0.5, 1e5
    if epsilon_for_history([*sgd, (hi, 1.0, 1)], delta) > target:
        raise InvalidSpec("target_epsilon is too small for this node's data", field="target_epsilon")
    for _ in range(60):
        mid = math.sqrt(lo * hi)
        if epsilon_for_history([*sgd, (mid, 1.0, 1)], delta) <= target:
            hi = mid
        else:
            lo = mid
    return hi


def load_rows(executor: Any, spec: Any, ds: Any, where_plan: Any = None) -> dict[str, np.ndarray]:
    """The spec's feature and label columns from the holder's own engine (declared columns only),
    filtered by the analyst's WHERE — rendered by the same planner and pushdown as queries, after
    this node re-validated it against its own manifest (filter uses, declared values)."""
    import sqlglot
    from sqlglot import exp

    from xdp_compute.node.sources import column_map_for, open_source
    from xdp_compute.query import QueryPlan, local_sql
    from xdp_compute.query.plan import validate_plan_for

    wanted = [*spec.features, spec.label]
    with open_source(executor.manifest, ds) as src:
        actual = {c.lower(): c for c in src.column_names()}
        missing = [c for c in wanted if c.lower() not in actual]
        if missing:
            raise InvalidSpec(f"column {missing[0]!r} is missing from this node's source", field="features")
        if where_plan is None:
            cols = ", ".join('"' + actual[c.lower()].replace('"', '""') + '"' for c in wanted)
            sql = f"SELECT {cols} FROM {src.relation_sql()}"
        else:
            plan = validate_plan_for(QueryPlan.from_dict(where_plan), ds)
            counted = local_sql(plan, src.relation_sql(), src.dialect, column_map=column_map_for(plan, src))
            # The pushdown's inner SELECT holds the filtered rows; project the wanted columns from it.
            inner = sqlglot.parse_one(counted, read=src.dialect).find(exp.Subquery)
            if inner is None or not isinstance(inner.this, exp.Select):
                raise BadRequest("could not build the filtered row query")
            sql = inner.this.select(*(exp.column(actual[c.lower()], table="src", quoted=True) for c in wanted),
                                    append=False).sql(dialect=src.dialect)
        rows = src.execute(sql)
    data: dict[str, np.ndarray] = {}
    for i, name in enumerate(wanted):
        data[name] = np.asarray([r[i] for r in rows], dtype=object)
    return data


def prepare(executor: Any, job_id: str, header: dict[str, Any]) -> dict[str, Any]:
    import os

    import torch

    from xdp_compute.training import LocalTrainer, TrainingSpec, encode, split_holdout
    from xdp_compute.training.local import epsilon_for_history

    spec = TrainingSpec.from_dict(header.get("spec") or {})
    with _jobs_lock:
        known = executor.state.get("train", {}).get(job_id)
    if known is not None:
        # Asked again (our first answer was lost, or we were away): keep the state we have, so
        # the count noise is drawn once and the accountant keeps its history.
        known.last_used = time.time()
        return {"next_cost": known.next_cost, "delta": known.delta, "rounds_planned": known.spec.rounds}
    ds = executor.manifest.dataset(spec.dataset)
    if ds is None:
        raise BadRequest(f"this node does not hold dataset {spec.dataset!r}")
    columns = [c.to_dict() for c in ds.columns]
    spec.validate(columns)
    enc = encode(spec, columns, load_rows(executor, spec, ds, header.get("where_plan")))
    n = int(enc.X.shape[0])
    tr, ho = split_holdout(n, HOLDOUT_FRACTION, holdout_seed(spec.dataset, executor.manifest.node_name))
    delta = float(header.get("delta") or spec.delta or ds.delta * 1e-3)
    target = float(spec.target_epsilon)
    sgd_spec = replace(spec, target_epsilon=target * SGD_SHARE)
    test_seed = seeded_training_noise(executor.manifest.node_name)
    trainer = LocalTrainer(sgd_spec, int(header["n_features"]), int(header["n_classes"]), default_delta=delta,
                           seed=test_seed)
    plan = trainer.plan(len(tr))
    sigma_c = _count_sigma(plan, target, delta)
    # The FedAvg weight: the row count through the Gaussian mechanism (released once, reused).
    gen = torch.Generator().manual_seed(test_seed if test_seed is not None else
                                        int.from_bytes(os.urandom(8), "little"))
    noisy = float(len(tr) + sigma_c * float(torch.randn((), generator=gen)))
    ts = TrainState(spec, trainer, enc.X[tr], enc.y[tr], enc.X[ho], enc.y[ho], None, sigma_c, noisy, delta,
                    target, time.time())
    # The first round also releases the noisy count: its cost is in the first charge.
    first = float(epsilon_for_history([(plan.noise_multiplier, plan.sample_rate, plan.steps_per_round),
                                       (sigma_c, 1.0, 1)], delta))
    ts.next_cost = first
    with _jobs_lock:
        jobs = executor.state.setdefault("train", {})
        for old in [k for k, v in jobs.items() if time.time() - v.last_used > 3600]:
            del jobs[old]
        jobs[job_id] = ts
    return {"next_cost": first, "delta": delta, "rounds_planned": spec.rounds}


def _state(executor: Any, job_id: str) -> TrainState:
    with _jobs_lock:
        ts = executor.state.get("train", {}).get(job_id)
    if ts is None:
        raise BadRequest(f"no training state for job {job_id} on this node (restarted?)")
    ts.last_used = time.time()
    return ts


def noisy_eval(executor: Any, ts: TrainState, flat: np.ndarray, epsilon: float) -> dict[str, float]:
    """Held-out count, correct and loss sum with local discrete Gaussian noise at ``epsilon``."""
    sums = ts.trainer.evaluate(flat, ts.Xh, ts.yh)
    frac = 8
    bound = float(sums.loss_bound)
    second = sums.correct if sums.correct is not None else sums.sq_err_sum
    measurements = [Measurement("count", 1, 1, 1), Measurement("loss", math.ceil(bound * 2**frac) + 1, 1),
                    Measurement("second", 2**frac + 1, 1)]
    if epsilon <= 0:
        return {}
    # Held-out rows are disjoint from training rows (parallel composition); all evaluations of the
    # job together stay within EVAL_SHARE of the training epsilon and within delta.
    plan = plan_noise(epsilon, ts.delta / (ts.spec.rounds + 1), measurements, 1)
    ts.eval_used += plan.epsilon
    rng = noise_source(executor.manifest.node_name)
    sig = {m.name: m.sigma_node2 for m in plan.measurements}
    out = {
        "count": sums.count + sample_discrete_gaussian_vector(sig["count"], 1, rng)[0],
        "loss_sum": (round(sums.loss_sum * 2**frac) + sample_discrete_gaussian_vector(sig["loss"], 1, rng)[0])
        / 2**frac,
        "second": (round(float(second) * 2**frac) + sample_discrete_gaussian_vector(sig["second"], 1, rng)[0])
        / 2**frac,
        "kind": "correct" if sums.correct is not None else "sq_err",
        "epsilon": plan.epsilon,
    }
    return out


@provider("train_begin")
def train_begin(executor: Any, job_id: str, header: dict[str, Any], blobs: dict[str, bytes]
                ) -> tuple[np.ndarray, dict[str, Any]]:
    """One round: DP-SGD from the global model; returns [update * w, w] in fixed point."""
    ts = _state(executor, job_id)
    global_flat = np.frombuffer(blobs.get("global", b""), dtype="<f8").copy()
    # The gateway reserved this round's exact cost on the node's ledger before sending the task;
    # the trainer still refuses rounds beyond its plan.
    budget_left = math.inf
    before = epsilon_of(ts) if ts.state is not None else 0.0
    res = ts.trainer.run_round(global_flat, ts.X, ts.y, ts.state, budget_left)
    ts.state = res.state
    after = epsilon_of(ts)
    eval_eps = EVAL_SHARE / 2 * (after - before)  # the other half is kept for the final evaluation
    metrics = noisy_eval(executor, ts, global_flat, eval_eps)
    contrib = np.concatenate([np.clip(res.update * max(ts.noisy_count, 1.0), -UPDATE_CLIP, UPDATE_CLIP),
                              [max(ts.noisy_count, 1.0)]])
    vec = fp_encode(contrib, UPDATE_FRAC_BITS)
    nxt = None
    try:
        plan, _, _ = ts.trainer.next_round(ts.state, len(ts.X))
        from xdp_compute.training.local import epsilon_for_history

        # Exactly what the next round will add to this node's Opacus epsilon (count step included).
        nxt = float(epsilon_for_history([*_history(ts), (plan.noise_multiplier, plan.sample_rate,
                                                          plan.steps_per_round)], ts.delta)) - after
    except BudgetExhausted:
        nxt = None  # the planned rounds are done
    ts.next_cost = nxt
    return vec, {"epsilon": after, "epsilon_round": after - before, "steps": res.steps, "next_cost": nxt,
                 "metrics": metrics}


def train_eval(executor: Any, job_id: str, header: dict[str, Any], blobs: dict[str, bytes]) -> Any:
    """Final held-out metrics of the released model, locally noised; then forget the job."""
    from xdp_compute.node.executors import TaskOutcome

    ts = _state(executor, job_id)
    flat = np.frombuffer(blobs.get("global", b""), dtype="<f8").copy()
    spent = epsilon_of(ts) if ts.state is not None else 0.0
    metrics = noisy_eval(executor, ts, flat, max(EVAL_SHARE * spent - ts.eval_used, 0.0))
    with _jobs_lock:
        executor.state.get("train", {}).pop(job_id, None)
    return TaskOutcome(ok=True, header={"metrics": metrics, "epsilon": spent})


def install(executor: Any) -> None:
    from xdp_compute.node.executors import TaskOutcome

    executor.handlers["train_prepare"] = lambda job_id, header, blobs: TaskOutcome(
        ok=True, header=prepare(executor, job_id, header))
    executor.handlers["train_eval"] = lambda job_id, header, blobs: train_eval(executor, job_id, header, blobs)
