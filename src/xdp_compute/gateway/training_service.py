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
from sqlalchemy.exc import IntegrityError

from xdp_compute.crypto.fixedpoint import decode as fp_decode
from xdp_compute.crypto.secagg import default_threshold
from xdp_compute.domain.policy import Decision, Requester, enforce, evaluate
from xdp_compute.errors import BudgetExhausted, Conflict, PolicyDenied, ProtocolAborted, XdpError
from xdp_compute.gateway import models as m
from xdp_compute.gateway.app import Services
from xdp_compute.gateway.hub import NodeDropped, Task
from xdp_compute.gateway.query_service import DEFAULT_DELTA_FRACTION, QueryService, node_parts
from xdp_compute.gateway.release import BUDGET_EXHAUSTED, DENIED, FAILED, Outcome, digest
from xdp_compute.gateway.secure_sum import secure_sum
from xdp_compute.gateway.store import PrincipalView, ReservationRequest, new_id

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
    key = body.get("idempotency_key")
    existing = await asyncio.to_thread(qs.existing, who, key, spec_digest)
    if existing is not None:
        return 202, {"job_id": existing.id, "status": existing.status}
    outcome = Outcome(operation="training", payload={}, datasets=[spec.dataset], nodes=[p["node"] for p in parts],
                      spec_digest=spec_digest, cost={"epsilon": float(spec.target_epsilon), "delta": delta},
                      decisions=[d.to_dict() for d in decisions])
    try:
        enforce(decisions)
    except (PolicyDenied, BudgetExhausted) as e:
        kind = BUDGET_EXHAUSTED if isinstance(e, BudgetExhausted) else DENIED
        await asyncio.to_thread(svc.gate.refuse, None, who.name, outcome, kind, e.detail, refund=False)
        raise
    approvals = sorted({p["holder_id"] for p in parts if p["spec"].get("require_approval")})
    job_id = new_id()
    now = time.time()
    try:
        with svc.store.write() as s:
            s.add(m.Job(id=job_id, principal_id=who.id, kind="training",
                        status="awaiting_approval" if approvals else "reserved",
                        spec_json=json.dumps({"spec": spec.to_dict(), "delta": delta, "digest": spec_digest}),
                        plan_json=json.dumps({"nodes": [p["node_id"] for p in parts], "n_features": n_features,
                                              "n_classes": n_classes, "where_plan": where_plan,
                                              "plan": {"dataset": spec.dataset, "where": spec.where},
                                              "decisions": [d.to_dict() for d in decisions]}),
                        cost_json=json.dumps(outcome.cost), idempotency_key=key, created_at=now, updated_at=now,
                        compute_seconds=0.0))
            svc.store.ensure_analyst_budget(s, who.id, svc.settings.analyst_epsilon_budget,
                                            svc.settings.analyst_delta_budget)
            for h in approvals:
                s.add(m.Approval(job_id=job_id, holder_id=h, decision="pending"))
    except IntegrityError:
        job = qs.existing(who, key, spec_digest)
        if job is None:
            raise
        return 202, {"job_id": job.id, "status": job.status}
    if approvals:
        return 202, {"job_id": job_id, "status": "awaiting_approval"}
    start_background(svc, job_id)
    return 202, {"job_id": job_id, "status": "reserved"}


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
    from xdp_compute.gateway.routers.jobs import service

    qs = service(svc)
    job = await asyncio.to_thread(_load_job, svc, job_id)
    stored, plan = json.loads(job.spec_json), json.loads(job.plan_json)
    spec_dict, delta = stored["spec"], float(stored["delta"])
    with svc.store.read() as s:
        pr = s.get(m.Principal, job.principal_id)
    assert pr is not None
    who = PrincipalView(pr.id, pr.name, pr.role, pr.region)
    parts = [p for p in qs.lookup(spec_dict["dataset"]) if p["node_id"] in set(plan["nodes"])]
    await asyncio.to_thread(qs._start, job_id)
    outcome = Outcome(operation="training", payload={}, datasets=[spec_dict["dataset"]],
                      nodes=[p["node"] for p in parts], spec_digest=stored["digest"],
                      cost={"epsilon": float(spec_dict["target_epsilon"]), "delta": delta},
                      decisions=plan["decisions"])
    try:
        return await _train(svc, qs, job_id, who, spec_dict, delta, parts, plan, outcome)
    except ProtocolAborted:
        raise
    except BaseException as e:
        with svc.store.read() as s:
            j = s.get(m.Job, job_id)
        if j is not None and j.status == "running":
            detail = e.detail if isinstance(e, XdpError) else type(e).__name__
            await asyncio.to_thread(svc.gate.refuse, job_id, who.name, outcome, FAILED, f"training failed: {detail}",
                                    refund=False, charge=True)
        raise


def _load_job(svc: Services, job_id: str) -> m.Job:
    with svc.store.read() as s:
        job = s.get(m.Job, job_id)
    if job is None:
        raise Conflict(f"no job {job_id}")
    return job


async def _train(svc: Services, qs: QueryService, job_id: str, who: PrincipalView, spec_dict: dict[str, Any],
                 delta: float, parts: list[dict[str, Any]], plan: dict[str, Any], outcome: Outcome) -> dict[str, Any]:
    from xdp_compute.training.architecture import describe_model, init_params

    started = time.time()
    hub, settings = svc.hub, svc.settings
    names = {p["node_id"]: p["node"] for p in parts}
    ledger = {p["node_id"]: p["ledger_id"] for p in parts}
    n_features, n_classes = int(plan["n_features"]), int(plan["n_classes"])
    progress: dict[str, Any] = {"round": 0, "rounds": int(spec_dict["rounds"]), "epsilon": 0.0, "loss": None,
                                "accuracy": None}
    svc.extra.setdefault("progress", {})[job_id] = progress
    header = {"spec": spec_dict, "n_features": n_features, "n_classes": n_classes, "delta": delta,
              "where_plan": plan.get("where_plan")}

    async def call(node: str, task: Task, timeout: float) -> Any:
        try:
            r = await hub.call(node, task, timeout)
            return r if r.ok else _warn(names[node], task.kind, r.error)
        except NodeDropped:
            return None

    prepare_header = dict(header)
    next_cost: dict[str, float | None] = {}  # node -> what its next round adds to its accountant

    async def prepare(nodes: list[str], timeout: float) -> None:
        replies = await asyncio.gather(*(call(n, Task("train_prepare", job_id, dict(prepare_header)), timeout)
                                         for n in nodes))
        for n, r in zip(nodes, replies, strict=True):
            if r is not None:
                next_cost[n] = r.header["next_cost"]

    await prepare(list(names), settings.round_timeout_seconds * 6)
    global_flat = init_params(spec_dict, n_features, n_classes)
    eps_node = {n: 0.0 for n in names}
    delta_paid: set[str] = set()   # nodes whose ledger already holds the job's delta
    refused: set[str] = set()      # nodes that answered a round with an error: out of this job
    rounds_log: list[dict[str, Any]] = []
    # Tail averaging (post-processing, free of privacy cost): the released model is the mean of the
    # global models of the second half of the rounds, which damps the DP noise of single rounds.
    tail_from = int(spec_dict["rounds"]) // 2 + 1
    tail_sum, tail_n = np.zeros_like(global_flat), 0
    stop_reason = None
    for rnd in range(1, int(spec_dict["rounds"]) + 1):
        online = {p["node_id"] for p in await asyncio.to_thread(qs.lookup, spec_dict["dataset"]) if p["online"]}
        # A node that missed earlier rounds (slow, or briefly away) rejoins as soon as it is back
        # online; one that was never prepared gets another chance to prepare first.
        late = [n for n in names if n in online and n not in next_cost and n not in refused]
        if late:
            await prepare(late, settings.round_timeout_seconds * 3)
        active = [n for n in names if n in online and n not in refused and next_cost.get(n) is not None]
        if len(active) < 2 and len(names) >= 2:
            stop_reason = f"round {rnd}: fewer than 2 nodes available"
            break
        round_delta = {n: (0.0 if n in delta_paid else delta) for n in active}
        try:
            await asyncio.to_thread(_reserve_round, svc, job_id, who,
                                    [(ledger[n], float(next_cost[n] or 0.0), round_delta[n]) for n in active])
        except BudgetExhausted as e:
            stop_reason = f"round {rnd}: {e.detail}"
            break
        t = default_threshold(len(active))
        g_bytes = global_flat.astype("<f8").tobytes()
        try:
            res = await secure_sum(hub, job_id, f"{job_id}:round{rnd}", active, global_flat.size + 1,
                                   lambda node, r=rnd, g=g_bytes: Task(
                                       "train_begin", job_id, {"round": r, "epsilon_budget_left": next_cost[node]},
                                       {"global": g}),
                                   threshold=t, round_timeout=settings.round_timeout_seconds,
                                   begin_timeout=settings.round_timeout_seconds * 10)
        except ProtocolAborted as e:
            # Nothing of this round was unmasked: its reservation is refunded.
            await asyncio.to_thread(_settle, svc, job_id, {})
            stop_reason = f"round {rnd}: {e.detail}"
            break
        charges = {ledger[n]: (float(res.first_replies[n]["epsilon_round"]), round_delta[n])
                   for n in res.survivors}
        for n in active:
            # A node that dropped out may still have run the round (its accountant moved on while
            # its answer was lost): charge what was reserved for it — exactly that round's cost if
            # it ran, an over-charge if it did not — so a ledger never holds less than its
            # node's accountant. Later rounds cost no more than earlier ones (RDP epsilon is
            # concave in the number of steps), so its old next_cost still covers its next round.
            charges.setdefault(ledger[n], (float(next_cost[n] or 0.0), round_delta[n]))
        delta_paid.update(active)
        refused.update(res.refused)
        await asyncio.to_thread(_settle, svc, job_id, charges)
        totals = fp_decode(res.total, UPDATE_FRAC_BITS)
        from xdp_compute.training.federated import fedavg_from_sums

        global_flat = fedavg_from_sums(global_flat, totals[:-1], float(totals[-1]))
        if rnd >= tail_from:
            tail_sum, tail_n = tail_sum + global_flat, tail_n + 1
        for n in active:
            eps_node[n] += charges[ledger[n]][0]  # what its ledger was charged, summed over rounds
        for n in res.survivors:
            next_cost[n] = res.first_replies[n].get("next_cost")
        ms = [res.first_replies[n].get("metrics") or {} for n in res.survivors]
        count = sum(x.get("count", 0) for x in ms)
        progress.update({"round": rnd, "epsilon": max(eps_node.values()),
                         "loss": (sum(x.get("loss_sum", 0) for x in ms) / count) if count > 0 else None})
        rounds_log.append({"round": rnd, "nodes": sorted(names[n] for n in res.survivors),
                           "missing": sorted(names[n] for n in names if n not in res.survivors)})
    if tail_n:
        global_flat = tail_sum / tail_n
    if not rounds_log:
        await asyncio.to_thread(svc.gate.refuse, job_id, who.name, outcome, FAILED,
                                f"no training round completed ({stop_reason})", refund=True)
        raise ProtocolAborted(f"no training round completed: {stop_reason}")
    in_job = [n for n in names if n in next_cost and n not in refused]
    evals = await asyncio.gather(*(call(n, Task("train_eval", job_id, {}, {"global": global_flat.astype("<f8").tobytes()}),
                                        settings.round_timeout_seconds * 3) if n in in_job else _absent()
                                   for n in names))
    per_node = {}
    for n, r in zip(names, evals, strict=True):
        mt = (r.header.get("metrics") if r is not None else None) or {}
        c = mt.get("count", 0)
        per_node[names[n]] = {
            "epsilon": eps_node[n], "holdout_rows_noisy": c,
            "accuracy": (mt["second"] / c) if c and c > 0 and mt.get("kind") == "correct" else None,
            "loss": (mt["loss_sum"] / c) if c and c > 0 else None}
    total_c = sum(v["holdout_rows_noisy"] or 0 for v in per_node.values())
    acc = [v for v in per_node.values() if v["accuracy"] is not None]
    overall = {"accuracy": (sum(v["accuracy"] * v["holdout_rows_noisy"] for v in acc) / total_c)
               if acc and total_c > 0 else None,
               "loss": (sum((v["loss"] or 0) * v["holdout_rows_noisy"] for v in per_node.values()) / total_c)
               if total_c > 0 else None}
    card = {"architecture": describe_model(spec_dict, n_features, n_classes), "dataset": spec_dict["dataset"],
            "nodes": sorted(names.values()), "rounds_planned": int(spec_dict["rounds"]), "rounds_done": len(rounds_log),
            "rounds": rounds_log, "rounds_missing_nodes": [r for r in rounds_log if r["missing"]],
            "epsilon_per_node": {names[n]: e for n, e in eps_node.items()}, "delta": delta,
            "target_epsilon": spec_dict["target_epsilon"], "stopped_early": stop_reason,
            "metrics_per_node": per_node, "metrics": overall,
            "released_params": f"mean of the global models of rounds {tail_from}..{len(rounds_log)}"
                               if tail_n else "the last global model",
            "privacy": "DP-SGD per node (Opacus RDP accounting, Poisson sampling), FedAvg weighted by "
                       "Gaussian-noised row counts, secure aggregation of updates; metrics on held-out rows "
                       "with discrete Gaussian noise"}
    payload = {"model": {"spec": spec_dict, "n_features": n_features, "n_classes": n_classes,
                         "params": [float(x) for x in global_flat]},
               "card": card, "metrics": overall, "cells": int(global_flat.size)}
    outcome.payload, outcome.nodes = payload, sorted(names.values())
    outcome.cost = {"epsilon": max(eps_node.values()), "delta": delta,
                    "per_node": {names[n]: e for n, e in eps_node.items()}}
    outcome.recheck = lambda: _recheck(qs, who, spec_dict, parts)
    progress["done"] = True
    return await qs.release(job_id, who.name, outcome, started)


async def _absent() -> None:
    return None


def _warn(node: str, kind: str, error: str) -> None:
    log.warning("node %s failed %s: %s", node, kind, error)


def _recheck(qs: QueryService, who: PrincipalView, spec: dict[str, Any], parts: list[dict[str, Any]]
             ) -> list[dict[str, Any]]:
    fresh = [x for x in qs.lookup(spec["dataset"]) if x["node_id"] in {p["node_id"] for p in parts}]
    ds = evaluate(node_parts(fresh), Requester(who.name, who.role, who.region), 0.0, 0.0,
                  restricted_categories=qs.svc.settings.restricted_categories, output="trained model")
    return [d.to_dict() for d in ds if d.rule not in ("budget", "epsilon_cap")]


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


def _register() -> None:
    from xdp_compute.gateway.approvals import RUNNERS

    RUNNERS["training"] = run_training


_register()
