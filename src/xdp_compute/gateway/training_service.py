"""DP federated training jobs: validated spec -> the whole planned cost reserved -> local DP-SGD on
the nodes -> secure-aggregated FedAvg -> the final model through the ReleaseGate (intermediate
models never leave).

The observable rule (DESIGN.md, issue #11): what the analyst can see of a training job — the
charge, the budget left, progress, participation, the model card, an error, a refusal, a refund —
is a function of public inputs (spec, manifests with their declared ``max_rows``, policy) or a
DP release. So:

- the plan (sample rate, noise, steps, count release) comes from each dataset's declared
  ``max_rows``, never from a node's rows; delta >= 1/max_rows is refused at submission;
- the job's whole cost, ``target_epsilon`` and delta on every participating ledger, is reserved
  at submission and committed in full once anything ran — no per-round charge derived from data;
- a node never drops out because of its data: with few or no matching rows it takes part with
  the same noise; ``missing`` in the card lists only nodes that were offline or silent (liveness,
  which the data does not decide); a node *error* — whose cause could depend on data — aborts
  the job, charged, without naming the node; a refund happens only when no round could start
  because too few nodes were online.

Collusion (DESIGN "up to c nodes may collude"): training distributes no noise across nodes —
each node adds the *full* DP-SGD noise to its own update and full noise to its own count and
metrics, and secure aggregation only hides the individual updates — so the gateway policy
``max_colluding_nodes`` (t - c honest shares, for queries) needs no counterpart here: colluding
nodes learn nothing about an honest node's rows beyond what its own DP release allows.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import numpy as np

from xdp_compute.contract import Record, TrainBegin, TrainEval, TrainEvaluated, TrainPrepare, TrainPrepared
from xdp_compute.crypto.fixedpoint import decode as fp_decode
from xdp_compute.crypto.secagg import SecAggParameters, default_threshold
from xdp_compute.domain.policy import Decision, Requester, evaluate, noise_shares
from xdp_compute.errors import Conflict, ProtocolAborted, XdpError
from xdp_compute.gateway import models as m
from xdp_compute.gateway.hub import NodeDropped, NodeFailed
from xdp_compute.gateway.lifecycle import JobDraft, JobLifecycle
from xdp_compute.gateway.query_service import DEFAULT_DELTA_FRACTION, QueryService
from xdp_compute.gateway.release import FAILED, Outcome, PolicyContext, digest
from xdp_compute.gateway.secure_sum import secure_sum, session_parameters
from xdp_compute.gateway.services import Services
from xdp_compute.gateway.store import PrincipalView, ReservationRequest, node_parts

log = logging.getLogger("xdp.gateway.training")
UPDATE_FRAC_BITS = 16
_background: set[asyncio.Task[Any]] = set()


def _spec_and_shape(qs: QueryService, body: dict[str, Any]
                    ) -> tuple[Any, list[dict[str, Any]], int, int, dict[str, Any] | None, list[dict[str, Any]]]:
    from xdp_compute.domain.manifest import DatasetSpec
    from xdp_compute.training import TrainingSpec
    from xdp_compute.training.features import label_of
    from xdp_compute.training.spec import encoded_width

    raw = {k: v for k, v in body.items() if k not in ("idempotency_key", "subscription") and v is not None}
    spec = TrainingSpec.from_dict(raw)
    parts = [p for p in qs.lookup(spec.dataset) if p["online"]]
    if not parts:
        raise Conflict(f"no node holding dataset {spec.dataset!r} is online")
    columns = [c.to_dict() for c in DatasetSpec.from_dict(parts[0]["spec"]).columns]
    spec.validate(columns)
    n_features = encoded_width(spec, columns)
    n_classes = label_of(spec, columns).n_classes
    where_plan = None
    if spec.where:
        # The filter goes through the SQL planner: only columns whose uses include 'filter'.
        # Parsed on its own first: nothing but one condition can ride along into the SQL text.
        from xdp_compute.query import plan_query
        from xdp_compute.query.statement import where_condition

        ds_spec = DatasetSpec.from_dict(parts[0]["spec"])
        where_plan = plan_query(f"SELECT COUNT(*) FROM {ds_spec.name} WHERE {where_condition(spec.where)}",
                                ds_spec).to_dict()
    # The declared columns the model is trained on (public metadata): the released model carries
    # them, so it can encode raw values as the nodes did (training/predictor.py).
    used = {f.lower() for f in (*spec.features, spec.label)}
    return spec, parts, n_features, n_classes, where_plan, [c for c in columns if c["name"].lower() in used]


def training_secagg(settings: Any, n: int) -> SecAggParameters:
    """A training round's session over ``n`` nodes: the complete graph with a majority up to 40
    nodes, SecAgg+ (Bell et al. 2020) at the gateway's stated rates above; 409 when none fits."""
    return session_parameters(n, complete_threshold=default_threshold(n), dropout_rate=settings.secagg_dropout_rate,
                              corrupt_rate=settings.secagg_corrupt_rate,
                              colluding=noise_shares(n, default_threshold(n), settings.max_colluding_nodes).colluding)


def max_rows_of(part: dict[str, Any]) -> int:
    """A node's declared (public) maximum row count for the dataset: its registered manifest entry."""
    from xdp_compute.domain.manifest import DEFAULT_MAX_ROWS

    return int(part["spec"].get("max_rows", DEFAULT_MAX_ROWS))


def training_decisions(parts: list[dict[str, Any]], target: float, delta: float) -> list[Decision]:
    """The budget decisions of a training job: the whole target on every ledger, or a refusal.

    Only public inputs: the ledgers' remainders are sums of earlier (public) charges.
    """
    out = []
    for p in parts:
        left = p["eps_budget"] - p["eps_spent"] - p["eps_reserved"]
        if target > p["eps_budget"] + 1e-12:
            out.append(Decision("epsilon_cap", False, f"target_epsilon {target:g} exceeds the dataset's whole "
                                                      f"budget {p['eps_budget']:g}", node=p["node"]))
        elif target > left + 1e-9 or delta > p["delta_budget"] - p["delta_spent"] + 1e-15:
            out.append(Decision("budget", False, f"budget left epsilon={max(left, 0):g} cannot afford the job's "
                                                 f"planned epsilon={target:g}, delta={delta:g}", node=p["node"]))
        else:
            out.append(Decision("budget", True, f"the planned epsilon={target:g}, delta={delta:g} is reserved now "
                                                f"and charged in full ({left:g} left before)", node=p["node"]))
    return out


async def submit_training(svc: Services, qs: QueryService, who: PrincipalView, body: dict[str, Any]
                          ) -> tuple[int, dict[str, Any]]:
    from xdp_compute.errors import InvalidSpec

    with svc.metrics.phase("training", "plan"):
        spec, parts, n_features, n_classes, where_plan, columns = await asyncio.to_thread(_spec_and_shape, qs, body)
    delta = float(spec.delta) if spec.delta is not None else \
        min(p["delta_budget"] for p in parts) * DEFAULT_DELTA_FRACTION
    target = float(spec.target_epsilon)
    # delta < 1/max_rows on every node, from the declared maxima: refused here, before anything is
    # held, and the same for every WHERE (the rows that match it play no part in the decision).
    for p in parts:
        if not delta < 1.0 / max_rows_of(p):
            raise InvalidSpec(f"delta {delta:g} must be below 1/max_rows = {1.0 / max_rows_of(p):.3g} (node "
                              f"{p['node']!r} declares max_rows = {max_rows_of(p)} for {spec.dataset!r})",
                              field="delta")
    decisions = [d for d in evaluate(node_parts(parts), Requester(who.name, who.role, who.region), 0.0, 0.0,
                                     restricted_categories=svc.settings.restricted_categories,
                                     output="trained model") if d.rule not in ("budget", "epsilon_cap")]
    decisions += training_decisions(parts, target, delta)
    # Refused here, before anything is held, when no secure-aggregation session fits (409).
    training_secagg(svc.settings, len(parts))
    spec_digest = digest({"operation": "training", "spec": spec.to_dict(), "delta": delta})
    refusal = Outcome(operation="training", payload={}, datasets=[spec.dataset], nodes=[p["node"] for p in parts],
                      spec_digest=spec_digest, cost={"epsilon": float(spec.target_epsilon), "delta": delta},
                      decisions=[d.to_dict() for d in decisions])
    draft = JobDraft(
        kind="training", principal=who, parts=parts, decisions=decisions, spec_digest=spec_digest,
        spec={"spec": spec.to_dict(), "delta": delta}, cost=refusal.cost, refusal=refusal,
        plan={"nodes": [p["node_id"] for p in parts], "n_features": n_features, "n_classes": n_classes,
              "where_plan": where_plan, "plan": {"dataset": spec.dataset, "where": spec.where},
              "max_rows": {p["node"]: max_rows_of(p) for p in parts}, "columns": columns,
              "parties": len({p["holder_id"] for p in parts})},
        # The whole planned cost, held now on every ledger: nothing about it depends on the rows.
        holds=[ReservationRequest(p["ledger_id"], target, delta) for p in parts], analyst_hold=(target, delta))
    jobs = JobLifecycle(svc)

    async def start(job_id: str) -> tuple[int, dict[str, Any]]:
        start_background(svc, job_id)
        return 202, {"job_id": job_id, "status": "reserved"}

    # Data exchange (issue #17): a training under a model product is one unit, checked and held
    # before anything is reserved and metered by the release gate; without a subscription, a
    # dataset that sells jobs refuses it (403) before anything is reserved.
    from xdp_compute.gateway.exchange import ExchangeService
    from xdp_compute.gateway.exchange_jobs import submit_job

    exchange = ExchangeService(svc)
    if not body.get("subscription"):
        await asyncio.to_thread(exchange.require_subscription, spec.dataset, "model")
        return await jobs.submit(draft, body.get("idempotency_key"), start, jobs.status_of)

    async def submit(hold: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        draft.spec["subscription"] = hold
        return await jobs.submit(draft, body.get("idempotency_key"), start, jobs.status_of)

    where_columns = sorted(_where_columns((where_plan or {}).get("where")))
    return await submit_job(exchange, who, "model", body["subscription"], spec.dataset,
                            [*spec.features, spec.label, *where_columns], 1.0, submit)


def _where_columns(node: Any) -> set[str]:
    from xdp_compute.gateway.exchange import _where_columns as columns

    return columns(node)


def start_background(svc: Services, job_id: str) -> None:
    async def run() -> None:
        try:
            await run_training(svc, job_id)
        except XdpError as e:
            log.warning("training job %s ended without release: %s", job_id, e.detail)
        except Exception:
            log.exception("training job %s failed", job_id)

    task = asyncio.create_task(run())
    _background.add(task)
    task.add_done_callback(_background.discard)


async def run_training(svc: Services, job_id: str) -> dict[str, Any]:
    qs = QueryService(svc)
    job = await asyncio.to_thread(_load_job, svc, job_id)
    stored, plan = json.loads(job.spec_json), json.loads(job.plan_json)
    spec_dict, delta = stored["spec"], float(stored["delta"])
    with svc.store.read() as s:
        pr = s.get(m.Principal, job.principal_id)
    assert pr is not None
    who = PrincipalView(pr.id, pr.name, pr.role, pr.region)
    parts = [p for p in await asyncio.to_thread(qs.lookup, spec_dict["dataset"]) if p["node_id"] in set(plan["nodes"])]
    await asyncio.to_thread(qs.jobs.start, job_id)
    outcome = Outcome(operation="training", payload={}, datasets=[spec_dict["dataset"]],
                      nodes=[p["node"] for p in parts], spec_digest=stored["digest"],
                      cost={"epsilon": float(spec_dict["target_epsilon"]), "delta": delta},
                      decisions=plan["decisions"])
    return await qs.jobs.guarded(job_id, who.name, outcome,
                                 _train(svc, qs, job_id, who, spec_dict, delta, parts, plan, outcome))


def _load_job(svc: Services, job_id: str) -> m.Job:
    with svc.store.read() as s:
        job = s.get(m.Job, job_id)
    if job is None:
        raise Conflict(f"no job {job_id}")
    return job


class NodeAbort(XdpError):
    """A node answered with an error: the job stops, charged, and no node is named (its cause may
    depend on the node's data)."""


async def _train(svc: Services, qs: QueryService, job_id: str, who: PrincipalView, spec_dict: dict[str, Any],
                 delta: float, parts: list[dict[str, Any]], plan: dict[str, Any], outcome: Outcome) -> dict[str, Any]:
    """Prepare the nodes, run the rounds, evaluate the released model, and hand it to the gate."""
    started = time.time()
    run = TrainingRun(svc, qs, job_id, who, spec_dict, delta, parts, plan)
    await run.prepare(list(run.names), svc.settings.round_timeout_seconds * 6)
    for rnd in range(1, run.rounds_planned + 1):
        run.stop_reason = await run.round(rnd)
        if run.stop_reason is not None:
            break
    if not run.rounds_log:
        if not run.began:
            # No round started because too few nodes were online (liveness, not data), and no
            # node answered with an error: nothing was computed from the rows, so it is refunded.
            await asyncio.to_thread(svc.gate.refuse, job_id, who.name, outcome, FAILED,
                                    f"no training round could start ({run.stop_reason})", refund=True)
            raise ProtocolAborted(f"no training round could start: {run.stop_reason}")
        raise NodeAbort(f"no training round completed ({run.stop_reason}); the job is charged")
    per_node, overall = await run.evaluate()
    outcome.payload, outcome.nodes = run.payload(per_node, overall), sorted(run.names.values())
    outcome.cost = {"epsilon": float(spec_dict["target_epsilon"]), "delta": delta,
                    "per_node": {run.names[n]: e for n, e in run.eps_node.items()}}
    outcome.policy = PolicyContext(Requester(who.name, who.role, who.region), spec_dict["dataset"],
                                   tuple(p["node_id"] for p in parts))
    run.progress["done"] = True
    return await qs.jobs.release(job_id, who.name, outcome, started)


class TrainingRun:
    """One training job's rounds: who takes part, what each node's accountant spent, the global model."""

    def __init__(self, svc: Services, qs: QueryService, job_id: str, who: PrincipalView, spec: dict[str, Any],
                 delta: float, parts: list[dict[str, Any]], plan: dict[str, Any]) -> None:
        from xdp_compute.training.architecture import init_params

        self.svc, self.qs, self.job_id, self.who, self.spec, self.delta = svc, qs, job_id, who, spec, delta
        self.names = {p["node_id"]: p["node"] for p in parts}
        self.n_features, self.n_classes = int(plan["n_features"]), int(plan["n_classes"])
        self.rounds_planned = int(spec["rounds"])
        self.target = float(spec["target_epsilon"])
        self.max_rows = dict(plan.get("max_rows") or {})
        self.columns, self.parties = list(plan.get("columns") or []), plan.get("parties")
        self.prepare_request = TrainPrepare(spec=spec, n_features=self.n_features, n_classes=self.n_classes,
                                            delta=delta, where_plan=plan.get("where_plan"), principal=who.name)
        self.progress: dict[str, Any] = {"round": 0, "rounds": self.rounds_planned, "epsilon": 0.0,
                                         "epsilon_reserved": self.target, "loss": None, "accuracy": None}
        svc.progress[job_id] = self.progress
        self.next_cost: dict[str, float | None] = {}  # node -> what its next round adds to its accountant
        self.spent = {n: 0.0 for n in self.names}     # each node's accountant (public plan) so far
        # What each ledger is charged: the whole reservation, the same for every node, whatever happens.
        self.eps_node = {n: self.target for n in self.names}
        self.began = False                            # a round was sent to the nodes
        self.rounds_log: list[dict[str, Any]] = []
        self.stop_reason: str | None = None
        self.global_flat = init_params(spec, self.n_features, self.n_classes)
        # Tail averaging (post-processing, free of privacy cost): the released model is the mean of
        # the global models of the second half of the rounds, which damps the DP noise of single rounds.
        self.tail_from = self.rounds_planned // 2 + 1
        self.tail_sum, self.tail_n = np.zeros_like(self.global_flat), 0

    async def call(self, node: str, request: Record, timeout: float) -> Any:
        """A node's typed answer; None if it was silent (offline or slow: it may come back).

        An error answer raises ``NodeAbort``: whatever its cause, it might depend on the node's
        rows, so the job is not continued without the node (that would show in the card).
        """
        try:
            return await self.svc.hub.ask(node, self.job_id, request, timeout)
        except NodeDropped:
            return None
        except NodeFailed as e:
            _warn(self.names[node], request.KIND, e.error)
        except XdpError as e:
            _warn(self.names[node], request.KIND, e.detail)
        raise NodeAbort(_ABORTED)

    async def prepare(self, nodes: list[str], timeout: float) -> None:
        replies = await asyncio.gather(*(self.call(n, self.prepare_request, timeout) for n in nodes))
        for n, r in zip(nodes, replies, strict=True):
            if isinstance(r, TrainPrepared):
                self.next_cost[n] = r.next_cost

    async def round(self, rnd: int) -> str | None:
        """Run one round; return why training stops here, or None to go on."""
        settings = self.svc.settings
        parts = await asyncio.to_thread(self.qs.lookup, self.spec["dataset"])
        online = {p["node_id"] for p in parts if p["online"]}
        # A node that missed earlier rounds (slow, or briefly away) rejoins as soon as it is back
        # online; one that was never prepared gets another chance to prepare first.
        late = [n for n in self.names if n in online and n not in self.next_cost]
        if late:
            await self.prepare(late, settings.round_timeout_seconds * 3)
        active = [n for n in self.names if n in online and self.next_cost.get(n) is not None]
        if len(active) < 2 and len(self.names) >= 2:
            return f"round {rnd}: fewer than 2 nodes online"
        # What is left of the job's hold on each node's ledger: the node refuses a round that
        # would cost more (its accountant follows the same public plan, so it never does).
        left = {n: max(self.target - self.spent[n], 0.0) for n in active}
        g_bytes = self.global_flat.astype("<f8").tobytes()
        # Complete graph with a majority up to 40 nodes, SecAgg+ (Bell et al. 2020) above. Each node
        # adds its own full DP noise here, so the threshold guards the updates, not the noise.
        try:
            params = training_secagg(settings, len(active))
        except XdpError as e:
            return f"round {rnd}: {e.detail}"
        self.began = True
        try:
            res = await secure_sum(self.svc.hub, self.job_id, f"{self.job_id}:round{rnd}", active,
                                   self.global_flat.size + 1,
                                   lambda node, session: TrainBegin(round=rnd, epsilon_reserved=left[node],
                                                                    params=g_bytes, secagg=session),
                                   threshold=params.threshold, neighbours=params.neighbours,
                                   round_timeout=settings.round_timeout_seconds,
                                   begin_timeout=settings.round_timeout_seconds * 10)
        except ProtocolAborted as e:
            if getattr(e, "node_errors", None):
                raise NodeAbort(_ABORTED) from None
            # Too few nodes answered in time: liveness, not data. The hold stays charged.
            return f"round {rnd}: secure aggregation aborted (too few nodes answered in time)"
        self.svc.metrics.dropped(res.dropped.values())
        if res.refused:
            for n, err in res.refused.items():
                _warn(self.names.get(n, n), "train_begin", err)
            raise NodeAbort(_ABORTED)
        for n in res.survivors:
            reply = res.first_replies[n]
            if float(reply.epsilon_round) > left[n] + 1e-9:
                # A node that deviates from the public plan: stop (its ledger is charged the hold).
                log.error("node %s reports epsilon %.6g for round %d, above the %.6g left of its hold",
                          self.names[n], reply.epsilon_round, rnd, left[n])
                raise NodeAbort(_ABORTED)
            self.spent[n] += float(reply.epsilon_round)
            self.next_cost[n] = reply.next_cost
        self.average(rnd, res.total)
        self.log_round(rnd, res.survivors, [res.first_replies[n].metrics or {} for n in res.survivors])
        return None

    def average(self, rnd: int, total: np.ndarray) -> None:
        """FedAvg from the unmasked sums [sum of update x weight, sum of weights]."""
        from xdp_compute.training.federated import fedavg_from_sums

        totals = fp_decode(total, UPDATE_FRAC_BITS)
        self.global_flat = fedavg_from_sums(self.global_flat, totals[:-1], float(totals[-1]))
        if rnd >= self.tail_from:
            self.tail_sum, self.tail_n = self.tail_sum + self.global_flat, self.tail_n + 1

    def log_round(self, rnd: int, survivors: list[str], metrics: list[dict[str, Any]]) -> None:
        from xdp_compute.training.metrics import EVAL_LOSS_BOUND

        count = sum(x.get("count", 0) for x in metrics)
        loss = (sum(x.get("loss_sum", 0) for x in metrics) / count) if count > 0 else None
        # Clamped to the loss's range (post-processing of noisy sums; no privacy cost).
        self.progress.update({"round": rnd, "epsilon": max(self.spent.values()),
                              "loss": None if loss is None else min(max(loss, 0.0), EVAL_LOSS_BOUND)})
        self.rounds_log.append({"round": rnd, "nodes": sorted(self.names[n] for n in survivors),
                                "missing": sorted(self.names[n] for n in self.names if n not in survivors)})

    @property
    def released_params(self) -> np.ndarray:
        return self.tail_sum / self.tail_n if self.tail_n else self.global_flat

    async def evaluate(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """Noisy held-out metrics of the released model, per node and pooled."""
        from xdp_compute.training.metrics import released_metrics
        from xdp_compute.training.predictor import label_of_model

        in_job = [n for n in self.names if n in self.next_cost]
        final = TrainEval(params=self.released_params.astype("<f8").tobytes())
        timeout = self.svc.settings.round_timeout_seconds * 3
        evals = await asyncio.gather(*(self.call(n, final, timeout) if n in in_job else _absent()
                                       for n in self.names))
        replies = {self.names[n]: (r.metrics if isinstance(r, TrainEvaluated) else None) or {}
                   for n, r in zip(self.names, evals, strict=True)}
        label = label_of_model({"spec": self.spec, "columns": self.columns}) if self.columns else None
        span = (label.hi - label.lo) if label is not None and label.lo is not None and label.hi is not None else None
        # Clamped to each metric's valid range with 95% intervals: post-processing, no privacy cost.
        per_node, overall = released_metrics(replies, span)
        for n in self.names:
            per_node[self.names[n]] = {"epsilon": self.eps_node[n], **per_node[self.names[n]]}
        return per_node, overall

    def payload(self, per_node: dict[str, Any], overall: dict[str, Any]) -> dict[str, Any]:
        """The released model, its card and its metrics."""
        from xdp_compute.training.architecture import describe_model
        from xdp_compute.training.features import feature_names
        from xdp_compute.training.predictor import label_of_model

        names, spec = self.names, self.spec
        label = label_of_model({"spec": spec, "columns": self.columns}) if self.columns else None
        encoded = feature_names(spec, self.columns) if self.columns else None
        card = {"architecture": describe_model(spec, self.n_features, self.n_classes, feature_names=encoded,
                                               label=label.to_dict() if label else None),
                "dataset": spec["dataset"], "features": list(spec["features"]), "label": spec["label"],
                "classes": list(label.classes) if label and label.classes else None,
                "encoding": self.columns or None, "n_nodes": len(names), "parties": self.parties,
                "sampling_rate": {names[n]: min(1.0, int(spec["batch_size"]) / int(self.max_rows[names[n]]))
                                  for n in names if names[n] in self.max_rows},
                "nodes": sorted(names.values()), "rounds_planned": self.rounds_planned,
                "rounds_done": len(self.rounds_log), "rounds": self.rounds_log,
                "rounds_missing_nodes": [r for r in self.rounds_log if r["missing"]],
                "epsilon_per_node": {names[n]: e for n, e in self.eps_node.items()}, "delta": self.delta,
                "target_epsilon": spec["target_epsilon"], "stopped_early": self.stop_reason,
                "metrics_per_node": per_node, "metrics": overall,
                "released_params": f"mean of the global models of rounds {self.tail_from}..{len(self.rounds_log)}"
                                   if self.tail_n else "the last global model",
                "max_rows": self.max_rows,
                "privacy": "DP-SGD per node (Opacus RDP accounting, Poisson sampling at batch_size/max_rows, "
                           "noise and steps planned from the declared max_rows, ChaCha20 noise), FedAvg weighted "
                           "by Gaussian-noised row counts, secure aggregation of updates; metrics on held-out rows "
                           "(chosen per row by a keyed hash) with discrete Gaussian noise; the whole target "
                           "epsilon reserved at submission and charged"}
        params = self.released_params
        return {"model": {"spec": spec, "n_features": self.n_features, "n_classes": self.n_classes,
                          "params": [float(x) for x in params], "columns": self.columns},
                "card": card, "metrics": overall, "cells": int(params.size)}


async def _absent() -> None:
    return None


_ABORTED = ("a node could not complete its part of the training; the job is aborted and charged (the cause "
            "may depend on a node's data, so no node is named)")


def _warn(node: str, kind: str, error: str) -> None:
    log.warning("node %s failed %s: %s", node, kind, error)
