"""The one job lifecycle every job kind goes through (DESIGN "Flow of one job").

    plan -> policy -> reserve -> approval -> run -> gate -> settle

Each kind plans on its own (``query_service``, ``score_service``, ``training_service``) and hands
a ``JobDraft`` here; from then on the steps are the same for all: an idempotent retry finds the
job it already made; a policy denial is logged and nothing is held; the job row, its budget
holds and its approval requests are written in one transaction; a job needing approval waits
*before anything is computed*; an approved job is started through the runner table
(``runners.py``); results leave only through the ReleaseGate, which settles the budget.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from xdp_compute.domain.policy import Decision, enforce
from xdp_compute.errors import BudgetExhausted, Conflict, PolicyDenied, ProtocolAborted, XdpError
from xdp_compute.gateway import models as m
from xdp_compute.gateway.release import BUDGET_EXHAUSTED, DENIED, FAILED, Outcome
from xdp_compute.gateway.services import Services
from xdp_compute.gateway.store import PrincipalView, ReservationRequest, new_id

log = logging.getLogger("xdp.gateway.lifecycle")

# What a job waiting for approval or running may be; anything else has ended.
ACTIVE_STATUSES = ("reserved", "running", "awaiting_approval")


@dataclass
class JobDraft:
    """A planned job before anything is held: what the lifecycle needs of every kind."""

    kind: str                                   # query | he_query | training
    principal: PrincipalView
    parts: list[dict[str, Any]]                 # the participating nodes' parts of the dataset
    decisions: list[Decision]
    spec_digest: str
    spec: dict[str, Any]                        # the request as stored (its digest is added)
    plan: dict[str, Any]                        # what the runner needs, as stored
    cost: dict[str, Any]
    refusal: Outcome                            # what a refusal logs
    # Budget held at submission (training holds nothing here: it reserves each round's exact cost).
    holds: list[ReservationRequest] = field(default_factory=list)
    analyst_hold: tuple[float, float] = (0.0, 0.0)


class JobLifecycle:
    """Submission, approval wait, start, release hand-over and failure handling — written once."""

    def __init__(self, svc: Services) -> None:
        self.svc, self.store, self.gate = svc, svc.store, svc.gate

    # ------------------------------------------------------------------ plan -> policy -> reserve
    async def submit(self, draft: JobDraft, key: str | None,
                     start: Callable[[str], Awaitable[tuple[int, dict[str, Any]]]],
                     on_existing: Callable[[str], Awaitable[tuple[int, dict[str, Any]]]]
                     ) -> tuple[int, dict[str, Any]]:
        """Take a planned job through policy and reservation; then wait for approval or ``start`` it."""
        job = await asyncio.to_thread(self.existing, draft.principal, key, draft.spec_digest)
        if job is not None:
            return await on_existing(job.id)
        await self._enforce(draft)
        approvals = approval_holders(draft.parts)
        try:
            job_id, created = await asyncio.to_thread(self._create, draft, key, approvals)
        except BudgetExhausted as e:
            await asyncio.to_thread(self.gate.refuse, None, draft.principal.name, draft.refusal, BUDGET_EXHAUSTED,
                                    e.detail, refund=False)
            raise
        if not created:
            return await on_existing(job_id)
        if approvals:
            # Nothing runs until approved; whichever replica starts it then takes the lease.
            await asyncio.to_thread(self.svc.leases.give_back, job_id)
            return 202, {"job_id": job_id, "status": "awaiting_approval",
                         "detail": "the dataset's holders must approve this job before anything is computed"}
        return await start(job_id)

    async def _enforce(self, draft: JobDraft) -> None:
        try:
            enforce(draft.decisions)
        except (PolicyDenied, BudgetExhausted) as e:
            kind = BUDGET_EXHAUSTED if isinstance(e, BudgetExhausted) else DENIED
            await asyncio.to_thread(self.gate.refuse, None, draft.principal.name, draft.refusal, kind, e.detail,
                                    refund=False)
            raise

    def existing(self, who: PrincipalView, key: str | None, spec_digest: str) -> m.Job | None:
        """The job an idempotency key already made (Conflict if it was made for another request)."""
        if not key:
            return None
        with self.store.read() as s:
            job = s.scalar(select(m.Job).where(m.Job.principal_id == who.id, m.Job.idempotency_key == key))
        if job is not None and json.loads(job.spec_json).get("digest") != spec_digest:
            raise Conflict("this idempotency key was used for a different request")
        return job

    def _create(self, d: JobDraft, key: str | None, approvals: list[str]) -> tuple[str, bool]:
        """The job row, its budget holds and its approval requests, atomically; (job id, created).

        The job's lease (``gateway/leases.py``) is taken before the row is committed: no other
        replica can ever see this job active without a live owner."""
        job_id = new_id()
        now = time.time()
        if not self.svc.leases.take(job_id):
            raise Conflict("could not take the lease of a new job; try again")
        try:
            with self.store.write() as s:
                # A job with nobody to approve it starts at once: it is written running (recovery
                # treats reserved and running alike: failed and charged) and ``start`` writes nothing.
                s.add(m.Job(id=job_id, principal_id=d.principal.id, kind=d.kind,
                            status="awaiting_approval" if approvals else "running",
                            spec_json=json.dumps({**d.spec, "digest": d.spec_digest}),
                            plan_json=json.dumps({**d.plan, "decisions": [x.to_dict() for x in d.decisions]}),
                            cost_json=json.dumps(d.cost), idempotency_key=key, created_at=now, updated_at=now,
                            compute_seconds=0.0))
                s.flush()
                settings = self.svc.settings
                self.store.ensure_analyst_budget(s, d.principal.id, settings.analyst_epsilon_budget,
                                                 settings.analyst_delta_budget)
                if d.holds:
                    self.store.reserve(s, job_id, d.principal.id, d.holds, *d.analyst_hold)
                for holder_id in approvals:
                    s.add(m.Approval(job_id=job_id, holder_id=holder_id, decision="pending"))
        except IntegrityError:
            self.svc.leases.give_back(job_id)
            job = self.existing(d.principal, key, d.spec_digest)
            if job is None:
                raise
            return job.id, False
        except BaseException:
            self.svc.leases.give_back(job_id)
            raise
        if not approvals:
            self.svc.born_running.add(job_id)
        return job_id, True

    # ------------------------------------------------------------------ approval -> run
    def start(self, job_id: str) -> None:
        """reserved -> running, and only that: a denied or finished job never starts. This replica
        holds the job's lease from here until ``guarded`` ends (another replica may be recovering
        it: then it does not start). A job this process created running already holds both."""
        if job_id in self.svc.born_running:
            self.svc.born_running.discard(job_id)
            return
        if not self.svc.leases.take(job_id):
            raise Conflict(f"job {job_id} is held by another gateway replica; it cannot start here")
        try:
            with self.store.write() as s:
                job = s.scalar(select(m.Job).where(m.Job.id == job_id).with_for_update())
                if job is None or job.status != "reserved":
                    raise Conflict(f"job {job_id} is {job.status if job else 'unknown'}; it cannot start")
                job.status, job.updated_at = "running", time.time()
        except BaseException:
            self.svc.leases.give_back(job_id)
            raise

    async def guarded(self, job_id: str, principal: str, refusal: Outcome,
                      work: Coroutine[Any, Any, dict[str, Any]]) -> dict[str, Any]:
        """Run ``work`` (compute through release). A protocol abort before any value exists is
        refunded by its runner; any other failure before release is charged (a noisy value may
        exist) and logged. The job's lease is given back once it has ended, either way."""
        try:
            return await self._guarded(job_id, principal, refusal, work)
        finally:
            await asyncio.to_thread(self.svc.leases.give_back, job_id)

    async def _guarded(self, job_id: str, principal: str, refusal: Outcome,
                       work: Coroutine[Any, Any, dict[str, Any]]) -> dict[str, Any]:
        try:
            return await work
        except ProtocolAborted:
            raise  # the runner refunded and logged it
        except BaseException as e:
            job = await asyncio.to_thread(self._load, job_id)
            if job is not None and job.status == "running":
                detail = e.detail if isinstance(e, XdpError) else type(e).__name__
                try:
                    await asyncio.to_thread(self.gate.refuse, job_id, principal, refusal, FAILED,
                                            f"job failed: {detail}", refund=False, charge=True)
                except Exception:
                    # The log itself failed (a release append, then this refusal): never leave the
                    # job running with budget held. Charge it and mark it failed outside the log;
                    # the next start logs it (recovery.log_unlogged_failures).
                    log.exception("job %s failed and its failure could not be logged; charged, logged later", job_id)
                    await asyncio.to_thread(self.fail_unlogged, job_id, f"job failed: {detail}")
            raise

    def fail_unlogged(self, job_id: str, detail: str) -> None:
        """Charge a running job's reservation and mark it failed, when the release log cannot be
        written; ``unlogged`` tells recovery to write its entry once the log works again."""
        with self.store.write() as s:
            job = s.scalar(select(m.Job).where(m.Job.id == job_id).with_for_update())
            if job is None or job.status != "running":
                return
            self.store.settle(s, job_id, commit=True)
            job.status, job.updated_at = "failed", time.time()
            job.error_json = json.dumps({"detail": detail, "unlogged": True})

    # ------------------------------------------------------------------ gate -> settle
    async def release(self, job_id: str, principal: str, outcome: Outcome, started: float) -> dict[str, Any]:
        """Pass the outcome through the one ReleaseGate, which records the compute time and the
        job's approvers in its own transaction (issue #13: two round trips to the store less)."""
        seconds = time.time() - started
        self.svc.metrics.observe_phase(outcome.operation, "rounds", seconds)
        with self.svc.metrics.phase(outcome.operation, "release"):
            return await asyncio.to_thread(self.gate.release, job_id, principal, outcome, None, seconds)

    def hand_over(self, job_id: str, delivery: dict[str, Any], background: bool) -> dict[str, Any]:
        """An encrypted answer that nobody is waiting for is held in memory until fetched once."""
        if background:
            self.svc.undelivered[job_id] = delivery
        return delivery

    async def await_existing(self, job_id: str, timeout: float = 600) -> tuple[int, dict[str, Any]]:
        """An idempotent retry: return the job's one answer (waiting for it if still running)."""
        deadline = time.time() + timeout
        while True:
            job = await asyncio.to_thread(self._load, job_id)
            assert job is not None
            if job.status == "released" and job.result_json:
                delivery = self.svc.undelivered.pop(job_id, None) or json.loads(job.result_json)
                delivery["receipt"] = self.gate.log.receipt(delivery["log_index"])
                return 200, delivery
            if job.status in ("denied", "failed"):
                err = json.loads(job.error_json or "{}")
                raise Conflict(f"job {job_id} ended {job.status}: {err.get('detail', '')}", job_id=job_id)
            if job.status == "awaiting_approval" or time.time() > deadline:
                return 202, {"job_id": job_id, "status": job.status}
            await asyncio.sleep(0.1)

    async def status_of(self, job_id: str) -> tuple[int, dict[str, Any]]:
        """An idempotent retry of a background job: its id and status."""
        job = await asyncio.to_thread(self._load, job_id)
        assert job is not None
        return 202, {"job_id": job.id, "status": job.status}

    def _load(self, job_id: str) -> m.Job | None:
        with self.store.read() as s:
            return s.get(m.Job, job_id)


def approval_holders(parts: list[dict[str, Any]]) -> list[str]:
    """Holders who must approve before anything is computed: ``require_approval``, or core data.

    Approvals are the dataset owner's (issue #12): a member's part carries the owner's policy,
    and its approval, like its view of the request, is the owner's.
    """
    return sorted({x.get("owner_id", x["holder_id"]) for x in parts if x["spec"].get("require_approval")
                   or x["spec"].get("classification") == "core"})
