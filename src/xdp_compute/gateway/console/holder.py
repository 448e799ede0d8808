"""Holder pages: approvals (approve / deny with a reason), nodes, budgets per analyst, and the jobs
that ran on the holder's data linked to their release-log entries.

Each page calls the function its REST route calls, as the signed-in holder.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from xdp_compute.errors import BadRequest, NotFound, XdpError
from xdp_compute.gateway import approvals
from xdp_compute.gateway.console.render import pages
from xdp_compute.gateway.console.session import ConsoleSvc, Form, HolderUser
from xdp_compute.gateway.routers.catalog import dataset_spend
from xdp_compute.gateway.routers.nodes import holder_log_entries

router = APIRouter(prefix="/holder")

MAX_REASON = 2000
# Log kinds that end a job (the rest — approvals given, node events — are shown on the entry page).
OUTCOMES = ("released", "denied", "budget_exhausted", "failed", "approval_refused")


@router.get("/approvals")
async def approvals_page(request: Request, user: HolderUser, svc: ConsoleSvc) -> Response:
    rows = await asyncio.to_thread(approvals.pending_for, svc, user.principal)
    pending = [r for r in rows if r["your_decision"] == "pending" and r["status"] == "awaiting_approval"]
    decided = [r for r in rows if r not in pending]
    decided.sort(key=lambda r: r["created_at"], reverse=True)
    return pages(request).render(request, "holder_approvals.html", user, title="Approvals",
                                 pending=pending, decided=decided[:50])


def _back(request: Request, where: str) -> RedirectResponse:
    return RedirectResponse(request.scope.get("root_path", "").rstrip("/") + where, status_code=303)


@router.post("/approvals/{job_id}/approve")
async def approve(job_id: str, request: Request, user: HolderUser, svc: ConsoleSvc, form: Form) -> Response:
    reason = form.get("reason", "").strip()
    if len(reason) > MAX_REASON:
        raise BadRequest(f"reason: at most {MAX_REASON} characters")
    try:
        out = await approvals.approve(svc, user.principal, job_id, reason or None)
    except XdpError as e:
        user.say(f"Job {job_id} was not approved: {e.detail}", "error")
    else:
        runs = "it runs now" if out.get("job_runs") else "it waits for the other holders"
        user.say(f"Approved job {job_id}; {runs}.")
    return _back(request, "/holder/approvals")


@router.post("/approvals/{job_id}/deny")
async def deny(job_id: str, request: Request, user: HolderUser, svc: ConsoleSvc, form: Form) -> Response:
    reason = form.get("reason", "").strip()
    if not reason:
        user.say(f"Job {job_id} was not denied: a denial needs a reason (the analyst and the log see it).", "error")
        return _back(request, "/holder/approvals")
    if len(reason) > MAX_REASON:
        raise BadRequest(f"reason: at most {MAX_REASON} characters")
    try:
        await approvals.deny(svc, user.principal, job_id, reason)
    except XdpError as e:
        user.say(f"Job {job_id} was not denied: {e.detail}", "error")
    else:
        user.say(f"Denied job {job_id}: nothing was computed and its budget was refunded.")
    return _back(request, "/holder/approvals")


@router.get("/nodes")
async def nodes_page(request: Request, user: HolderUser, svc: ConsoleSvc) -> Response:
    nodes = await asyncio.to_thread(svc.store.list_nodes, user.principal.id)
    return pages(request).render(request, "holder_nodes.html", user, title="Nodes", nodes=nodes)


@router.get("/budgets")
async def budgets_page(request: Request, user: HolderUser, svc: ConsoleSvc) -> Response:
    def load() -> list[dict[str, Any]]:
        out = []
        for name in svc.store.dataset_names(user.principal.id):
            with contextlib.suppress(NotFound):  # e.g. a former member's node still declaring it
                out.append(dataset_spend(name, svc, user.principal))
        return out

    datasets = await asyncio.to_thread(load)
    return pages(request).render(request, "holder_budgets.html", user, title="Budgets", datasets=datasets)


def _entries(svc: Any, user: Any) -> list[dict[str, Any]]:
    return holder_log_entries(svc, user.principal, start=0, limit=100_000)


@router.get("/jobs")
async def jobs_page(request: Request, user: HolderUser, svc: ConsoleSvc) -> Response:
    entries = await asyncio.to_thread(_entries, svc, user)
    jobs: dict[str, dict[str, Any]] = {}
    events: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for e in entries:
        jid = e.get("job_id")
        if not jid:
            continue
        events[jid].append(e)
        if e.get("kind") in OUTCOMES or jid not in jobs:
            jobs[jid] = e
    rows = sorted(({"entry": e, "events": events[j]} for j, e in jobs.items()),
                  key=lambda r: r["entry"]["index"], reverse=True)
    return pages(request).render(request, "holder_jobs.html", user, title="Jobs on my data", jobs=rows)


@router.get("/log/{index}")
async def entry_page(index: int, request: Request, user: HolderUser, svc: ConsoleSvc) -> Response:
    if not 0 <= index < 2**62:
        raise NotFound(f"no log entry {index} about your datasets")
    entries = await asyncio.to_thread(holder_log_entries, svc, user.principal, index, 100_000)
    entry = next((e for e in entries if e.get("index") == index), None)
    if entry is None:
        raise NotFound(f"no log entry {index} about your datasets")
    return pages(request).render(request, "holder_entry.html", user, title=f"Log entry {index}", entry=entry)
