"""Recovery after a restart: jobs a crash interrupted are charged and failed, never released."""

from __future__ import annotations

import json
import logging
import time

from sqlalchemy import select

from xdp_compute.gateway import models as m
from xdp_compute.gateway.services import Services

log = logging.getLogger("xdp.gateway.recovery")

ACTIVE = ("reserved", "running", "awaiting_approval")


def recover_interrupted_jobs(svc: Services) -> None:
    """After a crash: a job that was running may have produced noisy values, so its reservation is
    committed (spent budget never decreases) and it is marked failed without releasing anything.
    A job still waiting for approval computed nothing and keeps waiting."""
    with svc.store.write() as s:
        jobs = s.scalars(select(m.Job).where(m.Job.status.in_(("reserved", "running")))).all()
        for job in jobs:
            svc.store.settle(s, job.id, commit=True)
            job.status = "failed"
            job.error_json = json.dumps({"detail": "the gateway stopped while this job ran; its budget "
                                                   "reservation was charged and nothing was released"})
            job.updated_at = time.time()
            log.warning("job %s interrupted by a restart: charged, not released", job.id)
