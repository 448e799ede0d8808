"""Federated DP SQL jobs: plan -> policy -> reserve -> secure aggregation -> release through the gate."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

from xdp_compute.contract import HeQueryBegin, NoiseBasis, QueryBegin
from xdp_compute.crypto.paillier import PaillierPublic, ring_scheme
from xdp_compute.crypto.secagg import SecAggParameters, default_threshold
from xdp_compute.crypto.secagg.config import COMPLETE_GRAPH_MAX_NODES
from xdp_compute.domain.manifest import DatasetSpec
from xdp_compute.domain.policy import (
    Decision,
    NoiseShares,
    Requester,
    check_privacy_params,
    enforce,
    evaluate,
    members_taking_part,
    noise_shares,
    parties_spanned,
    secagg_node_threshold,
)
from xdp_compute.errors import (
    BadRequest,
    Conflict,
    InvalidQuery,
    ProtocolAborted,
)
from xdp_compute.gateway import models as m
from xdp_compute.gateway.encrypted_sum import SealedSession, encrypted_secure_sum
from xdp_compute.gateway.lifecycle import JobDraft, JobLifecycle
from xdp_compute.gateway.release import (
    FAILED,
    GroupCells,
    Outcome,
    PolicyContext,
    SealedCells,
    digest,
)
from xdp_compute.gateway.secure_sum import secure_sum, session_parameters
from xdp_compute.gateway.services import Services
from xdp_compute.gateway.store import PrincipalView, ReservationRequest, node_parts
from xdp_compute.privacy import Measurement, NoisePlan, expected_error, plan_noise
from xdp_compute.query import QueryPlan, plan_query, referenced_dataset
from xdp_compute.query.finalize import GROUP_SIZE_ALIAS, finalize_rows
from xdp_compute.query.plan import from_ring
from xdp_compute.query.sealed import revealed_slots
from xdp_compute.query.statement import parse_statement, sql_text
from xdp_compute.query.statement import with_group_size as add_group_size

log = logging.getLogger("xdp.gateway.query")
DEFAULT_DELTA_FRACTION = 0.001  # a query's default delta: 0.1% of the smallest delta budget
MAX_CIPHERTEXT_BYTES = 32 << 20  # largest encrypted masked input accepted from one node


@dataclass
class Prepared:
    """Everything decided before anything is computed."""

    principal: PrincipalView
    dataset: str
    parts: list[dict[str, Any]]
    plan: QueryPlan
    hidden_count: bool
    noise: NoisePlan
    threshold: int
    decisions: list[Decision]
    epsilon: float
    delta: float
    level: float
    spec_digest: str
    operation: str = "query"
    public_key: dict[str, Any] | None = None  # the analyst's Paillier key (encrypted delivery)
    neighbours: int | None = None  # SecAgg+ degree k (None: complete graph), from ``secagg_plan``
    secagg: dict[str, Any] | None = None  # the session parameters and their failure bounds, for dry runs
    parties_needed: int | None = None  # parties any release sums (None: a majority of the parties)

    @property
    def node_names(self) -> list[str]:
        return [p["node"] for p in self.parts]

    @property
    def parties(self) -> set[str]:
        """The participating holders: one party each, however many nodes it runs."""
        return {p["holder_id"] for p in self.parts}

    @property
    def party_threshold(self) -> int:
        """Parties that must be among the survivors for a release: a majority of the parties with
        the complete graph; with SecAgg+ the fewest parties t nodes can belong to (``secagg_plan``)."""
        if self.parties_needed is not None:
            return self.parties_needed
        return default_threshold(len(self.parties))

    def cost(self) -> dict[str, float]:
        return {"epsilon": self.noise.epsilon, "delta": self.noise.delta, "rho": self.noise.rho}


def sigmas_sent(noise: NoisePlan) -> dict[str, Fraction]:
    """Each measurement's per-node noise variance, as sent to the nodes.

    ``XDP_TEST_GATEWAY_SIGMA_SCALE`` (tests only) makes this gateway deviate: it scales every
    variance it sends, so tests can show that nodes refuse too little noise (issue #12).
    """
    sigmas = {mm.name: mm.sigma_node2 for mm in noise.measurements}
    scale = os.environ.get("XDP_TEST_GATEWAY_SIGMA_SCALE")
    if scale:
        log.warning("XDP_TEST_GATEWAY_SIGMA_SCALE=%s is set: this gateway sends deviating noise scales "
                    "(tests only)", scale)
        sigmas = {k: v * Fraction(scale) for k, v in sigmas.items()}
    return sigmas


def noise_basis(p: Prepared) -> NoiseBasis:
    """What the job's noise was calibrated from, for each node to recompute it (issue #12)."""
    parties = {x["node_id"]: str(x.get("holder_id") or x["node_id"]) for x in p.parts}
    colluding = max(p.party_threshold - p.noise.parties_threshold, 0)
    return NoiseBasis(epsilon=p.noise.requested_epsilon, delta=p.noise.delta,
                      honest_shares=p.noise.parties_threshold, colluding=colluding, parties=parties)


def secagg_decision(params: SecAggParameters) -> Decision:
    """The plan's secure-aggregation session, as a decision the dry run and the log show."""
    d = params.to_dict()
    if params.sparse:
        why = (f"SecAgg+ over {params.n} nodes: {params.neighbours} neighbours each, threshold {params.threshold} "
               f"per neighbourhood of {params.neighbourhood_size} (Bell et al. 2020), chosen for "
               f"{params.dropout_rate:g} drop-out and {params.corrupt_rate:g} corrupt nodes: privacy failure "
               f"<= {params.privacy_failure:.2g}, abort <= {params.correctness_failure:.2g} at those rates")
    else:
        why = (f"complete graph over {params.n} nodes, threshold {params.threshold}: tolerates any "
               f"{d['guaranteed_dropout_tolerance']} drop-outs; at {params.dropout_rate:g} drop-out and "
               f"{params.corrupt_rate:g} corrupt nodes, privacy failure {params.privacy_failure:g}, "
               f"abort {params.correctness_failure:g} (nodes enforce their own 2t > n + c)")
    return Decision("secure_aggregation", True, why)


def declared_max_rows(parts: list[dict[str, Any]]) -> int:
    """The largest ``max_rows`` the participating holders declared (public, from their manifests)."""
    return max(DatasetSpec.from_dict(p["spec"]).max_rows for p in parts)


def with_group_size(sql: str) -> tuple[str, bool]:
    """Text form of ``query.statement.with_group_size`` (tests use it to recompute node noise)."""
    stmt, hidden = add_group_size(parse_statement(sql))
    return (sql_text(stmt) if hidden else sql), hidden


class QueryService:
    """The SQL job: plan, dry run, and the plain and encrypted runs; the rest is the lifecycle's."""

    def __init__(self, svc: Services) -> None:
        self.svc = svc
        self.store = svc.store
        self.gate = svc.gate
        self.jobs = JobLifecycle(svc)

    # ------------------------------------------------------------------ planning
    def lookup(self, name: str) -> list[dict[str, Any]]:
        return self.store.lookup_parts(name)

    def prepare(self, who: PrincipalView, sql: str, epsilon: Any, delta: Any, level: float = 0.95,
                operation: str = "query", public_key: dict[str, Any] | None = None) -> Prepared:
        if not isinstance(sql, str) or not sql.strip():
            raise InvalidQuery("empty query")
        stmt = parse_statement(sql)  # the one parse of this query on the gateway
        name = referenced_dataset(stmt)
        all_parts = self.lookup(name)
        parts = [p for p in all_parts if p["online"]]
        if not parts:
            raise Conflict(f"no node holding dataset {name!r} is online")
        spec = DatasetSpec.from_dict(parts[0]["spec"])
        # The default delta follows the owner's ledgers (a member's tiny delta budget sets nothing).
        owners = [p for p in parts if p.get("role") != "member"] or parts
        default_delta = min(p["delta_budget"] for p in owners) * DEFAULT_DELTA_FRACTION
        eps, dlt = check_privacy_params(epsilon, delta, default_delta)
        requester = Requester(who.name, who.role, who.region)
        parts, left_out = self.taking_part(parts, requester, eps, dlt)
        if os.environ.get("XDP_TEST_GATEWAY_SPLIT_PARTIES"):
            # Test-only deviation: count every node as a party of its own (one holder's nodes as
            # several parties), which lowers the threshold and the noise; certified nodes refuse.
            log.warning("XDP_TEST_GATEWAY_SPLIT_PARTIES is set: this gateway miscounts parties (tests only)")
            parts = [{**x, "holder_id": x["node_id"]} for x in parts]
        if not 0.5 <= level < 1:
            raise BadRequest("level must be in [0.5, 1)")
        if public_key is not None:
            # Encrypted delivery: the analyst's Paillier key is validated at the border.
            PaillierPublic.from_dict(public_key)
            operation = "he_query"
        stmt, hidden = add_group_size(stmt)
        # The worst case is sized by the largest max_rows any participating holder declared.
        plan = plan_query(sql_text(stmt) if hidden else sql, spec, statement=stmt,
                          max_rows_per_node=declared_max_rows(parts))
        # The secure-aggregation session is fixed here, before anything is reserved: a job no
        # graph and threshold fit at the stated rates is refused now (409), charging nothing.
        secagg, shares = self.secagg_plan(parts)
        measurements = [Measurement(name=mm.key, l2_sensitivity=mm.sensitivity, dim=len(plan.cells),
                                    l1_sensitivity=mm.sensitivity) for mm in plan.measurements]
        enforce([shares.decision()])
        noise = plan_noise(eps, dlt, measurements, shares.honest)
        t = secagg.threshold
        decisions = evaluate(node_parts(parts), requester, noise.epsilon,
                             noise.delta, restricted_categories=self.svc.settings.restricted_categories,
                             output=operation)
        decisions.append(shares.decision())
        decisions.append(secagg_decision(secagg))
        decisions += left_out
        offline = [p["node"] for p in all_parts if not p["online"]]
        if offline:
            decisions.append(Decision("participation", True, f"offline node(s) {offline} do not take part; "
                                                              "their rows are not in the answer"))
        spec_digest = digest({"operation": operation, "sql": sql, "epsilon": eps, "delta": dlt, "level": level,
                              "public_key": public_key})
        if public_key is not None:
            decisions.append(Decision("suppression", True, "encrypted delivery: the gateway is released each "
                                                           "cell's noisy COUNT(*) (this plan's charged count "
                                                           "measurement) and blanks cells below min_group_size in "
                                                           "the ciphertext before release"))
        return Prepared(who, plan.dataset, parts, plan, hidden, noise, t, decisions, eps, dlt, level, spec_digest,
                        operation, public_key, neighbours=secagg.neighbours, secagg=secagg.to_dict(),
                        parties_needed=shares.threshold if secagg.sparse else None)

    def secagg_plan(self, parts: list[dict[str, Any]]) -> tuple[SecAggParameters, NoiseShares]:
        """The session's graph and threshold, and the parties' shares its noise counts on.

        Up to 40 nodes, the complete graph with the parties' threshold (``node_threshold``), as
        before. Above, SecAgg+ with Bell et al.'s k and t at the gateway's stated drop-out and
        corruption rates (``crypto.secagg.secagg_plus_parameters``; 409 when none fits). Its t is
        per neighbourhood: a release is then guaranteed to sum t nodes, not a majority, so the
        noise counts on the parties any t nodes span (``parties_spanned``) less the collusion
        margin — the conservative calibration each node recomputes for itself
        (``node.policy.own_noise_shares``), at the price of more noise in the total
        (about n / (t - c) shares' worth when all n nodes answer).
        """
        settings = self.svc.settings
        per_party: dict[str, int] = {}
        for x in parts:
            per_party[x["holder_id"]] = per_party.get(x["holder_id"], 0) + 1
        shares = self.noise_shares(len(per_party))
        complete_t = self.node_threshold(parts, shares) if len(parts) <= COMPLETE_GRAPH_MAX_NODES else 0
        params = session_parameters(len(parts), complete_threshold=complete_t,
                                    dropout_rate=settings.secagg_dropout_rate,
                                    corrupt_rate=settings.secagg_corrupt_rate, colluding=shares.colluding)
        if params.sparse:
            shares = NoiseShares(len(per_party), parties_spanned(list(per_party.values()), params.threshold),
                                 shares.colluding)
        return params, shares

    def noise_shares(self, parties: int) -> NoiseShares:
        """Threshold in parties (a majority; at least 2 once there are >= 2) and the collusion
        margin of gateway policy: the noise is calibrated for ``honest`` parties' shares.

        A party is a holder, however many nodes it runs (issue #12): each node adds a full
        party share, so Sybil nodes of one holder add noise but never lower anyone's share.
        """
        return noise_shares(parties, default_threshold(parties), self.svc.settings.max_colluding_nodes)

    def taking_part(self, parts: list[dict[str, Any]], who: Requester, eps: float, dlt: float
                    ) -> tuple[list[dict[str, Any]], list[Decision]]:
        """Leave out the members' nodes whose own budget cannot pay (``members_taking_part``)."""
        keep, left_out = members_taking_part(node_parts(parts), who, eps, dlt,
                                             restricted_categories=self.svc.settings.restricted_categories)
        names = {x.node for x in keep}
        return [x for x in parts if x["node"] in names], left_out

    @staticmethod
    def node_threshold(parts: list[dict[str, Any]], shares: NoiseShares) -> int:
        """The secure-aggregation threshold in nodes, so that any set of survivors that can
        unmask spans ``shares.threshold`` parties (``secagg_node_threshold``)."""
        per_party: dict[str, int] = {}
        for x in parts:
            per_party[x["holder_id"]] = per_party.get(x["holder_id"], 0) + 1
        t = secagg_node_threshold(list(per_party.values()), shares.threshold, shares.colluding)
        if t > len(parts):
            raise Conflict(f"no secure aggregation over {len(parts)} node(s) of {len(per_party)} holder(s) can "
                           f"require {shares.threshold} holders among its survivors: one holder runs too many "
                           "of the nodes")
        return t

    def dry_run(self, p: Prepared) -> dict[str, Any]:
        scales = {mm.key: 1.0 / mm.scale for mm in p.plan.measurements}
        err_t = expected_error(p.noise, level=p.level, scales=scales)
        err_n = expected_error(p.noise, level=p.level, n_shares=len(p.parts), scales=scales)
        per_output = {}
        for o in p.plan.outputs:
            if o.kind in ("count", "sum") and not (p.hidden_count and o.alias == GROUP_SIZE_ALIAS):
                key = p.plan.measurements[o.inputs[0]].key
                per_output[o.alias] = {"halfwidth_all_nodes": err_n[key], "halfwidth_threshold_nodes": err_t[key]}
            elif o.kind in ("avg", "variance", "stddev"):
                per_output[o.alias] = {"note": "depends on the (unknown) group size; see the count and sum "
                                               "half-widths it is derived from"}
        return {
            "dry_run": True, "dataset": p.dataset, "operation": p.operation,
            "plan": {"sql": p.plan.sql, "cells": len(p.plan.cells), "group_columns": list(p.plan.group_columns),
                     "measurements": [mm.key for mm in p.plan.measurements],
                     "nodes": p.node_names, "parties": len(p.parties), "threshold": p.party_threshold,
                     "secagg_threshold_nodes": p.threshold, "digest": p.plan.digest(),
                     "noise_shares": p.noise.parties_threshold,
                     "colluding_tolerated": p.party_threshold - p.noise.parties_threshold,
                     "secure_aggregation": p.secagg},
            "cost": p.cost(), "level": p.level, "expected_error": per_output,
            "decisions": [d.to_dict() for d in p.decisions],
            "allowed": all(d.allowed for d in p.decisions),
        }

    # ------------------------------------------------------------------ submission
    def outcome_for(self, p: Prepared, payload: dict[str, Any] | None = None, nodes: list[str] | None = None
                    ) -> Outcome:
        """The outcome of a planned job: what it produced, and what the gate re-checks it against."""
        who = p.principal
        cells = GroupCells(p.plan, max(x["spec"]["min_group_size"] for x in p.parts), p.hidden_count) \
            if p.operation == "query" else None
        return Outcome(operation=p.operation, payload=payload or {}, datasets=[p.dataset],
                       nodes=nodes if nodes is not None else p.node_names, spec_digest=p.spec_digest,
                       cost=p.cost(), decisions=[d.to_dict() for d in p.decisions],
                       policy=PolicyContext(Requester(who.name, who.role, who.region), p.dataset,
                                            tuple(x["node_id"] for x in p.parts)),
                       cells=cells)

    def draft(self, p: Prepared, spec: dict[str, Any]) -> JobDraft:
        """The planned job as the lifecycle takes it: its budget is held on every node at submission."""
        return JobDraft(
            kind=p.operation, principal=p.principal, parts=p.parts, decisions=p.decisions,
            spec_digest=p.spec_digest, spec=spec, cost=p.cost(), refusal=self.outcome_for(p),
            plan={"plan": p.plan.to_dict(), "noise": p.noise.to_dict(), "threshold": p.threshold,
                  "neighbours": p.neighbours, "secagg": p.secagg, "parties_needed": p.parties_needed,
                  "hidden_count": p.hidden_count, "nodes": [x["node_id"] for x in p.parts], "level": p.level},
            holds=[ReservationRequest(x["ledger_id"], p.noise.epsilon, p.noise.delta) for x in p.parts],
            analyst_hold=(p.noise.epsilon, p.noise.delta))

    async def submit(self, who: PrincipalView, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """Handle POST /v1/queries. Returns (HTTP status, body)."""
        from xdp_compute.gateway.exchange import ExchangeService
        from xdp_compute.gateway.join import JoinService, is_join

        def plan() -> Prepared | None:
            """The join check, the plan and the subscription check in one trip off the event loop
            (issue #13: each trip is a thread hand-off, up to milliseconds on a busy machine)."""
            if isinstance(body.get("sql"), str) and is_join(body["sql"]):
                return None
            with self.svc.metrics.phase("he_query" if body.get("public_key") else "query", "plan"):
                p = self.prepare(who, body["sql"], body["epsilon"], body.get("delta"), body.get("level", 0.95),
                                 "query", body.get("public_key"))
            if not body.get("subscription") and not body.get("dry_run"):  # data exchange (issue #17)
                ExchangeService(self.svc).require_subscription(p.dataset)
            return p

        p = await asyncio.to_thread(plan)
        if p is None:
            # Two datasets: the private join (issue #16, docs/private-joins.md); query.joins checks it.
            return await JoinService(self.svc).submit(who, body)
        if body.get("subscription"):  # data exchange (issue #17): checked, held and metered there
            return await ExchangeService(self.svc).submit_query(self, who, p, body)
        if body.get("dry_run"):
            return 200, self.dry_run(p)
        return await self.submit_prepared(who, p, body.get("idempotency_key"),
                                          {"sql": body["sql"], "epsilon": p.epsilon, "delta": p.delta,
                                           "public_key": p.public_key})

    async def submit_prepared(self, who: PrincipalView, p: Prepared, key: str | None, spec: dict[str, Any],
                              run: Callable[[str, Prepared], Awaitable[dict[str, Any]]] | None = None
                              ) -> tuple[int, dict[str, Any]]:
        """Through the one lifecycle; the answer is awaited (200) unless holders must approve (202).
        ``run`` computes the job (default: this SQL job's ``run``)."""

        async def start(job_id: str) -> tuple[int, dict[str, Any]]:
            return 200, await (run or self.run)(job_id, p)

        return await self.jobs.submit(self.draft(p, spec), key, start, self.jobs.await_existing)

    async def run(self, job_id: str, p: Prepared, background: bool = False) -> dict[str, Any]:
        """Compute over the nodes and pass the result through the ReleaseGate.

        ``background``: nobody waits on the HTTP request (approved jobs); an encrypted answer is
        then held in memory until its owner fetches it once.
        """
        await asyncio.to_thread(self.jobs.start, job_id)
        refusal = self.outcome_for(p)
        if p.public_key is not None:
            return await self.jobs.guarded(job_id, p.principal.name, refusal,
                                           self.run_encrypted(job_id, p, background))
        return await self.jobs.guarded(job_id, p.principal.name, refusal, self.run_plain(job_id, p))

    async def run_plain(self, job_id: str, p: Prepared) -> dict[str, Any]:
        started = time.time()
        sigmas = sigmas_sent(p.noise)
        ids = [x["node_id"] for x in p.parts]
        names = {x["node_id"]: x["node"] for x in p.parts}
        plan = p.plan.to_dict()
        basis, who = noise_basis(p), p.principal.name
        try:
            res = await secure_sum(self.svc.hub, job_id, f"{job_id}:sum", ids, p.plan.vector_length,
                                   lambda node, session: QueryBegin(plan=plan, sigma_node2=sigmas, secagg=session,
                                                                    noise_basis=basis, principal=who),
                                   threshold=p.threshold, neighbours=p.neighbours,
                                   round_timeout=self.svc.settings.round_timeout_seconds,
                                   begin_timeout=self.svc.settings.round_timeout_seconds * 6,
                                   late_input=True)  # nodes read their rows while the session sets up
        except ProtocolAborted as e:
            raise await self.aborted(job_id, p, e) from None
        survivors = [names[u] for u in res.survivors]
        payload = self.finalize(p, res.total, len(res.survivors))
        # Which node dropped out, and in which phase, is logged for the operator only: a phase
        # or an error could depend on a node's data, and the analyst sees only who contributed.
        payload["nodes"] = survivors
        self.svc.metrics.dropped(res.dropped.values())
        if res.dropped:
            log.info("job %s: %d node(s) dropped out: %s", job_id, len(res.dropped),
                     {names[u]: ph for u, ph in res.dropped.items()})
        return await self.jobs.release(job_id, p.principal.name, self.outcome_for(p, payload, survivors), started)

    async def run_encrypted(self, job_id: str, p: Prepared, background: bool = False) -> dict[str, Any]:
        """Paillier encrypted delivery with no single-partial exposure (issue #11).

        Each node masks its noisy partial with secure-aggregation masks and sends it encrypted
        under the analyst's key (a sealed session, ``gateway.encrypted_sum``); the gateway
        multiplies the survivors' ciphertexts; the ReleaseGate removes the masks' total
        homomorphically and blanks small cells (``SealedCells``). What each side learns:

        - gateway: who survived; ciphertexts, each of a uniformly masked vector; the masks; and
          each cell's noisy COUNT(*) — the plan's count measurement, a DP release the job's
          noise plan charges. The analyst decrypts the very same values in those slots, so one
          release serves both and is charged once. Never a node's partial, nor any other total.
        - analyst: the survivors' noisy totals (as on the plain path) in every cell that is not
          suppressed, and which cells were (a function of the noisy counts); suppressed cells
          decrypt to uniform ring values. One node's ciphertext, even forwarded by the gateway,
          decrypts to uniform words (its self mask), and with everything the gateway holds it is
          still hidden by the pairwise masks shared with honest peers (Bonawitz et al. 2017).
        """
        assert p.public_key is not None
        started = time.time()
        public = PaillierPublic.from_dict(p.public_key)
        scheme = ring_scheme(public.bits)
        sigmas = sigmas_sent(p.noise)
        plan = p.plan.to_dict()
        ids = [x["node_id"] for x in p.parts]
        names = {x["node_id"]: x["node"] for x in p.parts}
        sealed = SealedSession(public, scheme, revealed_slots(p.plan), MAX_CIPHERTEXT_BYTES)
        basis, who = noise_basis(p), p.principal.name
        try:
            res = await encrypted_secure_sum(
                self.svc.hub, job_id, f"{job_id}:sealed", ids, p.plan.vector_length, sealed,
                lambda node, session: HeQueryBegin(plan=plan, sigma_node2=sigmas, public_key=public.to_dict(),
                                                   scheme=scheme.to_dict(), secagg=session,
                                                   noise_basis=basis, principal=who),
                threshold=p.threshold, neighbours=p.neighbours,
                round_timeout=self.svc.settings.round_timeout_seconds,
                begin_timeout=self.svc.settings.round_timeout_seconds * 6)
        except ProtocolAborted as e:
            raise await self.aborted(job_id, p, e) from None
        survivors = [names[u] for u in res.survivors]
        self.svc.metrics.dropped(res.dropped.values())
        if res.dropped:
            log.info("job %s: %d node(s) dropped out: %s", job_id, len(res.dropped),
                     {names[u]: ph for u, ph in res.dropped.items()})
        min_group = max(x["spec"]["min_group_size"] for x in p.parts)
        # The ciphertext and the suppressed cells are added by the gate (SealedCells).
        payload = {"encrypted": True, "key_fingerprint": public.fingerprint,
                   "plan": p.plan.to_dict(), "noise": p.noise.to_dict(), "n_shares": len(res.survivors),
                   "level": p.level, "hidden_count": p.hidden_count, "dataset": p.dataset, "nodes": survivors,
                   "min_group_size": min_group, "epsilon": p.noise.epsilon, "delta": p.noise.delta,
                   "cells": p.plan.vector_length}
        outcome = self.outcome_for(p, payload, survivors)
        outcome.sealed = SealedCells(p.plan, min_group, tuple(from_ring(int(x)) for x in res.revealed), public,
                                     res.sealed_sum, res.mask_total)
        return self.jobs.hand_over(job_id, await self.jobs.release(job_id, p.principal.name, outcome, started),
                                   background)

    async def aborted(self, job_id: str, p: Prepared, e: ProtocolAborted) -> ProtocolAborted:
        """Log an aborted secure aggregation (nothing was unmasked) and return the error to raise.

        Refunded only when its cause cannot depend on the data: nodes that went silent. A node
        that answered its data step with an error may have failed on its rows, so that abort is
        charged and its reason names nobody (issue #11: a refund would be a noise-free bit)."""
        data_errors = bool(getattr(e, "node_errors", None))
        reason = "secure aggregation aborted" if data_errors else f"secure aggregation aborted: {e.detail}"
        # Charged means committed: the hold becomes spent (without ``charge`` it stayed reserved,
        # neither spent nor returned).
        await asyncio.to_thread(self.gate.refuse, job_id, p.principal.name, self.outcome_for(p), FAILED,
                                reason, refund=not data_errors, charge=data_errors)
        return ProtocolAborted(reason)

    def finalize(self, p: Prepared, total: np.ndarray, n_shares: int) -> dict[str, Any]:
        """Noisy totals -> rows keyed by alias, with intervals from the known noise."""
        return finalize_rows(p.plan, p.noise, [from_ring(int(x)) for x in total], n_shares, p.level,
                             p.hidden_count, p.dataset)


def prepared_from_job(qs: QueryService, job: m.Job) -> Prepared:
    """Rebuild what was decided at submission from the stored job (used after approval)."""
    from xdp_compute.privacy import NoisePlan

    with qs.store.read() as s:
        pr = s.get(m.Principal, job.principal_id)
    assert pr is not None
    who = PrincipalView(pr.id, pr.name, pr.role, pr.region)
    stored = json.loads(job.plan_json)
    plan = QueryPlan.from_dict(stored["plan"])
    parts = [x for x in qs.lookup(plan.dataset) if x["node_id"] in set(stored["nodes"])]
    spec = json.loads(job.spec_json)
    decisions = [Decision(**d) for d in stored["decisions"]]
    return Prepared(who, plan.dataset, parts, plan, stored["hidden_count"], NoisePlan.from_dict(stored["noise"]),
                    stored["threshold"], decisions, spec["epsilon"], spec["delta"], stored["level"],
                    spec["digest"], job.kind, spec.get("public_key"), neighbours=stored.get("neighbours"),
                    secagg=stored.get("secagg"), parties_needed=stored.get("parties_needed"))
