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
| lookup  | call    | held before the node evaluates (``hold_units``), metered on its answer     |
|         |         | (``metered.meter_call``), given back if the node fails to evaluate         |
| scoring | row     | held at submission: the plan's public size (``score_rows``), metered at    |
|         |         | release like a query, given back if nothing released                      |
| model   | call    | one training job is one unit: held at submission, metered at release      |

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
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from xdp_compute.errors import BadRequest, Conflict, Forbidden, NotFound
from xdp_compute.gateway import models as m
from xdp_compute.gateway.metered import (
    MICROS,
    check_period,
    give_back,
    lock_periods,
    next_period,
    open_period,
    period_of,
    reclaim_ended,
    to_micros,
)
from xdp_compute.gateway.services import Services
from xdp_compute.gateway.store import PrincipalView, new_id

__all__ = ["AllowanceUsedUp", "ExchangeService", "Grant", "NotSubscribed", "check_period", "next_period",
           "period_of", "split_income", "to_micros"]

PRODUCT_KINDS = ("query", "scoring", "model", "lookup")
UNIT_OF_KIND = {"query": "epsilon", "scoring": "row", "model": "call", "lookup": "call"}
# Kinds that a job or a call can run under today.
METERED_KINDS = ("query", "scoring", "model", "lookup")
# The product kinds that put a dataset's jobs of each operation under a subscription
# (``require_subscription``): a score is a DP query of feature sums, so a dataset whose scores are
# sold cannot be queried for the same sums unmetered; a training needs a subscription wherever any
# job product is sold on the dataset. Lookups are a separate opt-in (``gateway/lookup.py``).
GUARDING_KINDS = {"query": ("query", "scoring"), "scoring": ("query", "scoring", "model"),
                  "model": ("query", "scoring", "model")}
TOLERANCE = 1e-9
QUERY_AGGREGATES = ("count", "sum", "avg", "variance", "stddev")
# The most one subscription can cost (unit_price x allowance), in currency units: 1e15 micro-units,
# so 9,000 subscriptions fit a statement's 64-bit total.
MAX_SUBSCRIPTION_AMOUNT = 1e9

# Log entry kinds of the exchange.
PRODUCT_LISTED = "product_listed"
SUBSCRIPTION_DECIDED = "subscription_decided"
ASSET_REGISTERED = "asset_registered"
STATEMENT_ISSUED = "statement_issued"


class AllowanceUsedUp(Conflict):
    """The subscription's allowance cannot cover this use (nothing was held or charged): 409."""

    slug, title = "allowance-used-up", "Subscription allowance used up"


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
        subscription, or not approved) and ``AllowanceUsedUp`` (409: the calls are used up).
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
            reclaim_ended(s, sub.id)
            res = s.execute(update(m.Subscription)
                            .where(m.Subscription.id == sub.id,
                                   m.Subscription.used + m.Subscription.held + 1 <= product.allowance + TOLERANCE)
                            .values(used=m.Subscription.used + 1))
            if res.rowcount != 1:  # type: ignore[attr-defined]
                raise AllowanceUsedUp(f"subscription {sub.id} has used all {product.allowance:g} calls of "
                                      f"product {product.id!r}", subscription=sub.id)
            usage = m.Usage(subscription_id=sub.id, product_id=product.id, job_id=None, state="metered",
                            units=1.0, amount_micros=to_micros(1.0, product.unit_price),
                            period=open_period(s, now), parties_json=json.dumps([product.owner_id]),
                            log_index=None, created_at=now, metered_at=now)
            s.add(usage)
            s.flush()
            s.refresh(sub)
            terms = json.loads(product.terms_json)
            return Grant(subscription_id=sub.id, product_id=product.id, dataset=product.dataset_name,
                         columns=tuple(terms.get("columns") or ()), unit_price=product.unit_price,
                         usage_id=usage.id, calls_left=max(product.allowance - sub.used - sub.held, 0.0))

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
        if price * allowance > MAX_SUBSCRIPTION_AMOUNT:
            # Money is metered in 64-bit integer micro-units (PostgreSQL BIGINT, up to 9.2e18): one
            # subscription's whole allowance must fit with room for thousands of them in a statement,
            # else metering a release would overflow after the job computed (budget spent, nothing out).
            raise BadRequest(f"unit_price x allowance is {price * allowance:.6g}; at most {MAX_SUBSCRIPTION_AMOUNT:.0e} "
                             "per subscription")
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

    # ------------------------------------------------------------------ query jobs under a subscription
    def own_approved(self, who: PrincipalView, subscription_id: str) -> tuple[m.Subscription, m.Product]:
        """The caller's own approved subscription and its product, after giving back the holds of
        jobs that ended (404 not the caller's, 403 not approved)."""
        with self.store.write() as s:
            sub = s.get(m.Subscription, subscription_id)
            if sub is None or sub.principal_id != who.id:
                raise NotFound(f"no subscription {subscription_id!r} of yours")
            reclaim_ended(s, sub.id)
        with self.store.read() as s:
            sub = s.get(m.Subscription, subscription_id)
            assert sub is not None
            product = s.get(m.Product, sub.product_id)
            assert product is not None
        if sub.status != "approved":
            raise NotSubscribed(f"subscription {sub.id} is {sub.status}: the product's owner has not approved it")
        return sub, product

    def check_query(self, who: PrincipalView, subscription_id: str, dataset: str, plan: Any, hidden_count: bool,
                    epsilon: float) -> tuple[m.Subscription, m.Product]:
        """Refuse a query its subscription does not cover: not the caller's, not approved, another
        dataset or kind, a shape the product does not allow, or past the allowance. Holds nothing."""
        from xdp_compute.query.finalize import GROUP_SIZE_ALIAS

        sub, product = self.own_approved(who, subscription_id)
        if product.kind != "query":
            raise BadRequest(f"subscription {sub.id} is to a {product.kind} product, not a query product")
        if product.dataset_name.lower() != dataset.lower():
            raise BadRequest(f"subscription {sub.id} covers dataset {product.dataset_name!r}, not {dataset!r}")
        shapes = json.loads(product.terms_json).get("shapes") or {}
        why = []
        aggs = [o for o in plan.outputs if o.kind != "group" and not (hidden_count and o.alias == GROUP_SIZE_ALIAS)]
        if "aggregates" in shapes:
            why += [f"aggregate {o.kind}" for o in aggs if o.kind not in shapes["aggregates"]]
        if "columns" in shapes:
            why += [f"column {o.column!r}" for o in aggs if o.column is not None and o.column not in shapes["columns"]]
        if "group_by" in shapes:
            why += [f"GROUP BY {c!r}" for c in plan.group_columns if c not in shapes["group_by"]]
        if "filters" in shapes and plan.where is not None:
            from xdp_compute.query.where import predicate_to_dict

            used = _where_columns(predicate_to_dict(plan.where))
            why += [f"WHERE on {c!r}" for c in sorted(used) if c not in shapes["filters"]]
        if why:
            raise BadRequest(f"product {product.id!r} does not allow this query: {', '.join(why)} "
                             f"(allowed shapes: {json.dumps(shapes, sort_keys=True)})")
        if sub.used + sub.held + epsilon > product.allowance + TOLERANCE:
            raise AllowanceUsedUp(f"subscription {sub.id} has epsilon {max(product.allowance - sub.used - sub.held, 0):g} "
                                  f"left of {product.allowance:g}; this query needs {epsilon:g}", subscription=sub.id)
        return sub, product

    def require_subscription(self, dataset: str, operation: str = "query") -> None:
        """A dataset whose owner sells jobs on it is used only under a subscription: every such job
        is metered. ``operation`` (query, scoring, model) picks the product kinds that guard it
        (``GUARDING_KINDS``). Refused (403) before anything is reserved; dry runs are not asked."""
        kinds = GUARDING_KINDS[operation]
        with self.store.read() as s:
            listed = s.execute(select(m.Product.id, m.Product.kind)
                               .where(func.lower(m.Product.dataset_name) == dataset.lower(),
                                      m.Product.kind.in_(kinds)).order_by(m.Product.id).limit(3)).all()
        if listed:
            what = {"query": "queried", "scoring": "scored", "model": "trained on"}[operation]
            offered = ", ".join(f"{pid} ({kind})" for pid, kind in listed)
            raise NotSubscribed(f"dataset {dataset!r} is {what} only under a subscription to a product sold on "
                                f"it ({offered}): xdp products list --dataset {dataset}, subscribe, and pass "
                                "--subscription")

    def hold_units(self, subscription_id: str, units: float) -> int:
        """Hold ``units`` of the subscription's allowance (``hold_query`` for any job kind;
        scores and trainings: ``gateway/exchange_jobs.py``)."""
        return self._hold(subscription_id, units)

    def hold_query(self, who: PrincipalView, subscription_id: str, epsilon: float) -> int:
        """Hold ``epsilon`` of the subscription's allowance (a conditional UPDATE: concurrent jobs
        can never hold more than the allowance together); returns the hold's usage id."""
        return self._hold(subscription_id, epsilon)

    def _hold(self, subscription_id: str, epsilon: float) -> int:
        with self.store.write() as s:
            sub = s.get(m.Subscription, subscription_id)
            product = s.get(m.Product, sub.product_id) if sub is not None else None
            assert sub is not None and product is not None
            reclaim_ended(s, sub.id)
            res = s.execute(update(m.Subscription)
                            .where(m.Subscription.id == sub.id, m.Subscription.status == "approved",
                                   m.Subscription.used + m.Subscription.held + epsilon
                                   <= product.allowance + TOLERANCE)
                            .values(held=m.Subscription.held + epsilon))
            if res.rowcount != 1:  # type: ignore[attr-defined]
                raise AllowanceUsedUp(f"subscription {sub.id} cannot cover {epsilon:g} {product.unit}(s) more "
                                      f"(allowance {product.allowance:g})", subscription=sub.id)
            usage = m.Usage(subscription_id=sub.id, product_id=product.id, job_id=None, state="held",
                            units=epsilon, amount_micros=0, period=None, parties_json="[]", log_index=None,
                            created_at=time.time(), metered_at=None)
            s.add(usage)
            s.flush()
            return usage.id

    def return_hold(self, usage_id: int) -> None:
        """Give a hold back (its job was never created, or is another request's)."""
        with self.store.write() as s:
            give_back(s, usage_id)

    async def submit_query(self, qs: Any, who: PrincipalView, p: Any, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """``POST /v1/queries`` with ``subscription``: refused before anything is reserved when the
        subscription does not cover it; otherwise its ε is held on the subscription, the job runs
        as any other, and the release gate meters it (``meter_release``) or gives it back."""
        import asyncio

        sub_id = body["subscription"]
        await asyncio.to_thread(self.check_query, who, sub_id, p.dataset, p.plan, p.hidden_count, p.noise.epsilon)
        if body.get("dry_run"):
            out = qs.dry_run(p)
            out["subscription"] = sub_id
            return 200, out
        hold = await asyncio.to_thread(self.hold_query, who, sub_id, p.noise.epsilon)
        spec = {"sql": body["sql"], "epsilon": p.epsilon, "delta": p.delta, "public_key": p.public_key,
                "subscription": {"id": sub_id, "usage": hold}}
        try:
            status, out = await qs.submit_prepared(who, p, body.get("idempotency_key"), spec)
        except BaseException:
            await asyncio.to_thread(self.return_hold_unless_used, hold)
            raise
        await asyncio.to_thread(self.return_hold_unless_used, hold, out.get("job_id"))
        return status, out

    def return_hold_unless_used(self, usage_id: int, job_id: str | None = None) -> None:
        """Give the hold back unless a job carries it (an idempotent retry answers with the job
        of the first request, which carries its own hold)."""
        with self.store.write() as s:
            if job_id is not None:
                job = s.get(m.Job, job_id)
                carried = json.loads(job.spec_json).get("subscription") if job is not None else None
                if carried and carried.get("usage") == usage_id:
                    # The hold is the job's now (it waits for approvals, or has ended): name the job
                    # on it, so that a job that ends without a release gives it back (``reclaim_ended``).
                    row = s.get(m.Usage, usage_id)
                    if row is not None and row.state == "held" and row.job_id is None:
                        row.job_id = job_id
                    return
            else:
                row = s.get(m.Usage, usage_id)
                if row is not None and row.job_id is not None:
                    return
                # The request failed, but its job may still be running (an analyst that drops its
                # request leaves the job to the release gate): then the hold stays the job's, and
                # its release meters it or its refusal gives it back (``reclaim_ended`` if neither
                # is logged). Giving it back here would free the allowance while the job releases.
                carrier = _active_carrier(s, row) if row is not None else None
                if carrier is not None:
                    if row is not None and row.state == "held":
                        row.job_id = carrier
                    return
            give_back(s, usage_id)


    # ------------------------------------------------------------------ settlement
    def statements(self, who: PrincipalView, period: str) -> list[dict[str, Any]]:
        """The period's statements the caller may see: issued ones as their log entries (``issued``
        true), else computed now from the metered usage (``issued`` false, nothing written).
        Analysts and holders see their own; auditors and admins every one."""
        check_period(period)
        with self.store.read() as s:
            rows = s.execute(select(m.Statement.party_id, m.LogEntry.entry_json)
                             .join(m.LogEntry, m.LogEntry.idx == m.Statement.log_index)
                             .where(m.Statement.period == period)
                             .order_by(m.Statement.side, m.Statement.party_id)).all()
            if rows:
                return [{**json.loads(text), "issued": True} for party, text in rows if _sees(who, party)]
            computed = compute_statements(s, period)
        return [{**{k: v for k, v in body.items() if k != "party_id"}, "issued": False}
                for body in computed if _sees(who, body["party_id"])]

    def issue(self, who: PrincipalView, period: str) -> list[dict[str, Any]]:
        """Settle ``period`` (admins): one log entry per subscriber and per holder with income, from
        the metered usage. The period is closed: later usage falls in the next open period."""
        check_period(period)
        with self.store.read() as s:
            if s.scalar(select(m.Statement.id).where(m.Statement.period == period).limit(1)) is not None:
                raise Conflict(f"period {period} is already settled; GET /v1/statements?period={period}")
            if period > open_period(s, time.time()):
                raise BadRequest(f"period {period} has not begun: nothing can be settled for it yet")
        out = []
        with self.log.transaction() as s:
            # No use is being metered into this period meanwhile (``lock_periods``); once these rows
            # commit, new usage falls in a later period.
            lock_periods(s)
            # Checked again under the lock: a settlement running at the same time passed the check
            # above too, and has committed its statements by now (409, not a unique-key error).
            if s.scalar(select(m.Statement.id).where(m.Statement.period == period).limit(1)) is not None:
                raise Conflict(f"period {period} is already settled; GET /v1/statements?period={period}")
            bodies = compute_statements(s, period)
            for body in bodies:
                stored = self.log.append(s, {"kind": STATEMENT_ISSUED, "principal": who.name,
                                             **{k: v for k, v in body.items() if k != "party_id"}})
                s.add(m.Statement(period=period, party_id=body["party_id"], side=body["side"],
                                  total_micros=body["total_micros"], log_index=stored["index"],
                                  issued_at=stored["time"]))
                out.append({**stored, "issued": True})
            if not bodies:
                raise BadRequest(f"no metered usage in period {period}: there is nothing to settle")
        return out

def _where_columns(node: Any) -> set[str]:
    """Every column a WHERE predicate's dict form names (``"column": name`` members)."""
    out: set[str] = set()
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "column" and isinstance(v, str):
                out.add(v)
            else:
                out |= _where_columns(v)
    elif isinstance(node, list | tuple):
        for v in node:
            out |= _where_columns(v)
    return out


def _active_carrier(s: Session, row: m.Usage) -> str | None:
    """The id of a job not yet ended that carries the hold ``row`` (its subscriber's jobs only)."""
    sub = s.get(m.Subscription, row.subscription_id)
    if sub is None:
        return None
    jobs = s.execute(select(m.Job.id, m.Job.spec_json)
                     .where(m.Job.principal_id == sub.principal_id,
                            m.Job.status.in_(("reserved", "awaiting_approval", "running")))).all()
    for job_id, spec in jobs:
        carried = json.loads(spec or "{}").get("subscription")
        if isinstance(carried, dict) and carried.get("usage") == row.id:
            return str(job_id)
    return None


def _sees(who: PrincipalView, party_id: str) -> bool:
    return who.role in ("auditor", "admin") or who.id == party_id


def compute_statements(s: Session, period: str) -> list[dict[str, Any]]:
    """Every statement of ``period`` from its metered usage: one per subscriber (what it owes, per
    product) and one per holder (its income, per product: each use's amount split equally among
    the holders that took part, ``split_income``). Each side's totals sum to the period's usage."""
    rows = s.execute(select(m.Usage, m.Subscription.principal_id, m.Product)
                     .join(m.Subscription, m.Subscription.id == m.Usage.subscription_id)
                     .join(m.Product, m.Product.id == m.Usage.product_id)
                     .where(m.Usage.period == period, m.Usage.state == "metered").order_by(m.Usage.id)).all()
    names = dict(s.execute(select(m.Principal.id, m.Principal.name)).all())
    pay: dict[str, dict[str, dict[str, Any]]] = {}
    earn: dict[str, dict[str, dict[str, Any]]] = {}
    usage_ids: dict[tuple[str, str], list[int]] = {}

    def line(book: dict[str, dict[str, dict[str, Any]]], party: str, p: m.Product) -> dict[str, Any]:
        return book.setdefault(party, {}).setdefault(p.id, {
            "product_id": p.id, "product": p.title, "dataset": p.dataset_name, "kind": p.kind, "unit": p.unit,
            "unit_price": p.unit_price, "uses": 0, "units": 0.0, "amount_micros": 0, "log_indexes": []})

    for u, subscriber, p in rows:
        ln = line(pay, subscriber, p)
        ln["uses"] += 1
        ln["units"] = round(ln["units"] + u.units, 9)
        ln["amount_micros"] += u.amount_micros
        if u.log_index is not None:
            ln["log_indexes"].append(u.log_index)
        usage_ids.setdefault((subscriber, "subscriber"), []).append(u.id)
        for party, share in split_income(u.amount_micros, json.loads(u.parties_json)).items():
            ln2 = line(earn, party, p)
            ln2["uses"] += 1
            ln2["amount_micros"] += share
            if u.log_index is not None:
                ln2["log_indexes"].append(u.log_index)
            usage_ids.setdefault((party, "holder"), []).append(u.id)
    out = []
    for side, book in (("subscriber", pay), ("holder", earn)):
        for party in sorted(book, key=lambda x: names.get(x, x)):
            lines = [book[party][k] for k in sorted(book[party])]
            total = sum(x["amount_micros"] for x in lines)
            out.append({"period": period, "side": side, "party": names.get(party, "?"), "party_id": party,
                        "lines": lines, "total_micros": total, "total": total / MICROS,
                        "usage_ids": usage_ids[(party, side)],
                        "rule": "each use's amount split equally among the holders whose nodes took part"
                                if side == "holder" else "units used x the product's unit price"})
    return out
