"""What the release gate and the exchange do inside one database transaction (issue #17).

The release gate meters a job under a subscription in the very transaction that appends its
released entry (``meter_release``, ``metered_entry``), and gives the hold back in a refusal's
(``return_job_hold``); the exchange service (``gateway/exchange.py``) uses the same helpers. A
hidden lookup holds its call before the node is asked and meters it once the node answered
(``meter_call``), or gives it back (``give_back``). These
functions take an open ``Session`` and import nothing of the gateway but its tables, so the gate
can call them without depending on the services.
"""

from __future__ import annotations

import json
import math
import time
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, text, update
from sqlalchemy.orm import Session

from xdp_compute.errors import BadRequest
from xdp_compute.gateway import models as m

MICROS = 1_000_000
PERIOD_LOCK_KEY = (0x58445043, 17)  # "XDPC", 17: billing periods (issue #17)
# A hold that no job carries after this long was left by a gateway that stopped between holding
# and creating the job (``reclaim_ended``); a request takes milliseconds between the two.
ORPHAN_AFTER_SECONDS = 600.0


def period_of(ts: float) -> str:
    """The billing period (UTC month, ``2026-12``) of a Unix time."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m")


def next_period(period: str) -> str:
    y, mo = (int(x) for x in period.split("-"))
    return f"{y + mo // 12:04d}-{mo % 12 + 1:02d}"


def check_period(period: str) -> str:
    """``YYYY-MM`` or BadRequest."""
    try:
        ok = len(period) == 7 and datetime.strptime(period, "%Y-%m").strftime("%Y-%m") == period
    except ValueError:
        ok = False
    if not ok:
        raise BadRequest(f"period must be a month written YYYY-MM (e.g. 2026-12), not {period[:20]!r}")
    return period


def to_micros(units: float, unit_price: float) -> int:
    """The charge of ``units`` at ``unit_price``, in integer micro-units (rounded half up)."""
    return math.floor(units * unit_price * MICROS + 0.5)


def lock_periods(s: Session) -> None:
    """Serialise choosing a usage's billing period with settling one, until the transaction ends.

    SQLite's write transactions are serial already (``BEGIN IMMEDIATE``). On PostgreSQL a use
    metered while its period is being settled could otherwise read "not settled", then commit into
    the period after its statements were computed; a transaction-scoped advisory lock (key space
    of the release log's, object 17) makes the two take turns, on any number of gateway replicas.
    Wherever both are held (a release, a settlement) the release log's lock is taken first, at the
    start of its transaction, so the two cannot deadlock; ``charge_call`` takes this one only.
    """
    if s.get_bind().dialect.name == "postgresql":
        s.execute(text("SELECT pg_advisory_xact_lock(:a, :b)"), {"a": PERIOD_LOCK_KEY[0], "b": PERIOD_LOCK_KEY[1]})


def open_period(s: Session, now: float) -> str:
    """The billing period new usage falls in: this month, or the month after the last period
    already settled (a settled period never changes, so its statements stay equal to its usage)."""
    lock_periods(s)
    current = period_of(now)
    closed = s.scalar(select(m.Statement.period).order_by(m.Statement.period.desc()).limit(1))
    if closed is not None and current <= closed:
        return next_period(closed)
    return current


def give_back(s: Session, usage_id: int) -> None:
    """Return a held usage's units to its subscription (idempotent: only a ``held`` row moves)."""
    row = s.get(m.Usage, usage_id)
    if row is None:
        return
    # A conditional UPDATE, not a read then a write: the release gate may be metering this very
    # hold in another transaction (an analyst who drops its request while its job is released);
    # exactly one of the two moves it out of ``held`` (on PostgreSQL the loser re-checks the row).
    if _move(s, usage_id, "held", "returned"):
        s.execute(update(m.Subscription).where(m.Subscription.id == row.subscription_id)
                  .values(held=m.Subscription.held - row.units))
    s.refresh(row)


def _move(s: Session, usage_id: int, old: str, new: str, **values: Any) -> bool:
    """Move a usage row from state ``old`` to ``new`` if it is still in ``old``; whether it moved."""
    res = s.execute(update(m.Usage).where(m.Usage.id == usage_id, m.Usage.state == old)
                    .values(state=new, **values).execution_options(synchronize_session=False))
    return res.rowcount == 1  # type: ignore[attr-defined,no-any-return]


def reclaim_ended(s: Session, subscription_id: str) -> None:
    """Give back the holds of this subscription's jobs that ended without a release.

    A job's refusal gives its hold back in its own transaction (``return_job_hold``). One path
    does not: a job that fails while the release log cannot be written is marked failed outside
    the log (``JobLifecycle.fail_unlogged``), and its entry and refund wait for the next start
    (``recovery.log_unlogged_failures``). Its hold would block the subscription until then; a
    failed or denied job releases nothing, so the hold goes back now (``give_back`` is idempotent,
    so the later refusal does not give it twice). Orphaned holds go back too (below)."""
    ended = s.scalars(select(m.Usage.id).join(m.Job, m.Job.id == m.Usage.job_id)
                      .where(m.Usage.subscription_id == subscription_id, m.Usage.state == "held",
                             m.Job.status.in_(("failed", "denied")))).all()
    for usage_id in ended:
        give_back(s, usage_id)
    # Orphans: a hold that no job carries, older than any request takes from its hold to its job's
    # row (a gateway that stopped in between). A job carries its hold in its spec from the moment
    # it exists, so only the subscriber's jobs created since the hold need reading.
    cutoff = time.time() - ORPHAN_AFTER_SECONDS
    orphans = s.execute(select(m.Usage.id, m.Usage.created_at)
                        .where(m.Usage.subscription_id == subscription_id, m.Usage.state == "held",
                               m.Usage.job_id.is_(None), m.Usage.created_at < cutoff)).all()
    if orphans:
        sub = s.get(m.Subscription, subscription_id)
        assert sub is not None
        since = min(t for _, t in orphans) - 60.0  # clocks of replicas may differ a little
        carried = set()
        for (spec,) in s.execute(select(m.Job.spec_json).where(m.Job.principal_id == sub.principal_id,
                                                               m.Job.created_at >= since)).all():
            hold = json.loads(spec or "{}").get("subscription")
            if isinstance(hold, dict):
                carried.add(hold.get("usage"))
        for usage_id, _ in orphans:
            if usage_id not in carried:
                give_back(s, usage_id)


def meter_call(s: Session, usage_id: int) -> dict[str, Any] | None:
    """Meter one held call (a hidden lookup the node has answered): held becomes used.

    Priced at the product's unit price, in the open billing period, with the product's owner as
    the party (as ``ExchangeService.charge_call`` meters a call). Returns the subscription, the
    unit price and the calls left; None when the unit is no longer held (given back meanwhile as
    an orphan, ``reclaim_ended``): the caller must then not answer, or the call would go uncounted.
    """
    row = s.get(m.Usage, usage_id)
    if row is None:
        return None
    product = s.get(m.Product, row.product_id)
    assert product is not None
    now = time.time()
    if not _move(s, usage_id, "held", "metered", metered_at=now, amount_micros=to_micros(row.units, product.unit_price),
                 period=open_period(s, now), parties_json=json.dumps([product.owner_id])):
        return None
    s.execute(update(m.Subscription).where(m.Subscription.id == row.subscription_id)
              .values(held=m.Subscription.held - row.units, used=m.Subscription.used + row.units))
    sub = s.get(m.Subscription, row.subscription_id)
    assert sub is not None
    s.refresh(sub)
    return {"subscription": sub.id, "unit_price": product.unit_price,
            "calls_left": max(product.allowance - sub.used - sub.held, 0.0)}


def _job_hold(job: m.Job | None) -> int | None:
    if job is None:
        return None
    sub = json.loads(job.spec_json or "{}").get("subscription")
    return int(sub["usage"]) if isinstance(sub, dict) and isinstance(sub.get("usage"), int) else None


def meter_release(s: Session, job: m.Job, nodes: list[str]) -> dict[str, Any] | None:
    """Inside the release gate's transaction: meter a job that runs under a subscription.

    Its held units become used, priced at the product's unit price, in the open billing period,
    with the holders of the contributing ``nodes`` as the parties that share the income. Returns
    what the released log entry carries (``subscription``), or None for a job under none.
    """
    usage_id = _job_hold(job)
    if usage_id is None:
        return None
    row = s.get(m.Usage, usage_id)
    if row is None or row.state == "metered":
        return None
    product = s.get(m.Product, row.product_id)
    assert product is not None
    holders = sorted(set(s.scalars(select(m.Node.holder_id).where(m.Node.name.in_(nodes))).all())) or [product.owner_id]
    now = time.time()
    values = {"job_id": job.id, "metered_at": now, "amount_micros": to_micros(row.units, product.unit_price),
              "period": open_period(s, now), "parties_json": json.dumps(holders)}
    # Whatever happened to the hold, a released job is metered once. Still held: held becomes used.
    # Already given back (its request's error path ran while this release went on): used only.
    if _move(s, usage_id, "held", "metered", **values):
        s.execute(update(m.Subscription).where(m.Subscription.id == row.subscription_id)
                  .values(held=m.Subscription.held - row.units, used=m.Subscription.used + row.units))
    elif _move(s, usage_id, "returned", "metered", **values):
        s.execute(update(m.Subscription).where(m.Subscription.id == row.subscription_id)
                  .values(used=m.Subscription.used + row.units))
    else:
        return None
    s.refresh(row)
    return {"id": row.subscription_id, "product_id": product.id, "units": row.units, "unit": product.unit,
            "amount_micros": row.amount_micros, "period": row.period, "usage_id": row.id}


def metered_entry(s: Session, metered: dict[str, Any] | None, index: int) -> None:
    """Record the released entry's index on the usage ``meter_release`` metered."""
    if metered is not None:
        row = s.get(m.Usage, metered["usage_id"])
        if row is not None:
            row.log_index = index


def return_job_hold(s: Session, job_id: str | None) -> None:
    """Inside a refusal's transaction: a job that released nothing gives its held units back."""
    if job_id is not None:
        hold = _job_hold(s.get(m.Job, job_id))
        if hold is not None:
            give_back(s, hold)
