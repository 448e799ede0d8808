"""DP federated training on the node: local DP-SGD rounds, noisy FedAvg weight, noisy evaluation.

Only what secure aggregation masks (update x weight, weight) and locally noised evaluation sums
leave the node. The node's privacy is tracked in Opacus RDP format: the DP-SGD steps plus one
Gaussian release of its row count (the FedAvg weight, Gaussian mechanism with sample rate 1).

The observable rule (DESIGN.md): everything this node tells the gateway — each round's cost, the
next cost, the steps, whether it takes part — is a function of public inputs only: the spec, the
delta and the dataset's declared ``max_rows``; the plan is made before a row is read. A node
with few or no rows matching the WHERE takes part like any other: its DP-SGD steps are the same
(empty samples, the same noise), its FedAvg weight is its noisy count (floored at 1), and its
held-out metrics are noisy sums over its (perhaps empty) held-out rows. Row values never make a
task fail: features are encoded per row (missing -> mid-range, out of range -> clipped).

Tasks: ``train_prepare`` (load and encode the rows, plan DP-SGD, say what round 1 costs),
``train_begin`` (one round; round 0 of its secure aggregation) and ``train_eval`` (noisy held-out
metrics of the released model; then the node forgets the job). torch is imported on first use.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from xdp_compute.contract import (
    TrainBegin,
    TrainEval,
    TrainEvaluated,
    TrainPrepare,
    TrainPrepared,
    TrainRoundBegun,
)
from xdp_compute.crypto.fixedpoint import encode as fp_encode
from xdp_compute.domain.manifest import DatasetSpec
from xdp_compute.errors import BadRequest, BudgetExhausted, InvalidSpec
from xdp_compute.node.sources import column_map_for, open_source
from xdp_compute.node.tasks.context import NodeContext
from xdp_compute.node.tasks.query import noise_source
from xdp_compute.node.tasks.secagg import SecAggSessions
from xdp_compute.privacy import Measurement, plan_noise, sample_discrete_gaussian_vector
from xdp_compute.query import QueryPlan, validate_plan_for
from xdp_compute.query.rows import rows_sql
from xdp_compute.training import TrainingSpec, holdout_split
from xdp_compute.training import encode as encode_features

UPDATE_FRAC_BITS = 16
UPDATE_CLIP = float(2**40)
SGD_SHARE = 0.9          # DP-SGD is planned for 90% of the target; the count release takes the rest
HOLDOUT_FRACTION = 0.2
# The held-out rows are chosen per row (``holdout_split``), so each row feeds either the training
# side (DP-SGD + count, <= target_epsilon) or the evaluation side (every noisy metric of the job,
# <= EVAL_SHARE * target_epsilon by basic composition, and delta split over the rounds + 1
# evaluations): by parallel composition the job's loss for any one row is at most target_epsilon,
# which is what the gateway reserves. All the evaluation budgets below are fixed by the public plan.
EVAL_SHARE = 0.5
RESERVATION_SLACK = 1e-9  # float rounding between the node's accountant and the gateway's ledger
IDLE_JOB_SECONDS = 3600.0

log = logging.getLogger("xdp.node.train")


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
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)  # one round at a time


def holdout_key(dataset: str, node_name: str) -> bytes:
    """The public key of this node's per-row hold-out PRF for a dataset: the same row is held
    out in every job (evaluations of different models compare), and a row's side depends on
    that row alone (``holdout_split``)."""
    return hashlib.sha256(f"xdp-holdout-v2:{dataset}:{node_name}".encode()).digest()


def training_digest(request: TrainPrepare) -> str:
    """Digest of what a training job asks of this node (spec, delta, shapes, WHERE plan): its journal key."""
    body = {"spec": request.spec, "delta": request.delta, "n_features": request.n_features,
            "n_classes": request.n_classes, "where_plan": request.where_plan}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def seeded_training_noise(node_name: str) -> int | None:
    """Test-only reproducible training noise (XDP_TEST_NOISE_SEED); None means the OS CSPRNG."""
    seed = os.environ.get("XDP_TEST_NOISE_SEED")
    if not seed:
        return None
    log.warning("XDP_TEST_NOISE_SEED is set: training noise is reproducible and NOT private (tests only)")
    return int.from_bytes(hashlib.sha256(f"{seed}:{node_name}".encode()).digest()[:4], "little") >> 1


def _history(state: Any, count_sigma: float) -> list[tuple[float, float, int]]:
    hist = list(state.history) if state is not None else []
    return [*hist, (count_sigma, 1.0, 1)]


def _epsilon(ts: TrainState, state: Any) -> float:
    """Opacus RDP epsilon of everything this node released for the job after ``state``; 0 before round 1."""
    from xdp_compute.training.local import epsilon_for_history

    if state is None:
        return 0.0
    return float(epsilon_for_history(_history(state, ts.count_sigma), ts.delta))


def epsilon_of(ts: TrainState) -> float:
    """Opacus RDP epsilon of everything this node released for the job (SGD steps + count)."""
    return _epsilon(ts, ts.state)


def load_rows(node: NodeContext, spec: TrainingSpec, ds: DatasetSpec,
              where_plan: dict[str, Any] | None = None) -> dict[str, np.ndarray]:
    """The spec's feature and label columns from the holder's own engine (declared columns only),
    filtered by the analyst's WHERE — the pushdown's own predicate (``query.rows``), after this node
    re-validated the WHERE plan against its own manifest (filter uses, declared values)."""
    wanted = [*spec.features, spec.label]
    plan = validate_plan_for(QueryPlan.from_dict(where_plan), ds) if where_plan is not None else None
    with open_source(node.manifest, ds) as src:
        actual = {c.lower(): c for c in src.column_names()}
        missing = [c for c in wanted if c.lower() not in actual]
        if missing:
            raise InvalidSpec(f"column {missing[0]!r} is missing from this node's source", field="features")
        column_map = {c: actual[c.lower()] for c in wanted}
        if plan is not None:
            column_map.update(column_map_for(plan, src))
        rows = src.execute(rows_sql(ds, wanted, src.relation_sql(), src.dialect, plan=plan, column_map=column_map))
    return {name: np.asarray([r[i] for r in rows], dtype=object) for i, name in enumerate(wanted)}


def noisy_eval(node: NodeContext, ts: TrainState, flat: np.ndarray, epsilon: float) -> dict[str, Any]:
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
    rng = noise_source(node)
    sig = {m.name: m.sigma_node2 for m in plan.measurements}
    return {
        "count": sums.count + sample_discrete_gaussian_vector(sig["count"], 1, rng)[0],
        "loss_sum": (round(sums.loss_sum * 2**frac) + sample_discrete_gaussian_vector(sig["loss"], 1, rng)[0])
        / 2**frac,
        "second": (round(float(second) * 2**frac) + sample_discrete_gaussian_vector(sig["second"], 1, rng)[0])
        / 2**frac,
        "kind": "correct" if sums.correct is not None else "sq_err",
        "epsilon": plan.epsilon,
        # The noise variance per unit (public: from the plan), for the released metrics' intervals.
        "sigma_node2": {name: float(v) for name, v in sig.items()},
    }


def _params(blob: bytes) -> np.ndarray:
    if len(blob) % 8:
        raise BadRequest("params must be float64 little-endian values (a multiple of 8 bytes)")
    return np.frombuffer(blob, dtype="<f8").copy()


class TrainTasks:
    """``train_prepare``, ``train_begin`` and ``train_eval``; holds each job's TrainState between rounds."""

    def __init__(self, node: NodeContext, sessions: SecAggSessions) -> None:
        self.node, self.sessions = node, sessions
        self._jobs: dict[str, TrainState] = {}
        self._lock = threading.Lock()

    def _state(self, job_id: str) -> TrainState:
        with self._lock:
            ts = self._jobs.get(job_id)
        if ts is None:
            raise BadRequest(f"no training state for job {job_id} on this node (restarted?)")
        ts.last_used = time.time()
        return ts

    def prepare(self, job_id: str, request: TrainPrepare) -> TrainPrepared:
        """Plan DP-SGD and the count release from public inputs, then load, encode and split the rows."""
        from xdp_compute.training import LocalTrainer, TrainingRandomness
        from xdp_compute.training.local import count_noise_multiplier, epsilon_for_history

        spec = TrainingSpec.from_dict(request.spec)
        with self._lock:
            known = self._jobs.get(job_id)
        if known is not None:
            # Asked again (our first answer was lost, or we were away): keep the state we have, so
            # the count noise is drawn once and the accountant keeps its history.
            known.last_used = time.time()
            return TrainPrepared(next_cost=known.next_cost, delta=known.delta, rounds_planned=known.spec.rounds)
        ds = self.node.manifest.dataset(spec.dataset)
        if ds is None:
            raise BadRequest(f"this node does not hold dataset {spec.dataset!r}")
        columns = [c.to_dict() for c in ds.columns]
        spec.validate(columns)
        delta = float(request.delta)
        target = float(spec.target_epsilon)
        node_name = self.node.manifest.node_name
        test_seed = seeded_training_noise(node_name)
        # 1. The plan, before a row is read: q, sigma, steps and the count's noise from the spec,
        #    delta and the declared max_rows (this node's own manifest) — so whatever this node
        #    answers or refuses here cannot depend on its rows.
        trainer = LocalTrainer(replace(spec, target_epsilon=target * SGD_SHARE), request.n_features,
                               request.n_classes, max_rows=ds.max_rows, default_delta=delta, seed=test_seed)
        plan = trainer.plan()
        sigma_c = count_noise_multiplier(plan, target, delta)
        next_cost = float(epsilon_for_history([(plan.noise_multiplier, plan.sample_rate, plan.steps_per_round),
                                               (sigma_c, 1.0, 1)], delta))
        # The job's whole planned loss on this node's rows is (target_epsilon, delta) (see
        # EVAL_SHARE): charged to this node's own ledger and journaled now, before a row is read,
        # and refused past this node's own budget whatever the gateway reserved (issue #12).
        self.node.ledger.charge(ds, job_id=job_id, kind="training", principal=request.principal,
                                plan_digest=training_digest(request), epsilon=target, delta=delta)
        # 2. The rows (any number, none included), each row's side by its own content.
        enc = encode_features(spec, columns, load_rows(self.node, spec, ds, request.where_plan))
        tr, ho = holdout_split(enc.X, enc.y, HOLDOUT_FRACTION, holdout_key(spec.dataset, node_name))
        # 3. The FedAvg weight: the training-row count through the Gaussian mechanism (released once,
        #    inside secure aggregation), noise from a fresh ChaCha20 stream keyed from the OS.
        rng = TrainingRandomness.from_os() if test_seed is None else TrainingRandomness.seeded(f"count:{test_seed}")
        noisy = float(len(tr) + sigma_c * float(rng.normal(1)[0]))
        ts = TrainState(spec, trainer, enc.X[tr], enc.y[tr], enc.X[ho], enc.y[ho], None, sigma_c, noisy, delta,
                        target, time.time())
        # The first round also releases the noisy count: its cost is in the first round's cost.
        ts.next_cost = next_cost
        with self._lock:
            for old in [k for k, v in self._jobs.items() if time.time() - v.last_used > IDLE_JOB_SECONDS]:
                del self._jobs[old]
            # A concurrent prepare of the same job (the gateway asked again while this one was
            # slow) may have stored its state first; a round may already use it, so it stays and
            # this one is dropped: the count noise is drawn once per job and the history never resets.
            ts = self._jobs.setdefault(job_id, ts)
        return TrainPrepared(next_cost=ts.next_cost, delta=ts.delta, rounds_planned=ts.spec.rounds)

    def begin_round(self, job_id: str, request: TrainBegin) -> TrainRoundBegun:
        """One round: DP-SGD from the global model; its secure-aggregation input is [update * w, w]."""
        ts = self._state(job_id)
        config = self.sessions.config_for(self.node.node_id, request.secagg)
        global_flat = _params(request.params)
        with ts.lock:
            # The gateway holds the job's whole planned cost on this node's ledger and says what is
            # left of that hold; less than this round's (public) cost would let the round overspend
            # the ledger, so it is refused before anything runs.
            reserved = request.epsilon_reserved
            if ts.next_cost is not None and ts.next_cost > reserved + RESERVATION_SLACK:
                raise BadRequest(f"round {request.round} costs epsilon {ts.next_cost:.9g} on this node, but the "
                                 f"gateway reserved only {reserved:.9g}: the round is not run")
            before = epsilon_of(ts)
            # The trainer refuses rounds beyond its plan (BudgetExhausted), whatever was reserved.
            res = ts.trainer.run_round(global_flat, ts.X, ts.y, ts.state, math.inf)
            after = _epsilon(ts, res.state)
            if after - before > reserved + RESERVATION_SLACK:
                # Not expected (the cost was known in advance); nothing of the round is released.
                raise BadRequest(f"round {request.round} cost epsilon {after - before:.9g} on this node, above the "
                                 f"{reserved:.9g} reserved: its update is withheld")
            eval_eps = EVAL_SHARE / 2 * (after - before)  # the other half is kept for the final evaluation
            metrics = noisy_eval(self.node, ts, global_flat, eval_eps)
            weight = max(ts.noisy_count, 1.0)
            contrib = np.concatenate([np.clip(res.update * weight, -UPDATE_CLIP, UPDATE_CLIP), [weight]])
            vec = fp_encode(contrib, UPDATE_FRAC_BITS)
            nxt = self._next_cost(ts, res.state, after)
            msg = self.sessions.start(job_id, self.node.node_id, config, vec)
            ts.state, ts.next_cost = res.state, nxt
        return TrainRoundBegun(secagg=msg, epsilon=after, epsilon_round=after - before, steps=int(res.steps),
                               next_cost=nxt, metrics=metrics)

    @staticmethod
    def _next_cost(ts: TrainState, state: Any, after: float) -> float | None:
        """Exactly what the next round will add to this node's Opacus epsilon (count step included)."""
        from xdp_compute.training.local import epsilon_for_history

        try:
            plan, _, _ = ts.trainer.next_round(state)
        except BudgetExhausted:
            return None  # the planned rounds are done
        step = (plan.noise_multiplier, plan.sample_rate, plan.steps_per_round)
        return float(epsilon_for_history([*_history(state, ts.count_sigma), step], ts.delta)) - after

    def evaluate(self, job_id: str, request: TrainEval) -> TrainEvaluated:
        """Final held-out metrics of the released model, locally noised; then forget the job."""
        ts = self._state(job_id)
        flat = _params(request.params)
        with ts.lock:
            spent = epsilon_of(ts)
            metrics = noisy_eval(self.node, ts, flat, max(EVAL_SHARE * spent - ts.eval_used, 0.0))
        with self._lock:
            self._jobs.pop(job_id, None)
        return TrainEvaluated(metrics=metrics, epsilon=spent)
