"""Recovery after a restart: jobs a crash interrupted are charged and failed, never released."""

from __future__ import annotations

import json
import logging
from typing import Any

from sqlalchemy import select

from xdp_compute.gateway import models as m
from xdp_compute.gateway.release import FAILED, Outcome
from xdp_compute.gateway.services import Services

log = logging.getLogger("xdp.gateway.recovery")

ACTIVE = ("reserved", "running", "awaiting_approval")


REASON = "the gateway stopped while this job ran; its budget reservation was charged and nothing was released"


def recover_interrupted_jobs(svc: Services) -> None:
    """After a crash: a job that was running may have produced noisy values, so its reservation is
    committed (spent budget never decreases) and it is marked failed without releasing anything,
    through the gate, so the release log has an entry for every charge (issue #12: crash-interrupted
    jobs used to be charged with no log entry). A job still waiting for approval computed nothing
    and keeps waiting."""
    with svc.store.read() as s:
        rows = s.execute(select(m.Job, m.Principal.name).join(m.Principal, m.Principal.id == m.Job.principal_id)
                         .where(m.Job.status.in_(("reserved", "running")))).all()
        jobs = [(job.id, name, job.kind, json.loads(job.spec_json or "{}"), json.loads(job.plan_json or "{}"),
                 json.loads(job.cost_json or "{}")) for job, name in rows]
    for job_id, principal, kind, spec, plan, cost in jobs:
        svc.gate.refuse(job_id, principal, _outcome(kind, spec, plan, cost), FAILED, REASON, refund=False,
                        charge=True)
        log.warning("job %s interrupted by a restart: charged, logged as failed, not released", job_id)
    log_unlogged_failures(svc)


def _outcome(kind: str, spec: dict[str, Any], plan: dict[str, Any], cost: dict[str, Any]) -> Outcome:
    dataset = (plan.get("plan") or {}).get("dataset") or spec.get("dataset")
    return Outcome(operation=kind, payload={}, datasets=[dataset] if dataset else [], nodes=[],
                   spec_digest=spec.get("digest", ""), cost=cost)


def log_unlogged_failures(svc: Services) -> None:
    """Jobs that failed while the release log could not be written (already charged, see
    ``JobLifecycle.fail_unlogged``) get their log entry now."""
    with svc.store.read() as s:
        rows = s.execute(select(m.Job, m.Principal.name).join(m.Principal, m.Principal.id == m.Job.principal_id)
                         .where(m.Job.status == "failed")).all()
        pending = []
        for job, name in rows:
            error = json.loads(job.error_json or "{}")
            if error.get("unlogged"):
                pending.append((job.id, name, job.kind, json.loads(job.spec_json or "{}"),
                                json.loads(job.plan_json or "{}"), json.loads(job.cost_json or "{}"),
                                str(error.get("detail", "job failed"))))
    for job_id, principal, kind, spec, plan, cost, detail in pending:
        svc.gate.refuse(job_id, principal, _outcome(kind, spec, plan, cost), FAILED,
                        f"{detail} (logged after the failure: the log could not be written then; charged)",
                        refund=False, charge=False)
        log.warning("job %s: its failure is logged now", job_id)
