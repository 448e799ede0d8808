"""Holders' approvals: a job on a dataset that requires approval waits, before anything is computed,
until every owning holder approves; a denial refunds the reservation and is logged."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from sqlalchemy import select

from xdp_compute.errors import Conflict, Forbidden, NotFound, XdpError
from xdp_compute.gateway import models as m
from xdp_compute.gateway.release import APPROVAL_GIVEN, APPROVAL_REFUSED
from xdp_compute.gateway.runners import runner_for
from xdp_compute.gateway.services import Services
from xdp_compute.gateway.store import PrincipalView

log = logging.getLogger("xdp.gateway.approvals")
_background: set[asyncio.Task[Any]] = set()


def pending_for(svc: Services, holder: PrincipalView) -> list[dict[str, Any]]:
    """The holder's view of jobs awaiting its decision: plan, principal, cost, decisions — no data."""
    with svc.store.read() as s:
        rows = s.execute(select(m.Approval, m.Job, m.Principal.name)
                         .join(m.Job, m.Job.id == m.Approval.job_id)
                         .join(m.Principal, m.Principal.id == m.Job.principal_id)
                         .where(m.Approval.holder_id == holder.id).order_by(m.Job.created_at)).all()
    out = []
    for a, job, principal in rows:
        plan = json.loads(job.plan_json)
        spec = json.loads(job.spec_json)
        out.append({"job_id": job.id, "status": job.status, "your_decision": a.decision, "reason": a.reason,
                    "principal": principal, "operation": job.kind,
                    "request": {k: v for k, v in spec.items() if k != "digest"},
                    "cost": json.loads(job.cost_json), "decisions": plan.get("decisions", []),
                    "plan_summary": summary(plan), "created_at": job.created_at})
    return out


def summary(plan: dict[str, Any]) -> dict[str, Any]:
    p = plan.get("plan") or {}
    out = {k: p.get(k) for k in ("dataset", "sql", "group_columns") if k in p}
    out.update({"nodes": len(plan.get("nodes", [])), "threshold": plan.get("threshold")})
    return out


def _load(svc: Services, holder: PrincipalView, job_id: str) -> tuple[m.Job, m.Approval]:
    with svc.store.read() as s:
        job = s.get(m.Job, job_id)
        if job is None:
            raise NotFound(f"no job {job_id!r}")
        a = s.scalar(select(m.Approval).where(m.Approval.job_id == job_id, m.Approval.holder_id == holder.id))
    if a is None:
        raise Forbidden("only a holder of this job's data may approve or deny it")
    if job.status != "awaiting_approval" or a.decision != "pending":
        raise Conflict(f"job {job_id} is {job.status}; your decision was {a.decision}")
    return job, a


def _lock_pending(s: Any, holder: PrincipalView, job_id: str) -> tuple[m.Approval, m.Job]:
    """Inside a write transaction: this holder's still-pending decision on a still-waiting job.

    SQLite write transactions are BEGIN IMMEDIATE; on PostgreSQL the rows are locked FOR UPDATE,
    so a concurrent approve and deny cannot both pass.
    """
    j = s.scalar(select(m.Job).where(m.Job.id == job_id).with_for_update())
    a = s.scalar(select(m.Approval).where(m.Approval.job_id == job_id, m.Approval.holder_id == holder.id)
                 .with_for_update())
    if j is None or a is None or a.decision != "pending" or j.status != "awaiting_approval":
        raise Conflict(f"job {job_id} is no longer awaiting your decision")
    return a, j


def _refund_if_never_started(svc: Services, job_id: str) -> None:
    """An approved job whose runner failed before computing anything: refund and log it."""
    with svc.store.read() as s:
        job = s.get(m.Job, job_id)
    if job is None or job.status != "reserved":
        return
    from xdp_compute.gateway.release import FAILED, Outcome

    spec = json.loads(job.spec_json)
    outcome = Outcome(operation=job.kind, payload={}, datasets=[], nodes=[], spec_digest=spec.get("digest", ""),
                      cost=json.loads(job.cost_json))
    svc.gate.refuse(job_id, "gateway", outcome, FAILED, "the approved job could not start; nothing was computed",
                    refund=True)


async def approve(svc: Services, holder: PrincipalView, job_id: str,
                  reason: str | None = None) -> dict[str, Any]:
    job, _ = await asyncio.to_thread(_load, svc, holder, job_id)

    def record() -> bool:
        with svc.store.write() as s:
            a, _ = _lock_pending(s, holder, job_id)
            a.decision, a.reason, a.decided_at = "approved", reason, time.time()
            s.flush()
            left = s.scalars(select(m.Approval).where(m.Approval.job_id == job_id,
                                                      m.Approval.decision != "approved")).all()
            if not left:
                j = s.get(m.Job, job_id)
                assert j is not None
                j.status, j.updated_at = "reserved", time.time()
            return not left

    ready = await asyncio.to_thread(record)
    await asyncio.to_thread(svc.gate.record, {"kind": APPROVAL_GIVEN, "job_id": job_id, "principal": holder.name,
                                              "operation": job.kind, "spec_digest": json.loads(job.spec_json)["digest"],
                                              "approvers": [holder.name], "payload_digest": None})
    if ready:
        runner = runner_for(job.kind)

        async def run() -> None:
            try:
                await runner(svc, job_id)
            except XdpError as e:
                log.warning("approved job %s did not release: %s", job_id, e.detail)
            except Exception:
                log.exception("approved job %s failed", job_id)
            finally:
                await asyncio.to_thread(_refund_if_never_started, svc, job_id)

        task = asyncio.create_task(run())
        _background.add(task)
        task.add_done_callback(_background.discard)
    return {"job_id": job_id, "decision": "approved", "job_runs": ready}


async def deny(svc: Services, holder: PrincipalView, job_id: str, reason: str) -> dict[str, Any]:
    job, _ = await asyncio.to_thread(_load, svc, holder, job_id)

    def record() -> None:
        with svc.store.write() as s:
            a, j = _lock_pending(s, holder, job_id)
            a.decision, a.reason, a.decided_at = "denied", reason, time.time()
            # In the same transaction: no concurrent approval can start this job any more.
            j.status, j.updated_at = "denied", time.time()

    await asyncio.to_thread(record)
    from xdp_compute.gateway.release import Outcome

    spec = json.loads(job.spec_json)
    plan = json.loads(job.plan_json)
    outcome = Outcome(operation=job.kind, payload={}, datasets=[summary(plan).get("dataset") or ""],
                      nodes=[], spec_digest=spec["digest"], cost=json.loads(job.cost_json),
                      decisions=plan.get("decisions", []))
    # Nothing was computed: the reservation is refunded and the refusal logged.
    await asyncio.to_thread(svc.gate.refuse, job_id, holder.name, outcome, APPROVAL_REFUSED,
                            f"denied by holder {holder.name!r}: {reason}", refund=True)
    return {"job_id": job_id, "decision": "denied"}
