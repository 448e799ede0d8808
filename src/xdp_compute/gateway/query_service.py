"""Federated DP SQL jobs: plan -> policy -> reserve -> secure aggregation -> release through the gate."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import sqlglot
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlglot import exp

from xdp_compute.crypto.paillier import EncryptedVector, PackingScheme, PaillierPublic, aggregate_encrypted
from xdp_compute.crypto.secagg import default_threshold
from xdp_compute.domain.manifest import DatasetSpec
from xdp_compute.domain.policy import Decision, NodePart, Requester, check_privacy_params, enforce, evaluate
from xdp_compute.errors import (
    BadRequest,
    BudgetExhausted,
    Conflict,
    InvalidQuery,
    NotFound,
    PolicyDenied,
    ProtocolAborted,
    XdpError,
)
from xdp_compute.gateway import models as m
from xdp_compute.gateway.app import Services
from xdp_compute.gateway.hub import NodeDropped, Task
from xdp_compute.gateway.release import BUDGET_EXHAUSTED, DENIED, FAILED, Outcome, digest
from xdp_compute.gateway.secure_sum import secure_sum
from xdp_compute.gateway.store import PrincipalView, ReservationRequest, new_id
from xdp_compute.privacy import Measurement, NoisePlan, expected_error, plan_noise
from xdp_compute.query import QueryPlan, plan_query, referenced_dataset
from xdp_compute.query.finalize import GROUP_SIZE_ALIAS, finalize_rows, suppress_small_groups
from xdp_compute.query.plan import from_ring

log = logging.getLogger("xdp.gateway.query")
DEFAULT_DELTA_FRACTION = 0.001  # a query's default delta: 0.1% of the smallest delta budget
HE_VALUE_BITS = 62  # per-node noisy partials fit in 62 bits (plan headroom); slots add room for the n-way sum
MAX_CIPHERTEXT_BYTES = 32 << 20  # a query's default delta: 1% of the smallest declared delta budget


@dataclass
class Prepared:
    """Everything decided before anything is computed."""

    principal: PrincipalView
    dataset: str
    parts: list[dict[str, Any]]
    plan: QueryPlan
    hidden_count: bool
    noise: NoisePlan
    threshold: int
    decisions: list[Decision]
    epsilon: float
    delta: float
    level: float
    spec_digest: str
    operation: str = "query"
    public_key: dict[str, Any] | None = None  # the analyst's Paillier key (encrypted delivery)
    extra: dict[str, Any] = field(default_factory=dict)  # kind-specific inputs (e.g. CKKS context)

    @property
    def node_names(self) -> list[str]:
        return [p["node"] for p in self.parts]

    def cost(self) -> dict[str, float]:
        return {"epsilon": self.noise.epsilon, "delta": self.noise.delta, "rho": self.noise.rho}


def with_group_size(sql: str) -> tuple[str, bool]:
    """Make sure the query measures COUNT(*) per group: small-cell suppression needs it."""
    try:
        tree = sqlglot.parse_one(sql, read="duckdb")
    except sqlglot.errors.ParseError:
        return sql, False  # the planner reports the syntax error properly
    if not isinstance(tree, exp.Select):
        return sql, False
    for e in tree.expressions:
        inner = e.this if isinstance(e, exp.Alias) else e
        if isinstance(inner, exp.Count) and isinstance(inner.this, exp.Star):
            return sql, False
    tree = tree.select(exp.alias_(exp.Count(this=exp.Star()), GROUP_SIZE_ALIAS), copy=True)
    return tree.sql(dialect="duckdb"), True


def node_parts(parts: list[dict[str, Any]]) -> list[NodePart]:
    return [NodePart(node=p["node"], region=p["region"], spec=DatasetSpec.from_dict(p["spec"]),
                     epsilon_left=p["eps_budget"] - p["eps_spent"] - p["eps_reserved"],
                     delta_left=p["delta_budget"] - p["delta_spent"]) for p in parts]


class QueryService:
    def __init__(self, svc: Services) -> None:
        self.svc = svc
        self.store = svc.store
        self.gate = svc.gate

    # ------------------------------------------------------------------ planning
    def lookup(self, name: str) -> list[dict[str, Any]]:
        for n in self.store.dataset_names():
            if n.lower() == name.lower():
                return self.store.dataset_parts(n)
        raise NotFound(f"no dataset named {name!r}")

    def prepare(self, who: PrincipalView, sql: str, epsilon: Any, delta: Any, level: float = 0.95,
                operation: str = "query", public_key: dict[str, Any] | None = None) -> Prepared:
        if not isinstance(sql, str) or not sql.strip():
            raise InvalidQuery("empty query")
        name = referenced_dataset(sql)
        all_parts = self.lookup(name)
        parts = [p for p in all_parts if p["online"]]
        if not parts:
            raise Conflict(f"no node holding dataset {name!r} is online")
        spec = DatasetSpec.from_dict(parts[0]["spec"])
        default_delta = min(p["delta_budget"] for p in parts) * DEFAULT_DELTA_FRACTION
        eps, dlt = check_privacy_params(epsilon, delta, default_delta)
        if not 0.5 <= level < 1:
            raise BadRequest("level must be in [0.5, 1)")
        if public_key is not None:
            # Encrypted delivery: the analyst's Paillier key is validated at the border.
            PaillierPublic.from_dict(public_key)
            operation = "he_query"
        full_sql, hidden = with_group_size(sql)
        plan = plan_query(full_sql, spec)
        n = len(parts)
        t = default_threshold(n)  # a majority; at least 2 when n >= 2
        measurements = [Measurement(name=mm.key, l2_sensitivity=mm.sensitivity, dim=len(plan.cells),
                                    l1_sensitivity=mm.sensitivity) for mm in plan.measurements]
        noise = plan_noise(eps, dlt, measurements, t)
        decisions = evaluate(node_parts(parts), Requester(who.name, who.role, who.region), noise.epsilon,
                             noise.delta, restricted_categories=self.svc.settings.restricted_categories,
                             output=operation)
        offline = [p["node"] for p in all_parts if not p["online"]]
        if offline:
            decisions.append(Decision("participation", True, f"offline node(s) {offline} do not take part; "
                                                              "their rows are not in the answer"))
        spec_digest = digest({"operation": operation, "sql": sql, "epsilon": eps, "delta": dlt, "level": level,
                              "public_key": public_key})
        if public_key is not None:
            decisions.append(Decision("suppression", True, "encrypted delivery: the gateway cannot see counts, so "
                                                           "small-group suppression is applied by the SDK after "
                                                           "decryption (the DP noise protects either way)"))
        return Prepared(who, plan.dataset, parts, plan, hidden, noise, t, decisions, eps, dlt, level, spec_digest,
                        operation, public_key)

    def dry_run(self, p: Prepared) -> dict[str, Any]:
        scales = {mm.key: 1.0 / mm.scale for mm in p.plan.measurements}
        err_t = expected_error(p.noise, level=p.level, scales=scales)
        err_n = expected_error(p.noise, level=p.level, n_shares=len(p.parts), scales=scales)
        per_output = {}
        for o in p.plan.outputs:
            if o.kind in ("count", "sum") and not (p.hidden_count and o.alias == GROUP_SIZE_ALIAS):
                key = p.plan.measurements[o.inputs[0]].key
                per_output[o.alias] = {"halfwidth_all_nodes": err_n[key], "halfwidth_threshold_nodes": err_t[key]}
            elif o.kind in ("avg", "variance", "stddev"):
                per_output[o.alias] = {"note": "depends on the (unknown) group size; see the count and sum "
                                               "half-widths it is derived from"}
        return {
            "dry_run": True, "dataset": p.dataset, "operation": p.operation,
            "plan": {"sql": p.plan.sql, "cells": len(p.plan.cells), "group_columns": list(p.plan.group_columns),
                     "measurements": [mm.key for mm in p.plan.measurements],
                     "nodes": p.node_names, "threshold": p.threshold, "digest": p.plan.digest()},
            "cost": p.cost(), "level": p.level, "expected_error": per_output,
            "decisions": [d.to_dict() for d in p.decisions],
            "allowed": all(d.allowed for d in p.decisions),
        }

    # ------------------------------------------------------------------ submission
    def outcome_for(self, p: Prepared, payload: dict[str, Any] | None = None, nodes: list[str] | None = None
                    ) -> Outcome:
        return Outcome(operation=p.operation, payload=payload or {}, datasets=[p.dataset],
                       nodes=nodes if nodes is not None else p.node_names, spec_digest=p.spec_digest,
                       cost=p.cost(), decisions=[d.to_dict() for d in p.decisions])

    def existing(self, who: PrincipalView, key: str | None, spec_digest: str) -> m.Job | None:
        if not key:
            return None
        with self.store.read() as s:
            job = s.scalar(select(m.Job).where(m.Job.principal_id == who.id, m.Job.idempotency_key == key))
        if job is not None and json.loads(job.spec_json).get("digest") != spec_digest:
            raise Conflict("this idempotency key was used for a different request")
        return job

    def reserve(self, p: Prepared, idempotency_key: str | None, spec: dict[str, Any],
                approval_holders: list[str]) -> tuple[str, bool]:
        """Create the job and hold its budget atomically; returns (job id, created)."""
        job_id = new_id()
        now = time.time()
        status = "awaiting_approval" if approval_holders else "reserved"
        try:
            with self.store.write() as s:
                s.add(m.Job(id=job_id, principal_id=p.principal.id, kind=p.operation, status=status,
                            spec_json=json.dumps({**spec, "digest": p.spec_digest}),
                            plan_json=json.dumps({"plan": p.plan.to_dict(), "noise": p.noise.to_dict(),
                                                  "threshold": p.threshold, "hidden_count": p.hidden_count,
                                                  "nodes": [x["node_id"] for x in p.parts],
                                                  "level": p.level,
                                                  "extra": {k: (base64.b64encode(v).decode()
                                                                if isinstance(v, bytes) else v)
                                                            for k, v in p.extra.items()},
                                                  "decisions": [d.to_dict() for d in p.decisions]}),
                            cost_json=json.dumps(p.cost()), idempotency_key=idempotency_key, created_at=now,
                            updated_at=now, compute_seconds=0.0))
                s.flush()
                settings = self.svc.settings
                self.store.ensure_analyst_budget(s, p.principal.id, settings.analyst_epsilon_budget,
                                                 settings.analyst_delta_budget)
                holds = [ReservationRequest(x["ledger_id"], p.noise.epsilon, p.noise.delta) for x in p.parts]
                self.store.reserve(s, job_id, p.principal.id, holds, p.noise.epsilon, p.noise.delta)
                for holder_id in approval_holders:
                    s.add(m.Approval(job_id=job_id, holder_id=holder_id, decision="pending"))
        except IntegrityError:
            job = self.existing(p.principal, idempotency_key, p.spec_digest)
            if job is None:
                raise
            return job.id, False
        return job_id, True

    async def submit(self, who: PrincipalView, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """Handle POST /v1/queries. Returns (HTTP status, body)."""
        p = await asyncio.to_thread(self.prepare, who, body["sql"], body["epsilon"], body.get("delta"),
                                    body.get("level", 0.95), "query", body.get("public_key"))
        if body.get("dry_run"):
            return 200, self.dry_run(p)
        return await self.submit_prepared(who, p, body.get("idempotency_key"),
                                          {"sql": body["sql"], "epsilon": p.epsilon, "delta": p.delta,
                                           "public_key": p.public_key})

    async def submit_prepared(self, who: PrincipalView, p: Prepared, key: str | None,
                              spec: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """Idempotency, policy enforcement, reservation, approval wait or run — for every job kind."""
        job = await asyncio.to_thread(self.existing, who, key, p.spec_digest)
        if job is not None:
            return await self.await_existing(job.id)
        try:
            enforce(p.decisions)
        except (PolicyDenied, BudgetExhausted) as e:
            kind = BUDGET_EXHAUSTED if isinstance(e, BudgetExhausted) else DENIED
            await asyncio.to_thread(self.gate.refuse, None, who.name, self.outcome_for(p), kind, e.detail,
                                    refund=False)
            raise
        approvals = self.approval_holders(p)
        try:
            job_id, created = await asyncio.to_thread(self.reserve, p, key, spec, approvals)
        except BudgetExhausted as e:
            await asyncio.to_thread(self.gate.refuse, None, who.name, self.outcome_for(p), BUDGET_EXHAUSTED,
                                    e.detail, refund=False)
            raise
        if not created:
            return await self.await_existing(job_id)
        if approvals:
            return 202, {"job_id": job_id, "status": "awaiting_approval",
                         "detail": "the dataset's holders must approve this job before anything is computed"}
        return 200, await self.run(job_id, p)

    def approval_holders(self, p: Prepared) -> list[str]:
        return sorted({x["holder_id"] for x in p.parts if x["spec"].get("require_approval")
                       or x["spec"].get("classification") == "core"})

    async def await_existing(self, job_id: str, timeout: float = 600) -> tuple[int, dict[str, Any]]:
        """An idempotent retry: return the job's one answer (waiting for it if still running)."""
        deadline = time.time() + timeout
        def load() -> m.Job:
            with self.store.read() as s:
                job = s.get(m.Job, job_id)
            assert job is not None
            return job

        while True:
            job = await asyncio.to_thread(load)
            if job.status == "released" and job.result_json:
                delivery = self.svc.extra.get("undelivered", {}).pop(job_id, None) or json.loads(job.result_json)
                delivery["receipt"] = self.gate.log.receipt(delivery["log_index"])
                return 200, delivery
            if job.status in ("denied", "failed"):
                err = json.loads(job.error_json or "{}")
                raise Conflict(f"job {job_id} ended {job.status}: {err.get('detail', '')}", job_id=job_id)
            if job.status == "awaiting_approval":
                return 202, {"job_id": job_id, "status": job.status}
            if time.time() > deadline:
                return 202, {"job_id": job_id, "status": job.status}
            await asyncio.sleep(0.1)

    # ------------------------------------------------------------------ execution
    def _start(self, job_id: str) -> None:
        """reserved -> running, and only that: a denied or finished job never starts."""
        with self.store.write() as s:
            job = s.scalar(select(m.Job).where(m.Job.id == job_id).with_for_update())
            if job is None or job.status != "reserved":
                raise Conflict(f"job {job_id} is {job.status if job else 'unknown'}; it cannot start")
            job.status, job.updated_at = "running", time.time()

    def _record_compute(self, job_id: str, seconds: float) -> None:
        with self.store.write() as s:
            job = s.get(m.Job, job_id)
            if job is not None:
                job.compute_seconds = seconds

    async def guarded(self, job_id: str, p: Prepared, work: Any) -> dict[str, Any]:
        """Run ``work`` (compute through release). A protocol abort before any value exists is
        refunded; any other failure before release is charged (a noisy value may exist) and logged."""
        try:
            return await work
        except ProtocolAborted:
            raise  # the runner refunded and logged it
        except BaseException as e:
            with self.store.read() as s:
                job = s.get(m.Job, job_id)
            if job is not None and job.status == "running":
                detail = e.detail if isinstance(e, XdpError) else type(e).__name__
                await asyncio.to_thread(self.gate.refuse, job_id, p.principal.name, self.outcome_for(p), FAILED,
                                        f"job failed: {detail}", refund=False, charge=True)
            raise

    async def run(self, job_id: str, p: Prepared, background: bool = False) -> dict[str, Any]:
        """Compute over the nodes and pass the result through the ReleaseGate.

        ``background``: nobody waits on the HTTP request (approved jobs); an encrypted answer is
        then held in memory until its owner fetches it once.
        """
        await asyncio.to_thread(self._start, job_id)
        if p.operation == "he_score":
            from xdp_compute.gateway.score_service import run_score

            return await self.guarded(job_id, p, run_score(self, job_id, p, background))
        if p.public_key is not None:
            return await self.guarded(job_id, p, self.run_encrypted(job_id, p, background))
        return await self.guarded(job_id, p, self.run_plain(job_id, p))

    async def run_plain(self, job_id: str, p: Prepared) -> dict[str, Any]:
        started = time.time()
        sigmas = {mm.name: f"{mm.sigma_node2.numerator}/{mm.sigma_node2.denominator}"
                  for mm in p.noise.measurements}
        ids = [x["node_id"] for x in p.parts]
        names = {x["node_id"]: x["node"] for x in p.parts}
        header = {"plan": p.plan.to_dict(), "sigma_node2": sigmas}
        try:
            res = await secure_sum(self.svc.hub, job_id, f"{job_id}:sum", ids, p.plan.vector_length,
                                   lambda node: Task("query_begin", job_id, dict(header)), threshold=p.threshold,
                                   round_timeout=self.svc.settings.round_timeout_seconds,
                                   begin_timeout=self.svc.settings.round_timeout_seconds * 6)
        except ProtocolAborted as e:
            # Nothing was unmasked, so nothing was computed that could leak: refund.
            await asyncio.to_thread(self.gate.refuse, job_id, p.principal.name, self.outcome_for(p), FAILED,
                                    f"secure aggregation aborted: {e.detail}", refund=True)
            raise
        survivors = [names[u] for u in res.survivors]
        payload = self.finalize(p, res.total, len(res.survivors))
        payload["nodes"] = survivors
        payload["dropped"] = {names[u]: ph for u, ph in res.dropped.items()}
        outcome = self.outcome_for(p, payload, survivors)
        outcome.suppress = lambda pl: self.suppress(p, pl)
        outcome.recheck = lambda: self.recheck(p)
        return await self.release(job_id, p.principal.name, outcome, started)

    async def run_encrypted(self, job_id: str, p: Prepared, background: bool = False) -> dict[str, Any]:
        """Paillier encrypted delivery: nodes send packed encrypted noisy partials; the gateway only
        multiplies ciphertexts (homomorphic addition) and releases the encrypted total."""
        assert p.public_key is not None
        started = time.time()
        public = PaillierPublic.from_dict(p.public_key)
        scheme = PackingScheme(public.bits, HE_VALUE_BITS)
        sigmas = {mm.name: f"{mm.sigma_node2.numerator}/{mm.sigma_node2.denominator}"
                  for mm in p.noise.measurements}
        header = {"plan": p.plan.to_dict(), "sigma_node2": sigmas, "public_key": public.to_dict(),
                  "scheme": scheme.to_dict()}
        names = {x["node_id"]: x["node"] for x in p.parts}
        timeout = self.svc.settings.round_timeout_seconds * 6

        async def one(node: str) -> tuple[str, EncryptedVector | None]:
            try:
                r = await self.svc.hub.call(node, Task("he_query_partial", job_id, dict(header)), timeout)
                if not r.ok:
                    log.warning("node %s failed its encrypted partial: %s", names[node], r.error)
                    return node, None
                vec = EncryptedVector.from_bytes(r.blobs.get("ciphertext", b""), public,
                                                 max_bytes=MAX_CIPHERTEXT_BYTES)
                # One node's vector must be one contribution of exactly this plan's layout.
                if vec.length != p.plan.vector_length or vec.n_contributions != 1 or \
                        vec.scheme.to_dict() != scheme.to_dict():
                    log.warning("node %s sent an encrypted partial of the wrong shape", names[node])
                    return node, None
                return node, vec
            except NodeDropped:
                return node, None
            except XdpError as e:  # an invalid ciphertext from a node counts as its drop-out
                log.warning("node %s sent an invalid encrypted partial: %s", names[node], e.detail)
                return node, None

        got = [(n, v) for n, v in await asyncio.gather(*(one(x["node_id"]) for x in p.parts)) if v is not None]
        if len(got) < p.threshold:
            reason = (f"only {len(got)} of {len(p.parts)} nodes returned encrypted partials; at least "
                      f"{p.threshold} are needed to carry the calibrated noise")
            await asyncio.to_thread(self.gate.refuse, job_id, p.principal.name, self.outcome_for(p), FAILED,
                                    reason, refund=True)
            raise ProtocolAborted(reason)
        total = aggregate_encrypted(public, [v for _, v in got])
        survivors = sorted(names[n] for n, _ in got)
        payload = {"encrypted": True, "key_fingerprint": public.fingerprint,
                   "ciphertext": base64.b64encode(total.to_bytes(public)).decode(),
                   "plan": p.plan.to_dict(), "noise": p.noise.to_dict(), "n_shares": len(got), "level": p.level,
                   "hidden_count": p.hidden_count, "dataset": p.dataset, "nodes": survivors,
                   "min_group_size": max(x["spec"]["min_group_size"] for x in p.parts),
                   "epsilon": p.noise.epsilon, "delta": p.noise.delta, "cells": p.plan.vector_length}
        outcome = self.outcome_for(p, payload, survivors)
        outcome.recheck = lambda: self.recheck(p)
        outcome.keep_out = ("ciphertext",)
        return self.hand_over(job_id, await self.release(job_id, p.principal.name, outcome, started), background)

    async def release(self, job_id: str, principal: str, outcome: Outcome, started: float) -> dict[str, Any]:
        """Record compute time, then pass the outcome through the one ReleaseGate with its approvers."""
        await asyncio.to_thread(self._record_compute, job_id, time.time() - started)
        approvers = await asyncio.to_thread(self.approvers, job_id)
        return await asyncio.to_thread(self.gate.release, job_id, principal, outcome, approvers)

    def hand_over(self, job_id: str, delivery: dict[str, Any], background: bool) -> dict[str, Any]:
        """An encrypted answer that nobody is waiting for is held in memory until fetched once."""
        if background:
            self.svc.extra.setdefault("undelivered", {})[job_id] = delivery
        return delivery

    def approvers(self, job_id: str) -> list[str]:
        with self.store.read() as s:
            rows = s.execute(select(m.Principal.name).join(m.Approval, m.Approval.holder_id == m.Principal.id)
                             .where(m.Approval.job_id == job_id, m.Approval.decision == "approved")).all()
        return sorted(r[0] for r in rows)

    def recheck(self, p: Prepared) -> list[dict[str, Any]]:
        """Policy re-check at release: the holders' current policy (budget excluded: it is reserved)."""
        parts = [x for x in self.lookup(p.dataset) if x["node_id"] in {y["node_id"] for y in p.parts}]
        fresh = evaluate(node_parts(parts), Requester(p.principal.name, p.principal.role, p.principal.region),
                         0.0, 0.0, restricted_categories=self.svc.settings.restricted_categories,
                         output=p.operation)
        return [d.to_dict() for d in fresh if d.rule not in ("budget", "epsilon_cap")]

    def finalize(self, p: Prepared, total: np.ndarray, n_shares: int) -> dict[str, Any]:
        """Noisy totals -> rows keyed by alias, with intervals from the known noise."""
        return finalize_rows(p.plan, p.noise, [from_ring(int(x)) for x in total], n_shares, p.level,
                             p.hidden_count, p.dataset)

    def suppress(self, p: Prepared, payload: dict[str, Any]) -> int:
        """Small-cell suppression: a group whose noisy count is below min_group_size shows no numbers."""
        return suppress_small_groups(p.plan, payload, max(x["spec"]["min_group_size"] for x in p.parts),
                                     p.hidden_count)


def prepared_from_job(qs: QueryService, job: m.Job) -> Prepared:
    """Rebuild what was decided at submission from the stored job (used after approval)."""
    from xdp_compute.privacy import NoisePlan

    with qs.store.read() as s:
        pr = s.get(m.Principal, job.principal_id)
    assert pr is not None
    who = PrincipalView(pr.id, pr.name, pr.role, pr.region)
    stored = json.loads(job.plan_json)
    plan = QueryPlan.from_dict(stored["plan"])
    parts = [x for x in qs.lookup(plan.dataset) if x["node_id"] in set(stored["nodes"])]
    spec = json.loads(job.spec_json)
    decisions = [Decision(**d) for d in stored["decisions"]]
    return Prepared(who, plan.dataset, parts, plan, stored["hidden_count"], NoisePlan.from_dict(stored["noise"]),
                    stored["threshold"], decisions, spec["epsilon"], spec["delta"], stored["level"],
                    spec["digest"], job.kind, spec.get("public_key"),
                    {k: (base64.b64decode(v) if k in ("context", "weights") else v)
                     for k, v in stored.get("extra", {}).items()})


async def run_approved_query(svc: Services, job_id: str) -> dict[str, Any]:
    from xdp_compute.gateway.routers.jobs import service

    qs = service(svc)
    with svc.store.read() as s:
        job = s.get(m.Job, job_id)
    assert job is not None
    p = await asyncio.to_thread(prepared_from_job, qs, job)
    return await qs.run(job_id, p, background=True)


def _register() -> None:
    from xdp_compute.gateway.approvals import RUNNERS

    RUNNERS["query"] = run_approved_query
    RUNNERS["he_query"] = run_approved_query
    RUNNERS["he_score"] = run_approved_query


_register()
