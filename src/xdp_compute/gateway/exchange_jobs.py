"""Scores and trainings under a subscription (issue #17): the ``scoring`` and ``model`` products.

A job under a subscription takes the query path's steps (``ExchangeService.submit_query``):
checked before anything is reserved (``check_job``), its units held on the subscription by a
conditional UPDATE (``ExchangeService.hold_units``), carried in the job's spec as
``{"subscription": {"id", "usage"}}``, metered by the release gate in the released entry's
transaction (``metered.meter_release``, once) or given back by a refusal
(``metered.return_job_hold``). What a unit is:

* ``model``: one training job is one unit (per call), whatever its rounds or rows.
* ``scoring``: per row scored, where the rows are the plan's *declared* size
  (``score_service.score_rows``: the ``max_rows`` each participating node declares), never the
  true or matching row count -- the amount must not depend on the data (DESIGN.md, the
  observable rule), and it is known before the job runs, so it is held exactly.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

from xdp_compute.errors import BadRequest
from xdp_compute.gateway import models as m
from xdp_compute.gateway.exchange import TOLERANCE, AllowanceUsedUp, ExchangeService
from xdp_compute.gateway.store import PrincipalView

__all__ = ["JOB_OF_KIND", "check_job", "submit_job"]

JOB_OF_KIND = {"scoring": "a score", "model": "a training"}


def check_job(ex: ExchangeService, who: PrincipalView, subscription_id: str, kind: str, dataset: str,
              columns: list[str], units: float) -> tuple[m.Subscription, m.Product]:
    """Refuse a score (``kind`` scoring) or a training (``kind`` model) its subscription does not
    cover, with the statuses of ``check_query``: 404 not the caller's, 403 not approved, 400
    another kind or dataset or a column outside the product's ``columns``, 409 past the
    allowance. Holds nothing; ``columns`` are every column the job reads (features, label,
    WHERE, GROUP BY), public in its request."""
    sub, product = ex.own_approved(who, subscription_id)
    job = JOB_OF_KIND[kind]
    if product.kind != kind:
        raise BadRequest(f"subscription {sub.id} is to a {product.kind} product; {job} runs under a {kind} product")
    if product.dataset_name.lower() != dataset.lower():
        raise BadRequest(f"subscription {sub.id} covers dataset {product.dataset_name!r}, not {dataset!r}")
    allowed = json.loads(product.terms_json).get("columns")
    if allowed:
        lowered = {c.lower() for c in allowed}
        outside = sorted({c for c in columns if c.lower() not in lowered})
        if outside:
            raise BadRequest(f"product {product.id!r} does not allow {job} on column(s) {', '.join(outside)} "
                             f"(its columns: {', '.join(allowed)})")
    if sub.used + sub.held + units > product.allowance + TOLERANCE:
        left = max(product.allowance - sub.used - sub.held, 0)
        raise AllowanceUsedUp(f"subscription {sub.id} has {left:.12g} {product.unit}(s) left of "
                              f"{product.allowance:.12g}; {job} needs {units:.12g}", subscription=sub.id)
    return sub, product


async def submit_job(ex: ExchangeService, who: PrincipalView, kind: str, sub_id: str, dataset: str,
                     columns: list[str], units: float,
                     submit: Callable[[dict[str, Any]], Awaitable[tuple[int, dict[str, Any]]]]
                     ) -> tuple[int, dict[str, Any]]:
    """Run a score or a training under subscription ``sub_id``: checked (``check_job``) before
    anything is reserved, ``units`` held, then ``submit(hold)`` creates the job, whose spec carries
    ``hold`` (``{"id", "usage"}``) as its ``subscription``. A request that fails before its job
    exists gives the hold back; a job that exists keeps it (``return_hold_unless_used``)."""
    await asyncio.to_thread(check_job, ex, who, sub_id, kind, dataset, columns, units)
    hold = await asyncio.to_thread(ex.hold_units, sub_id, units)
    try:
        status, out = await submit({"id": sub_id, "usage": hold})
    except BaseException:
        await asyncio.to_thread(ex.return_hold_unless_used, hold)
        raise
    await asyncio.to_thread(ex.return_hold_unless_used, hold, out.get("job_id"))
    out["subscription"] = {"id": sub_id, "units": units}
    return status, out
