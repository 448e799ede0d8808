"""The job kinds' runners: what runs an approved (or directly started) job to its release.

One explicit table — a new job kind adds a line here; nothing registers itself by being imported.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from xdp_compute.gateway import models as m
from xdp_compute.gateway.join import run_approved_join
from xdp_compute.gateway.query_service import QueryService, prepared_from_job
from xdp_compute.gateway.services import Services
from xdp_compute.gateway.training_service import run_training

Runner = Callable[[Services, str], Awaitable[Any]]


async def run_approved_query(svc: Services, job_id: str) -> dict[str, Any]:
    """An approved SQL job (plain or encrypted delivery; scores are SQL jobs too): rebuild what was
    planned at submission, then run it."""
    qs = QueryService(svc)
    with svc.store.read() as s:
        job = s.get(m.Job, job_id)
    assert job is not None
    p = await asyncio.to_thread(prepared_from_job, qs, job)
    return await qs.run(job_id, p, background=True)


RUNNERS: dict[str, Runner] = {
    "query": run_approved_query,
    "he_query": run_approved_query,
    "training": run_training,
    "join_aggregate": run_approved_join,  # private joins (issue #16)
}


def runner_for(kind: str) -> Runner:
    """The runner of a job kind (KeyError names an unknown kind)."""
    return RUNNERS[kind]
