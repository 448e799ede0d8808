"""Recovery after a restart, or after another replica died: jobs a crash interrupted are charged
and failed, never released.

One gateway (SQLite): at start, every job still reserved or running was interrupted. Replicas
over PostgreSQL (issue #18): a job is interrupted only when no live replica holds its lease
(``gateway/leases.py``); each replica looks for such orphans at start and then every
``XDP_ORPHAN_CHECK_SECONDS``, and the first to take an orphan's lease fails and logs it.
"""

from __future__ import annotations

import json
import logging
import time
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
    and keeps waiting. With replicas, only jobs no live replica holds (``recover_orphaned_jobs``)."""
    if svc.leases.enabled:
        recover_orphaned_jobs(svc, grace=ORPHAN_GRACE_SECONDS)
        log_unlogged_failures(svc)
        return
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


# A job that became reserved this recently is left alone: an approved job is set reserved by the
# approving replica a moment before that replica's runner takes its lease (``JobLifecycle.start``).
# Running jobs need no grace: their lease is taken before they start.
ORPHAN_GRACE_SECONDS = 10.0


def recover_orphaned_jobs(svc: Services, grace: float = ORPHAN_GRACE_SECONDS) -> list[str]:
    """Fail and log (charged, as after a restart) every reserved or running job whose lease no live
    replica holds; returns their ids. Safe to run on every replica at once: each orphan is taken
    by one replica's lease, and its status is read again under that lease."""
    if not svc.leases.enabled:
        return []
    cutoff = time.time() - grace
    with svc.store.read() as s:
        # A running job's lease was taken before it started (``JobLifecycle.start``): no grace.
        candidates = list(s.scalars(select(m.Job.id).where(
            (m.Job.status == "running") | ((m.Job.status == "reserved") & (m.Job.updated_at < cutoff)))).all())
    done = []
    for job_id in candidates:
        if not svc.leases.try_orphan(job_id):
            continue  # a live replica runs it (or another is recovering it now)
        try:
            with svc.store.read() as s:
                row = s.execute(select(m.Job, m.Principal.name)
                                .join(m.Principal, m.Principal.id == m.Job.principal_id)
                                .where(m.Job.id == job_id)).first()
                # Read again under the lease: its owner commits the job's end before letting go.
                if row is None or row[0].status not in ("reserved", "running"):
                    continue
                job, principal = row
                args = (job.kind, json.loads(job.spec_json or "{}"), json.loads(job.plan_json or "{}"),
                        json.loads(job.cost_json or "{}"))
            svc.gate.refuse(job_id, principal, _outcome(*args), FAILED, ORPHAN_REASON, refund=False, charge=True)
            log.warning("job %s lost its gateway replica: charged, logged as failed, not released", job_id)
            done.append(job_id)
        finally:
            svc.leases.give_back(job_id)
    return done


ORPHAN_REASON = ("the gateway replica running this job stopped; its budget reservation was charged and "
                 "nothing was released")


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
