"""Hidden lookups at the gateway (issue #17): a relay between the analyst's SDK and one holder's node.

The gateway runs no cryptography here (as ``secure_sum`` holds none): it checks who may look up
what, forwards the node's table and one blinded point per lookup, counts the call against the
subscription and logs it. The protocol is docs/hidden-lookup.md (OPRF keyword PIR, Kales et al.
2019 with labels); what the gateway sees of a lookup is

* ``POST .../table-info`` and ``GET .../parts/{n}``: the product, the table's public shape and
  bytes that are PRF outputs and ciphertexts under the node's secret key;
* ``POST .../evaluate``: a uniformly random group element in, another one out.

It learns neither the key nor whether it matched, and logs neither (the key never reaches it;
the match happens in the SDK). Each evaluation is one call under an approved subscription to a
lookup product (held by ``ExchangeService.hold_units``, metered by ``metered.meter_call``) and one
release-log entry, written through the release gate's ``record`` path: principal, product,
subscription, dataset, node, table version, time. A lookup releases one record, not a DP
aggregate: it is offered only on datasets whose owner opted in (``[datasets.lookup]``), for the
columns it lists, and the node checks both again.

Order of an evaluation: the subscription and the dataset's policy are checked; the call is
counted (one unit held on the subscription, atomically: concurrent calls never hold more than
the allowance), and only then is the node asked, so a call past the allowance costs the node no
work; the node's answer meters the held unit and is logged, then the point is returned. A node
that fails to evaluate gives the unit back (``evaluate`` says why that refund cannot depend on
the data). Refusals are answered as problems and are not log entries (they release nothing).
"""

from __future__ import annotations

import base64
import binascii
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from xdp_compute.contract.tasks import (
    LOOKUP_PART_BYTES,
    LOOKUP_POINT_BYTES,
    LOOKUP_STALE,
    LookupEvaluate,
    LookupEvaluated,
    LookupPrepare,
    LookupPrepared,
    LookupTablePart,
    LookupTablePartReply,
)
from xdp_compute.crypto.pir.table import NO_SUCH_PART
from xdp_compute.crypto.psi.group import check_point
from xdp_compute.domain.manifest import DatasetSpec
from xdp_compute.domain.policy import Requester, evaluate
from xdp_compute.errors import BadRequest, Conflict, Forbidden, NotFound, PolicyDenied, ProtocolAborted
from xdp_compute.gateway.exchange import AllowanceUsedUp, ExchangeService, NotSubscribed
from xdp_compute.gateway.hub import NodeDropped, NodeFailed
from xdp_compute.gateway.metered import meter_call
from xdp_compute.gateway.services import Services
from xdp_compute.gateway.store import PrincipalView, node_parts

LOOKUP = "lookup"  # the release-log entry kind of one hidden lookup
PREPARE_TIMEOUT = 900.0  # building a table of 10^6 entries takes minutes on one core
CALL_TIMEOUT = 60.0
CACHE_BYTES = 1 << 30  # table parts kept for the SDKs that fetch them (newest versions first)
_NOT_RECHECKED = ("budget", "epsilon_cap")


class LookupVersionStale(Conflict):
    """The node no longer serves this table version (its data changed, or it restarted)."""

    slug, title = "lookup-version-stale", "Lookup table version is stale"


@dataclass(frozen=True)
class Target:
    """Where a product's lookups go: its dataset, its columns and the one node holding it; the
    caller's subscription to it (its id and allowance, in calls)."""

    product: str
    dataset: str
    columns: tuple[str, ...]
    node_id: str
    node: str
    subscription: str
    allowance: float


class TableCache:
    """Table parts the gateway fetched from nodes, per (product, version, part); bounded, LRU.

    They are the node's public table (PRF outputs and ciphertexts), cached so that many SDKs
    fetching one version cost the node one transfer. Lives on the app (one per gateway process).
    """

    def __init__(self, max_bytes: int = CACHE_BYTES) -> None:
        self.max_bytes = max_bytes
        self._parts: OrderedDict[tuple[str, str, int], bytes] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()

    def get(self, key: tuple[str, str, int]) -> bytes | None:
        with self._lock:
            data = self._parts.get(key)
            if data is not None:
                self._parts.move_to_end(key)
            return data

    def put(self, key: tuple[str, str, int], data: bytes) -> None:
        with self._lock:
            if key in self._parts:
                return
            self._parts[key] = data
            self._size += len(data)
            while self._size > self.max_bytes and len(self._parts) > 1:
                _, old = self._parts.popitem(last=False)
                self._size -= len(old)


def decode_point(text: str) -> bytes:
    """A base64 group element from the SDK: a valid point of the prime-order subgroup, or a 400."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest("point: not base64") from None
    if len(raw) != LOOKUP_POINT_BYTES:
        raise BadRequest(f"point: a group element is {LOOKUP_POINT_BYTES} bytes, not {len(raw)}")
    return check_point(raw)  # InvalidPoint (400) here already; the node checks again before using k


class LookupService:
    """The gateway's part of hidden lookups for one request: checks, node calls, counting, log."""

    def __init__(self, svc: Services, cache: TableCache) -> None:
        self.svc, self.cache = svc, cache
        self.exchange = ExchangeService(svc)

    # ------------------------------------------------------------------ who may look up what
    def target(self, who: PrincipalView, product_id: str) -> Target:
        """The product's dataset and node, once ``who`` holds an approved subscription with calls left
        and the dataset's policy lets ``who`` have its records. Counts nothing."""
        if who.role != "analyst":
            raise Forbidden(f"role {who.role!r} may not look up records (analysts with a subscription may)")
        product = self.exchange.product(product_id)
        if product["kind"] != "lookup":
            raise NotFound(f"no lookup product {product_id!r}")
        try:
            sub = self.exchange.subscription_of(who, product_id)
        except NotFound:
            raise NotSubscribed(f"{who.name!r} has no subscription to product {product_id!r} (xdp products "
                                f"subscribe {product_id}, then the owner approves)") from None
        if sub["status"] != "approved":
            raise NotSubscribed(f"{who.name!r} may not call product {product_id!r}: the subscription is "
                                f"{sub['status']}")
        if sub["left"] < 1:
            raise AllowanceUsedUp(f"subscription {sub['id']} has used all {sub['allowance']:g} calls of product "
                                  f"{product_id!r}", subscription=sub["id"])
        parts = self.svc.store.lookup_parts(product["dataset"])
        spec = DatasetSpec.from_dict(parts[0]["spec"])
        if spec.lookup is None:
            raise PolicyDenied(f"dataset {spec.name!r} is not open to hidden lookups: its owner's manifest has no "
                               "[datasets.lookup] table (a lookup releases single records, not DP)")
        decisions = evaluate(node_parts(parts), Requester(who.name, who.role, who.region), 0.0, 0.0,
                             restricted_categories=self.svc.settings.restricted_categories, output="lookup")
        denied = [d for d in decisions if not d.allowed and d.rule not in _NOT_RECHECKED]
        if denied:
            raise PolicyDenied(f"denied by rule {denied[0].rule!r}: {denied[0].reason}")
        if len(parts) != 1:
            # One node's table per product: a dataset split over several nodes would need one table
            # and one evaluation per node (not built; docs/hidden-lookup.md "Limits").
            raise Conflict(f"dataset {spec.name!r} is held by {len(parts)} nodes; hidden lookups serve a dataset "
                           "held by one node")
        part = parts[0]
        if not part["online"]:
            raise Conflict(f"the node holding dataset {spec.name!r} is offline")
        columns = tuple(product["terms"].get("columns") or spec.lookup.columns)
        return Target(product_id, spec.name, columns, part["node_id"], part["node"], sub["id"], sub["allowance"])

    # ------------------------------------------------------------------ node calls
    async def _ask(self, t: Target, request: Any, timeout: float) -> Any:
        try:
            return await self.svc.hub.ask(t.node_id, "lookup", request, timeout)
        except NodeDropped:
            raise ProtocolAborted(f"node {t.node!r} did not answer the lookup in time") from None
        except NodeFailed as e:
            if e.error == LOOKUP_STALE:
                raise LookupVersionStale(f"{LOOKUP_STALE} (POST /v1/lookups/{t.product}/table-info)") from None
            if e.error == NO_SUCH_PART:  # the analyst asked past the last part: its mistake, not an outage
                raise NotFound(f"{NO_SUCH_PART} (table-info gives the number of parts)") from None
            raise ProtocolAborted(f"node {t.node!r} refused: {e.error}") from None

    async def table_info(self, who: PrincipalView, product_id: str) -> dict[str, Any]:
        """The product's current table version and its public shape (the node builds it if needed)."""
        t = self.target(who, product_id)
        info: LookupPrepared = await self._ask(t, LookupPrepare(dataset=t.dataset, product=t.product,
                                                                columns=list(t.columns)), PREPARE_TIMEOUT)
        return {"product": t.product, "dataset": t.dataset, "version": info.version, "key_type": info.key_type,
                "columns": info.columns, "capacity": info.capacity, "label_bytes": info.label_bytes,
                "table_bytes": info.table_bytes, "parts": info.parts, "part_bytes": LOOKUP_PART_BYTES}

    async def table_part(self, who: PrincipalView, product_id: str, version: str, part: int) -> bytes:
        """One part of a table version: from the cache, or fetched from the node once."""
        t = self.target(who, product_id)
        key = (t.product, version, part)
        data = self.cache.get(key)
        if data is None:
            reply: LookupTablePartReply = await self._ask(
                t, LookupTablePart(dataset=t.dataset, product=t.product, version=version, part=part), CALL_TIMEOUT)
            data = reply.data
            self.cache.put(key, data)
        return data

    async def evaluate(self, who: PrincipalView, product_id: str, version: str, point: str) -> dict[str, Any]:
        """One hidden lookup: the node's ``k·B`` for the analyst's blinded point ``B``, counted and logged."""
        blinded = decode_point(point)  # malformed input is refused before anything is looked up
        t = self.target(who, product_id)
        # Count first: one call held on the subscription by a conditional UPDATE (``hold_units``), so
        # of any number of concurrent calls exactly the allowance get past here, and a call past it
        # never makes the node evaluate (a deviating analyst cannot make the holder work for free).
        try:
            hold = self.exchange.hold_units(t.subscription, 1.0)
        except AllowanceUsedUp:
            raise AllowanceUsedUp(f"subscription {t.subscription} has used all {t.allowance:g} calls of product "
                                  f"{product_id!r}", subscription=t.subscription) from None
        try:
            reply: LookupEvaluated = await self._ask(t, LookupEvaluate(dataset=t.dataset, product=t.product,
                                                                       version=version, point=blinded,
                                                                       principal=who.name), CALL_TIMEOUT)
        except BaseException:
            # The node did not evaluate: the call is given back. This refund is not data-dependent
            # (DESIGN.md: an abort whose cause can depend on data is charged), because no cause of
            # an evaluation failure reads a row: the node checks its opt-in (the manifest), the
            # version against its source's file state or age (a new version is public anyway: the
            # next table-info shows it) and the point (the analyst's own input, checked here
            # already); then it computes k·B and a proof, which take the same steps for any B and
            # never touch the source. A build that could fail on the rows is no longer a cause
            # either: rows that break the declaration are left out (``crypto.pir.select_records``),
            # and a build happens in table-info, which counts nothing. What remains is the node or
            # the link being down or slow, which the holder's data does not decide.
            self.exchange.return_hold(hold)
            raise
        with self.svc.store.write() as s:
            metered = meter_call(s, hold)
        if metered is None:  # given back meanwhile (an orphan after ten minutes): answer nothing
            raise ProtocolAborted("the call's hold was given back before the node's answer arrived; retry")
        # The entry names who, what and when; never the key (the gateway has none) nor any outcome.
        entry = self.svc.gate.record({
            "kind": LOOKUP, "operation": "lookup", "principal": who.name, "product": t.product,
            "subscription": metered["subscription"], "datasets": [t.dataset], "nodes": [t.node],
            "table_version": version, "columns": list(t.columns), "unit_price": metered["unit_price"]})
        return {"product": t.product, "version": reply.version,
                "point": base64.b64encode(reply.point).decode(), "proof": base64.b64encode(reply.proof).decode(),
                "log_index": entry["index"],
                "calls_left": metered["calls_left"], "receipt": self.svc.release_log.receipt(entry["index"])}
