"""DP federated training jobs: validated spec -> per-round reservation -> local DP-SGD on the nodes ->
secure-aggregated FedAvg -> the final model through the ReleaseGate (intermediate models never leave).

Each node's ledger row is charged, round by round, exactly what its Opacus RDP accountant adds
(DP-SGD steps plus the one Gaussian release of its FedAvg weight). Before each round every node's
cost is reserved; if a ledger cannot pay, training stops there with the reason, and the last
model is released if at least one round completed and policy still allows it.
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
from xdp_compute.crypto.secagg import default_threshold
from xdp_compute.domain.policy import Decision, Requester, evaluate
from xdp_compute.errors import BudgetExhausted, Conflict, ProtocolAborted, XdpError
from xdp_compute.gateway import models as m
from xdp_compute.gateway.hub import NodeDropped, NodeFailed
from xdp_compute.gateway.lifecycle import JobDraft, JobLifecycle
from xdp_compute.gateway.query_service import DEFAULT_DELTA_FRACTION, QueryService
from xdp_compute.gateway.release import FAILED, Outcome, PolicyContext, digest
from xdp_compute.gateway.secure_sum import secure_sum
from xdp_compute.gateway.services import Services
from xdp_compute.gateway.store import PrincipalView, ReservationRequest, node_parts

log = logging.getLogger("xdp.gateway.training")
UPDATE_FRAC_BITS = 16
_background: set[asyncio.Task[Any]] = set()


def _spec_and_shape(qs: QueryService, body: dict[str, Any]
                    ) -> tuple[Any, list[dict[str, Any]], int, int, dict[str, Any] | None]:
    from xdp_compute.domain.manifest import DatasetSpec
    from xdp_compute.training import TrainingSpec
    from xdp_compute.training.features import label_of
    from xdp_compute.training.spec import encoded_width

    raw = {k: v for k, v in body.items() if k not in ("idempotency_key",) and v is not None}
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
        from xdp_compute.query import plan_query

        ds_spec = DatasetSpec.from_dict(parts[0]["spec"])
        where_plan = plan_query(f"SELECT COUNT(*) FROM {ds_spec.name} WHERE {spec.where}", ds_spec).to_dict()
    return spec, parts, n_features, n_classes, where_plan


async def submit_training(svc: Services, qs: QueryService, who: PrincipalView, body: dict[str, Any]
                          ) -> tuple[int, dict[str, Any]]:
    spec, parts, n_features, n_classes, where_plan = await asyncio.to_thread(_spec_and_shape, qs, body)
    delta = float(spec.delta) if spec.delta is not None else \
        min(p["delta_budget"] for p in parts) * DEFAULT_DELTA_FRACTION
    # Budget is reserved round by round (each round's exact cost), so the up-front check is only
    # the cap: the target may not exceed any node's whole budget.
    decisions = [d for d in evaluate(node_parts(parts), Requester(who.name, who.role, who.region), 0.0, 0.0,
                                     restricted_categories=svc.settings.restricted_categories,
                                     output="trained model") if d.rule != "budget"]
    for p in parts:
        if float(spec.target_epsilon) > p["eps_budget"] + 1e-12:
            decisions.append(Decision("epsilon_cap", False, f"target_epsilon {spec.target_epsilon:g} exceeds the "
                                                            f"dataset's whole budget {p['eps_budget']:g}", node=p["node"]))
    decisions.append(Decision("budget", True, "reserved round by round; training stops before any node's "
                                              "budget would be exceeded"))
    spec_digest = digest({"operation": "training", "spec": spec.to_dict(), "delta": delta})
    refusal = Outcome(operation="training", payload={}, datasets=[spec.dataset], nodes=[p["node"] for p in parts],
                      spec_digest=spec_digest, cost={"epsilon": float(spec.target_epsilon), "delta": delta},
                      decisions=[d.to_dict() for d in decisions])
    draft = JobDraft(
        kind="training", principal=who, parts=parts, decisions=decisions, spec_digest=spec_digest,
        spec={"spec": spec.to_dict(), "delta": delta}, cost=refusal.cost, refusal=refusal,
        plan={"nodes": [p["node_id"] for p in parts], "n_features": n_features, "n_classes": n_classes,
              "where_plan": where_plan, "plan": {"dataset": spec.dataset, "where": spec.where}})
    jobs = JobLifecycle(svc)

    async def start(job_id: str) -> tuple[int, dict[str, Any]]:
        start_background(svc, job_id)
        return 202, {"job_id": job_id, "status": "reserved"}

    return await jobs.submit(draft, body.get("idempotency_key"), start, jobs.status_of)


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
        await asyncio.to_thread(svc.gate.refuse, job_id, who.name, outcome, FAILED,
                                f"no training round completed ({run.stop_reason})", refund=True)
        raise ProtocolAborted(f"no training round completed: {run.stop_reason}")
    per_node, overall = await run.evaluate()
    outcome.payload, outcome.nodes = run.payload(per_node, overall), sorted(run.names.values())
    outcome.cost = {"epsilon": max(run.eps_node.values()), "delta": delta,
                    "per_node": {run.names[n]: e for n, e in run.eps_node.items()}}
    outcome.policy = PolicyContext(Requester(who.name, who.role, who.region), spec_dict["dataset"],
                                   tuple(p["node_id"] for p in parts))
    run.progress["done"] = True
    return await qs.jobs.release(job_id, who.name, outcome, started)


class TrainingRun:
    """One training job's rounds: who takes part, what each ledger was charged, the global model."""

    def __init__(self, svc: Services, qs: QueryService, job_id: str, who: PrincipalView, spec: dict[str, Any],
                 delta: float, parts: list[dict[str, Any]], plan: dict[str, Any]) -> None:
        from xdp_compute.training.architecture import init_params

        self.svc, self.qs, self.job_id, self.who, self.spec, self.delta = svc, qs, job_id, who, spec, delta
        self.names = {p["node_id"]: p["node"] for p in parts}
        self.ledger = {p["node_id"]: p["ledger_id"] for p in parts}
        self.n_features, self.n_classes = int(plan["n_features"]), int(plan["n_classes"])
        self.rounds_planned = int(spec["rounds"])
        self.prepare_request = TrainPrepare(spec=spec, n_features=self.n_features, n_classes=self.n_classes,
                                            delta=delta, where_plan=plan.get("where_plan"))
        self.progress: dict[str, Any] = {"round": 0, "rounds": self.rounds_planned, "epsilon": 0.0, "loss": None,
                                         "accuracy": None}
        svc.progress[job_id] = self.progress
        self.next_cost: dict[str, float | None] = {}  # node -> what its next round adds to its accountant
        self.refused: set[str] = set()                # nodes that answered with an error: out of this job
        self.delta_paid: set[str] = set()             # nodes whose ledger already holds the job's delta
        self.eps_node = {n: 0.0 for n in self.names}  # what each ledger was charged, summed over rounds
        self.rounds_log: list[dict[str, Any]] = []
        self.stop_reason: str | None = None
        self.global_flat = init_params(spec, self.n_features, self.n_classes)
        # Tail averaging (post-processing, free of privacy cost): the released model is the mean of
        # the global models of the second half of the rounds, which damps the DP noise of single rounds.
        self.tail_from = self.rounds_planned // 2 + 1
        self.tail_sum, self.tail_n = np.zeros_like(self.global_flat), 0

    async def call(self, node: str, request: Record, timeout: float) -> Any:
        """A node's typed answer; None if it was silent (it may come back) or failed (it leaves)."""
        try:
            return await self.svc.hub.ask(node, self.job_id, request, timeout)
        except NodeDropped:
            return None
        except NodeFailed as e:
            _warn(self.names[node], request.KIND, e.error)
        except XdpError as e:
            _warn(self.names[node], request.KIND, e.detail)
        self.refused.add(node)
        return None

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
        late = [n for n in self.names if n in online and n not in self.next_cost and n not in self.refused]
        if late:
            await self.prepare(late, settings.round_timeout_seconds * 3)
        active = [n for n in self.names if n in online and n not in self.refused
                  and self.next_cost.get(n) is not None]
        if len(active) < 2 and len(self.names) >= 2:
            return f"round {rnd}: fewer than 2 nodes available"
        reserved = {n: float(self.next_cost[n] or 0.0) for n in active}
        round_delta = {n: (0.0 if n in self.delta_paid else self.delta) for n in active}
        try:
            await asyncio.to_thread(_reserve_round, self.svc, self.job_id, self.who,
                                    [(self.ledger[n], reserved[n], round_delta[n]) for n in active])
        except BudgetExhausted as e:
            return f"round {rnd}: {e.detail}"
        g_bytes = self.global_flat.astype("<f8").tobytes()
        try:
            res = await secure_sum(self.svc.hub, self.job_id, f"{self.job_id}:round{rnd}", active,
                                   self.global_flat.size + 1,
                                   lambda node, session: TrainBegin(round=rnd, epsilon_reserved=reserved[node],
                                                                    params=g_bytes, secagg=session),
                                   threshold=default_threshold(len(active)),
                                   round_timeout=settings.round_timeout_seconds,
                                   begin_timeout=settings.round_timeout_seconds * 10)
        except ProtocolAborted as e:
            # Nothing of this round was unmasked: its reservation is refunded.
            await asyncio.to_thread(_settle, self.svc, self.job_id, {})
            return f"round {rnd}: {e.detail}"
        charges = self.charges(rnd, res, active, reserved, round_delta)
        self.delta_paid.update(active)
        self.refused.update(res.refused)
        await asyncio.to_thread(_settle, self.svc, self.job_id, charges)
        self.average(rnd, res.total)
        for n in active:
            self.eps_node[n] += charges[self.ledger[n]][0]
        for n in res.survivors:
            self.next_cost[n] = res.first_replies[n].next_cost
        self.log_round(rnd, res.survivors, [res.first_replies[n].metrics or {} for n in res.survivors])
        return None

    def charges(self, rnd: int, res: Any, active: list[str], reserved: dict[str, float],
                round_delta: dict[str, float]) -> dict[int, tuple[float, float]]:
        """Each ledger's charge for the round: what its node's accountant added, never less."""
        charges = {}
        for n in res.survivors:
            spent = float(res.first_replies[n].epsilon_round)
            if spent > reserved[n] + 1e-9:
                # More than was reserved: a node that deviates from its own plan. Its ledger is
                # charged the reservation (all the ledger may take) and the node leaves the job.
                log.error("node %s reports epsilon %.6g for round %d, above the %.6g reserved; it leaves the job",
                          self.names[n], spent, rnd, reserved[n])
                self.refused.add(n)
                spent = reserved[n]
            charges[self.ledger[n]] = (spent, round_delta[n])
        for n in active:
            # A node that dropped out may still have run the round (its accountant moved on while
            # its answer was lost): charge what was reserved for it — exactly that round's cost if
            # it ran, an over-charge if it did not — so a ledger never holds less than its
            # node's accountant. Later rounds cost no more than earlier ones (RDP epsilon is
            # concave in the number of steps), so its old next_cost still covers its next round.
            charges.setdefault(self.ledger[n], (reserved[n], round_delta[n]))
        return charges

    def average(self, rnd: int, total: np.ndarray) -> None:
        """FedAvg from the unmasked sums [sum of update x weight, sum of weights]."""
        from xdp_compute.training.federated import fedavg_from_sums

        totals = fp_decode(total, UPDATE_FRAC_BITS)
        self.global_flat = fedavg_from_sums(self.global_flat, totals[:-1], float(totals[-1]))
        if rnd >= self.tail_from:
            self.tail_sum, self.tail_n = self.tail_sum + self.global_flat, self.tail_n + 1

    def log_round(self, rnd: int, survivors: list[str], metrics: list[dict[str, Any]]) -> None:
        count = sum(x.get("count", 0) for x in metrics)
        self.progress.update({"round": rnd, "epsilon": max(self.eps_node.values()),
                              "loss": (sum(x.get("loss_sum", 0) for x in metrics) / count) if count > 0 else None})
        self.rounds_log.append({"round": rnd, "nodes": sorted(self.names[n] for n in survivors),
                                "missing": sorted(self.names[n] for n in self.names if n not in survivors)})

    @property
    def released_params(self) -> np.ndarray:
        return self.tail_sum / self.tail_n if self.tail_n else self.global_flat

    async def evaluate(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """Noisy held-out metrics of the released model, per node and pooled."""
        in_job = [n for n in self.names if n in self.next_cost and n not in self.refused]
        final = TrainEval(params=self.released_params.astype("<f8").tobytes())
        timeout = self.svc.settings.round_timeout_seconds * 3
        evals = await asyncio.gather(*(self.call(n, final, timeout) if n in in_job else _absent()
                                       for n in self.names))
        per_node = {}
        for n, r in zip(self.names, evals, strict=True):
            mt = (r.metrics if isinstance(r, TrainEvaluated) else None) or {}
            c = mt.get("count", 0)
            per_node[self.names[n]] = {
                "epsilon": self.eps_node[n], "holdout_rows_noisy": c,
                "accuracy": (mt["second"] / c) if c and c > 0 and mt.get("kind") == "correct" else None,
                "loss": (mt["loss_sum"] / c) if c and c > 0 else None}
        total_c = sum(v["holdout_rows_noisy"] or 0 for v in per_node.values())
        acc = [v for v in per_node.values() if v["accuracy"] is not None]
        overall = {"accuracy": (sum(v["accuracy"] * v["holdout_rows_noisy"] for v in acc) / total_c)
                   if acc and total_c > 0 else None,
                   "loss": (sum((v["loss"] or 0) * v["holdout_rows_noisy"] for v in per_node.values()) / total_c)
                   if total_c > 0 else None}
        return per_node, overall

    def payload(self, per_node: dict[str, Any], overall: dict[str, Any]) -> dict[str, Any]:
        """The released model, its card and its metrics."""
        from xdp_compute.training.architecture import describe_model

        names, spec = self.names, self.spec
        card = {"architecture": describe_model(spec, self.n_features, self.n_classes), "dataset": spec["dataset"],
                "nodes": sorted(names.values()), "rounds_planned": self.rounds_planned,
                "rounds_done": len(self.rounds_log), "rounds": self.rounds_log,
                "rounds_missing_nodes": [r for r in self.rounds_log if r["missing"]],
                "epsilon_per_node": {names[n]: e for n, e in self.eps_node.items()}, "delta": self.delta,
                "target_epsilon": spec["target_epsilon"], "stopped_early": self.stop_reason,
                "metrics_per_node": per_node, "metrics": overall,
                "released_params": f"mean of the global models of rounds {self.tail_from}..{len(self.rounds_log)}"
                                   if self.tail_n else "the last global model",
                "privacy": "DP-SGD per node (Opacus RDP accounting, Poisson sampling), FedAvg weighted by "
                           "Gaussian-noised row counts, secure aggregation of updates; metrics on held-out rows "
                           "with discrete Gaussian noise"}
        params = self.released_params
        return {"model": {"spec": spec, "n_features": self.n_features, "n_classes": self.n_classes,
                          "params": [float(x) for x in params]},
                "card": card, "metrics": overall, "cells": int(params.size)}


async def _absent() -> None:
    return None


def _warn(node: str, kind: str, error: str) -> None:
    log.warning("node %s failed %s: %s", node, kind, error)


def _reserve_round(svc: Services, job_id: str, who: PrincipalView, costs: list[tuple[int, float, float]]) -> None:
    """Hold each node's (epsilon, delta) for the round on its ledger; the analyst's row holds the largest."""
    with svc.store.write() as s:
        holds = [ReservationRequest(lid, max(c, 0.0), d) for lid, c, d in costs]
        svc.store.reserve(s, job_id, who.id, holds, max((c for _, c, _ in costs), default=0.0),
                          max((d for _, _, d in costs), default=0.0))


def _settle(svc: Services, job_id: str, charges: dict[int, tuple[float, float]]) -> None:
    """Charge each node's ledger what its accountant added this round (0 for drop-outs); the
    analyst's row is charged the largest node charge (refund of the rest)."""
    with svc.store.write() as s:
        if not charges:
            svc.store.settle(s, job_id, commit=False)
            return
        top = max((c[0] for c in charges.values()), default=0.0)
        svc.store.settle(s, job_id, commit=True, actual=charges, analyst_actual=(top, max(
            (c[1] for c in charges.values()), default=0.0)))

