"""The data exchange (issue #17): products, subscriptions, metering against them, and settlement.

The release log is the registry: every asset version, product listing, subscription decision
and statement is a log entry, written in the same transaction as the rows that index it. The rows (``models.Product``, ``Subscription``,
``Usage``, ``Statement``, ``AssetVersion``) hold what must not race: a subscription's units used
and held are conditional UPDATEs, like the privacy ledger (``Store.reserve``).

How a unit is counted, by product kind:

| kind    | unit    | counted                                                                    |
|---------|---------|----------------------------------------------------------------------------|
| query   | epsilon | held at submission (refused past the allowance before any budget is held), |
|         |         | metered in the release gate's transaction, given back if nothing released  |
| lookup  | call    | ``charge_call``: one call counted and metered at once, atomically          |
| scoring | row     | listed and subscribed to; no job runs under it yet (refused with a reason) |
| model   | call    | listed and subscribed to; no job runs under it yet (refused with a reason) |

Money is kept in integer micro-units (``amount_micros``) so that statement totals equal the sum
of the metered usage exactly.

Settlement rule (``split_income``): the income of a metered use is divided equally among the
parties (holders) whose nodes took part in it, the remainder micro-units going one each to the
first parties in id order. It is privacy-safe because it is a function of participation only:
which nodes contributed is already in the job's released log entry (``nodes``), the same for
any data; no row count, no per-holder partial, nothing data-derived enters it.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from xdp_compute.errors import BadRequest, Conflict, Forbidden, NotFound, XdpError
from xdp_compute.gateway import models as m
from xdp_compute.gateway.services import Services
from xdp_compute.gateway.store import PrincipalView, new_id

PRODUCT_KINDS = ("query", "scoring", "model", "lookup")
UNIT_OF_KIND = {"query": "epsilon", "scoring": "row", "model": "call", "lookup": "call"}
# Kinds that a job or a call can run under today.
METERED_KINDS = ("query", "lookup")
MICROS = 1_000_000
TOLERANCE = 1e-9
QUERY_AGGREGATES = ("count", "sum", "avg", "variance", "stddev")

# Log entry kinds of the exchange.
PRODUCT_LISTED = "product_listed"
SUBSCRIPTION_DECIDED = "subscription_decided"
ASSET_REGISTERED = "asset_registered"
STATEMENT_ISSUED = "statement_issued"


class AllowanceUsedUp(XdpError):
    """The subscription's allowance cannot cover this use (nothing was held or charged)."""

    status, slug, title = 429, "allowance-used-up", "Subscription allowance used up"


class NotSubscribed(Forbidden):
    """No approved subscription of this principal to this product."""

    slug, title = "not-subscribed", "Not subscribed"


@dataclass(frozen=True)
class Grant:
    """What one counted call under a subscription may do (``charge_call``)."""

    subscription_id: str
    product_id: str
    dataset: str
    columns: tuple[str, ...]
    unit_price: float
    usage_id: int
    calls_left: float


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
    return int(math.floor(units * unit_price * MICROS + 0.5))


def split_income(amount_micros: int, parties: list[str]) -> dict[str, int]:
    """Equal shares per participating party; the remainder one micro-unit each to the first in id
    order (the settlement rule of the module docstring). The shares sum to ``amount_micros``."""
    parties = sorted(set(parties))
    if not parties:
        return {}
    base, rest = divmod(amount_micros, len(parties))
    return {p: base + (1 if i < rest else 0) for i, p in enumerate(parties)}


def _principal(s: Session, ref: str) -> m.Principal:
    """A principal by id or by name (``charge_call`` callers may hold either)."""
    p = s.get(m.Principal, ref)
    if p is None:
        p = s.scalar(select(m.Principal).where(m.Principal.name == ref))
    if p is None:
        raise NotFound(f"no principal {ref!r}")
    return p


def product_dict(p: m.Product, owner: str, subscription: m.Subscription | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": p.id, "dataset": p.dataset_name, "owner": owner, "kind": p.kind, "title": p.title,
        "description": p.description, "unit": p.unit, "unit_price": p.unit_price,
        "allowance_per_subscriber": p.allowance, "terms": json.loads(p.terms_json), "log_index": p.log_index,
        "created_at": p.created_at}
    if subscription is not None:
        out["subscription"] = subscription_dict(subscription, p, None)
    return out


def subscription_dict(sub: m.Subscription, product: m.Product, subscriber: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": sub.id, "product_id": product.id, "product": product.title, "dataset": product.dataset_name,
        "kind": product.kind, "status": sub.status, "unit": product.unit, "allowance": product.allowance,
        "used": round(sub.used, 9), "held": round(sub.held, 9),
        "left": round(max(product.allowance - sub.used - sub.held, 0.0), 9),
        "created_at": sub.created_at, "decided_at": sub.decided_at, "reason": sub.reason}
    if subscriber is not None:
        out["subscriber"] = subscriber
    return out


class ExchangeService:
    """Products, subscriptions, metering and statements over the gateway's store and release log."""

    def __init__(self, svc: Services) -> None:
        self.svc = svc
        self.store = svc.store
        self.log = svc.release_log

    # ------------------------------------------------------------------ calls (hidden lookups)
    def charge_call(self, principal: str, product_id: str, kind: str) -> Grant:
        """Count one call of ``principal`` against its approved subscription to ``product_id``.

        Atomic: the call is counted and metered (a ``Usage`` row, priced at the product's unit
        price, in the current billing period) in one transaction, or nothing happens. Raises
        ``NotFound`` (no such product, or not of ``kind``), ``NotSubscribed`` (403: no
        subscription, or not approved) and ``AllowanceUsedUp`` (429: the calls are used up).
        ``principal`` is the principal's id (``PrincipalView.id``); its name is accepted too.
        """
        now = time.time()
        with self.store.write() as s:
            who = _principal(s, principal)
            product = s.get(m.Product, product_id)
            if product is None or product.kind != kind:
                raise NotFound(f"no {kind} product {product_id!r}")
            sub = s.scalar(select(m.Subscription).where(m.Subscription.product_id == product.id,
                                                        m.Subscription.principal_id == who.id))
            if sub is None or sub.status != "approved":
                state = "no subscription" if sub is None else f"the subscription is {sub.status}"
                raise NotSubscribed(f"{who.name!r} may not call product {product.id!r}: {state} "
                                    f"(xdp products subscribe {product.id}, then the owner approves)")
            res = s.execute(update(m.Subscription)
                            .where(m.Subscription.id == sub.id,
                                   m.Subscription.used + m.Subscription.held + 1 <= product.allowance + TOLERANCE)
                            .values(used=m.Subscription.used + 1))
            if res.rowcount != 1:  # type: ignore[attr-defined]
                raise AllowanceUsedUp(f"subscription {sub.id} has used all {product.allowance:g} calls of "
                                      f"product {product.id!r}", subscription=sub.id)
            usage = m.Usage(subscription_id=sub.id, product_id=product.id, job_id=None, state="metered",
                            units=1.0, amount_micros=to_micros(1.0, product.unit_price),
                            period=self._open_period(s, now), parties_json=json.dumps([product.owner_id]),
                            log_index=None, created_at=now, metered_at=now)
            s.add(usage)
            s.flush()
            s.refresh(sub)
            terms = json.loads(product.terms_json)
            return Grant(subscription_id=sub.id, product_id=product.id, dataset=product.dataset_name,
                         columns=tuple(terms.get("columns") or ()), unit_price=product.unit_price,
                         usage_id=usage.id, calls_left=max(product.allowance - sub.used - sub.held, 0.0))

    def _open_period(self, s: Session, now: float) -> str:
        """The billing period new usage falls in: this month, or the month after the last period
        already settled (a settled period never changes, so its statements stay equal to its usage)."""
        current = period_of(now)
        closed = s.scalar(select(m.Statement.period).order_by(m.Statement.period.desc()).limit(1))
        if closed is not None and current <= closed:
            return next_period(closed)
        return current

    # ------------------------------------------------------------------ products
    def create_product(self, who: PrincipalView, body: dict[str, Any]) -> dict[str, Any]:
        """List a product on one of ``who``'s datasets; a log entry records its terms."""
        kind = body["kind"]
        if kind not in PRODUCT_KINDS:
            raise BadRequest(f"kind must be one of {', '.join(PRODUCT_KINDS)}, not {kind!r}")
        parts = self.store.lookup_parts(body["dataset"])
        name = parts[0]["spec"]["name"] if parts else body["dataset"]
        with self.store.read() as s:
            ds = s.get(m.Dataset, name)
            if ds is None:
                raise NotFound(f"no dataset named {body['dataset']!r}")
            owner_id = ds.owner_id
        if owner_id != who.id:
            raise Forbidden(f"only the owner of dataset {name!r} may list products on it")
        owner_parts = [p for p in parts if p.get("role") != "member"] or parts
        terms = self._terms(kind, body, owner_parts[0]["spec"] if owner_parts else {})
        price, allowance = float(body["unit_price"]), float(body["allowance"])
        if not math.isfinite(price) or price < 0:
            raise BadRequest("unit_price must be a finite number >= 0")
        if not math.isfinite(allowance) or allowance <= 0:
            raise BadRequest("allowance must be a finite number > 0 (units per subscriber)")
        if kind == "lookup" and allowance != int(allowance):
            raise BadRequest("a lookup product's allowance is a whole number of calls")
        pid = new_id()
        now = time.time()
        entry = {"kind": PRODUCT_LISTED, "product_id": pid, "principal": who.name, "datasets": [name],
                 "product_kind": kind, "title": body["title"], "unit": UNIT_OF_KIND[kind], "unit_price": price,
                 "allowance_per_subscriber": allowance, "terms": terms}
        with self.log.transaction() as s:
            stored = self.log.append(s, entry)
            s.add(m.Product(id=pid, dataset_name=name, owner_id=who.id, kind=kind, title=body["title"],
                            description=body.get("description") or "", unit=UNIT_OF_KIND[kind], unit_price=price,
                            allowance=allowance, terms_json=json.dumps(terms), log_index=stored["index"],
                            created_at=now))
        return self.product(pid)

    @staticmethod
    def _terms(kind: str, body: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
        """Kind-specific terms, checked against the owner's declaration of the dataset."""
        from xdp_compute.domain.manifest import DatasetSpec

        declared = [c["name"] for c in spec.get("columns") or []]
        columns = list(body.get("columns") or [])
        unknown = [c for c in columns if c not in declared]
        if unknown:
            raise BadRequest(f"columns not declared in dataset {spec.get('name')!r}: {', '.join(unknown)}")
        if kind == "query":
            shapes = dict(body.get("shapes") or {})
            bad = sorted(set(shapes) - {"aggregates", "group_by", "filters", "columns"})
            if bad:
                raise BadRequest(f"shapes: unknown member {bad[0]!r} (aggregates, group_by, filters, columns)")
            aggs = shapes.get("aggregates")
            if aggs is not None and not set(aggs) <= set(QUERY_AGGREGATES):
                raise BadRequest(f"shapes.aggregates: each one of {', '.join(QUERY_AGGREGATES)}")
            for key in ("group_by", "filters", "columns"):
                extra = [c for c in shapes.get(key) or [] if c not in declared]
                if extra:
                    raise BadRequest(f"shapes.{key}: not declared in dataset {spec.get('name')!r}: "
                                     f"{', '.join(extra)}")
            return {"shapes": {k: sorted(set(v)) for k, v in shapes.items() if v is not None}}
        if kind == "lookup":
            ds = DatasetSpec.from_dict(spec) if spec else None
            opted = getattr(ds, "lookup", None)
            if opted is None:
                raise BadRequest(f"dataset {spec.get('name')!r} is not open to hidden lookups: its owner's manifest "
                                 "has no [datasets.lookup] table (a lookup releases single records, not DP)")
            allowed = list(getattr(opted, "columns", ()) or ())
            columns = columns or allowed
            outside = [c for c in columns if c not in allowed]
            if outside:
                raise BadRequest(f"columns not opened to lookups in dataset {spec.get('name')!r}: "
                                 f"{', '.join(outside)} (the manifest's [datasets.lookup] columns: "
                                 f"{', '.join(allowed)})")
            return {"columns": columns}
        return {"columns": columns} if columns else {}

    def product(self, product_id: str, who: PrincipalView | None = None) -> dict[str, Any]:
        with self.store.read() as s:
            p = s.get(m.Product, product_id)
            if p is None:
                raise NotFound(f"no product {product_id!r}")
            owner = s.get(m.Principal, p.owner_id)
            sub = None
            if who is not None:
                sub = s.scalar(select(m.Subscription).where(m.Subscription.product_id == p.id,
                                                            m.Subscription.principal_id == who.id))
            return product_dict(p, owner.name if owner else "?", sub)

    def products(self, who: PrincipalView, dataset: str | None = None, kind: str | None = None
                 ) -> list[dict[str, Any]]:
        """The catalog of products, newest first, each with the caller's own subscription if any."""
        with self.store.read() as s:
            q = select(m.Product, m.Principal.name).join(m.Principal, m.Principal.id == m.Product.owner_id)
            if dataset is not None:
                q = q.where(m.Product.dataset_name == dataset)
            if kind is not None:
                q = q.where(m.Product.kind == kind)
            rows = s.execute(q.order_by(m.Product.created_at.desc(), m.Product.id)).all()
            subs = {x.product_id: x for x in s.scalars(select(m.Subscription)
                                                         .where(m.Subscription.principal_id == who.id)).all()}
            return [product_dict(p, owner, subs.get(p.id)) for p, owner in rows]

    # ------------------------------------------------------------------ subscriptions
    def subscribe(self, who: PrincipalView, product_id: str) -> dict[str, Any]:
        """Ask for a subscription (pending until the owner decides). Asking again returns it."""
        now = time.time()
        try:
            with self.store.write() as s:
                product = s.get(m.Product, product_id)
                if product is None:
                    raise NotFound(f"no product {product_id!r}")
                if product.owner_id == who.id:
                    raise Conflict("an owner does not subscribe to its own product")
                sub = s.scalar(select(m.Subscription).where(m.Subscription.product_id == product.id,
                                                            m.Subscription.principal_id == who.id))
                if sub is None:
                    sub = m.Subscription(id=new_id(), product_id=product.id, principal_id=who.id, status="pending",
                                         used=0.0, held=0.0, created_at=now)
                    s.add(sub)
                    s.flush()
                return subscription_dict(sub, product, who.name)
        except IntegrityError:
            return self.subscription_of(who, product_id)

    def subscription_of(self, who: PrincipalView, product_id: str) -> dict[str, Any]:
        with self.store.read() as s:
            row = s.execute(select(m.Subscription, m.Product).join(m.Product, m.Product.id == m.Subscription.product_id)
                            .where(m.Subscription.product_id == product_id,
                                   m.Subscription.principal_id == who.id)).first()
            if row is None:
                raise NotFound(f"no subscription of yours to product {product_id!r}")
            return subscription_dict(row[0], row[1], who.name)

    def subscriptions(self, who: PrincipalView) -> list[dict[str, Any]]:
        """An analyst's own subscriptions; a holder's: the subscriptions to its products; auditors: all."""
        with self.store.read() as s:
            q = (select(m.Subscription, m.Product, m.Principal.name)
                 .join(m.Product, m.Product.id == m.Subscription.product_id)
                 .join(m.Principal, m.Principal.id == m.Subscription.principal_id))
            if who.role == "holder":
                q = q.where(m.Product.owner_id == who.id)
            elif who.role not in ("auditor", "admin"):
                q = q.where(m.Subscription.principal_id == who.id)
            rows = s.execute(q.order_by(m.Subscription.created_at, m.Subscription.id)).all()
            return [subscription_dict(sub, p, name) for sub, p, name in rows]

    def decide(self, who: PrincipalView, subscription_id: str, approve: bool, reason: str | None) -> dict[str, Any]:
        """The product's owner approves or rejects a pending subscription; a log entry records it."""
        with self.store.read() as s:  # refusals are checked before the log's lock is taken
            sub = s.get(m.Subscription, subscription_id)
            product = s.get(m.Product, sub.product_id) if sub is not None else None
            if sub is None or product is None or product.owner_id != who.id:
                raise NotFound(f"no subscription {subscription_id!r} to a product of yours")
            if sub.status != "pending":
                raise Conflict(f"subscription {sub.id} is already {sub.status}")
        with self.log.transaction() as s:
            sub = s.get(m.Subscription, subscription_id)
            product = s.get(m.Product, sub.product_id) if sub is not None else None
            if sub is None or product is None or product.owner_id != who.id:
                raise NotFound(f"no subscription {subscription_id!r} to a product of yours")
            if sub.status != "pending":
                raise Conflict(f"subscription {sub.id} is already {sub.status}")
            subscriber = s.get(m.Principal, sub.principal_id)
            sub.status = "approved" if approve else "rejected"
            sub.decided_at, sub.reason = time.time(), reason
            self.log.append(s, {"kind": SUBSCRIPTION_DECIDED, "subscription_id": sub.id, "product_id": product.id,
                                "principal": who.name, "subscriber": subscriber.name if subscriber else "?",
                                "datasets": [product.dataset_name], "decision": sub.status, "reason": reason})
            return subscription_dict(sub, product, subscriber.name if subscriber else "?")
