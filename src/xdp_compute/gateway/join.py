"""Private joins (issue #16): plan, dry run and the driver of docs/private-joins.md's rounds.

The driver holds no secret and does no crypto but the two steps the protocol gives the gateway:
matching tags and aligning ciphertexts (Round 3, with a fresh Enc(0) under the analyst's key
where a B row has no match, and a re-randomised ciphertext where it has one). Every holder-to-
holder message is sealed between the two nodes and forwarded as it is.

Rounds (A: indicator side, B: value side; ``node/tasks/join.py`` is the other end):

0. ``join_keys`` → A, B: policy checks, charge, X25519 keys (signed with node certificates).
0b. ``join_seed`` → A, B: the peer's key; each sends its half of the dummy seed, sealed.
1. ``join_begin`` → A, B: the peer's seed half; A answers X = [a·H(x)], E = [Enc(ind)] and
   B answers Y = [b·H(y)], each sealed for the other.
2. ``join_double_blind`` → B gets (X, E), answers T_A = tag(b·X) and E'; A gets Y, answers
   T_B = tag(a·Y). Both lists carry the matched dummies and random tags to a public length.
3. Align (here): for each position of T_B, E' of the equal tag in T_A, re-randomised, else Enc(0).
4. ``join_unpermute`` → A: the aligned list; A answers it in B's row order, sealed for B.
5. ``join_aggregate`` → B: answers one ciphertext per (B-cell, measurement), with B's noise.
6. ``join_noise`` → A: adds A's noise share. Then the one ReleaseGate (case ``join_aggregate``).

What the gateway learns: the padded list lengths (public: ``max_rows`` + 2·shift) and
``#(T_A ∩ T_B)`` = intersection + D, D the matched dummies (DP, charged as ``card_epsilon``).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from dataclasses import dataclass
from typing import Any

import gmpy2

from xdp_compute.contract import Record
from xdp_compute.contract.tasks import (
    JoinAggregate,
    JoinBegin,
    JoinCiphertexts,
    JoinDoubleBlind,
    JoinKeys,
    JoinKeysReply,
    JoinNoise,
    JoinSealed,
    JoinSeed,
    JoinTags,
    JoinUnpermute,
)
from xdp_compute.crypto.paillier import (
    ObfuscatorPool,
    PaillierPublic,
    ciphertexts_from_bytes,
    ciphertexts_to_bytes,
)
from xdp_compute.crypto.psi import TAG_BYTES
from xdp_compute.domain.manifest import DatasetSpec
from xdp_compute.domain.policy import Decision, Requester, check_privacy_params, evaluate
from xdp_compute.errors import BadRequest, Conflict, InvalidQuery, ProtocolAborted, XdpError
from xdp_compute.gateway import models as m
from xdp_compute.gateway.hub import NodeDropped, NodeFailed, TaskHub
from xdp_compute.gateway.lifecycle import JobDraft, JobLifecycle
from xdp_compute.gateway.release import FAILED, Outcome, PolicyContext, digest
from xdp_compute.gateway.services import Services
from xdp_compute.gateway.store import PrincipalView, ReservationRequest, node_parts
from xdp_compute.privacy import NoisePlan
from xdp_compute.query.join_plan import JoinPlan, join_noise_plan, join_slots, plan_join
from xdp_compute.query.joins import check_join
from xdp_compute.query.parse import parse_statement

log = logging.getLogger("xdp.gateway.join")

OPERATION = "join_aggregate"
DEFAULT_DELTA_FRACTION = 0.001
MAX_JOIN_BYTES = 256 << 20
# What each party learns, as the dry run and the log show it (docs/private-joins.md).
LEARNS = {
    "gateway": "the padded list lengths (public: max_rows + 2*shift per side) and the number of matching "
               "tags = intersection size + D matched dummies (D is DP, charged as epsilon_card); never a key, "
               "a value, or which rows matched",
    "indicator_holder": "the other side's padded size (public); nothing about which of its rows matched: "
                        "everything it gets back is fresh Paillier ciphertexts under the analyst's key",
    "value_holder": "the other side's padded size (public); nothing about which of its rows matched: its "
                    "incoming ciphertexts are Enc(0) or re-randomised indicators, in its own order",
    "analyst": "the DP aggregates per cell with their 95% intervals, after decryption; nothing else",
}


def is_join(sql: str) -> bool:
    """Whether ``sql`` reads two datasets (any JOIN shape: the bad ones are refused while parsing)."""
    stmt = parse_statement(sql, allow_join=True)
    return bool(stmt.args.get("joins"))


@dataclass
class JoinPrepared:
    """Everything decided before anything is computed."""

    principal: PrincipalView
    plan: JoinPlan
    parts: dict[str, dict[str, Any]]   # "A"/"B" -> the one node part holding that side's dataset
    noise: NoisePlan
    epsilon: float                    # charged on each dataset's ledger
    delta: float
    level: float
    decisions: list[Decision]
    spec_digest: str
    public_key: dict[str, Any]

    def cost(self) -> dict[str, float]:
        return {"epsilon": self.epsilon, "delta": self.delta, "rho": self.noise.rho,
                "epsilon_card": self.plan.card_epsilon}

    @property
    def datasets(self) -> list[str]:
        return [self.plan.a.dataset, self.plan.b.dataset]

    @property
    def node_names(self) -> list[str]:
        return [self.parts["A"]["node"], self.parts["B"]["node"]]


# ---------------------------------------------------------------------------- the driver
async def private_join(hub: TaskHub, job_id: str, p: JoinPrepared, *, timeout: float) -> list[int]:
    """Run rounds 0-6; return the (B-cell x measurement) output ciphertexts with both noise shares.

    ``ProtocolAborted`` when a node fails or is silent; ``refused_at_policy`` on it says whether it
    was a round-0 refusal (public inputs only, before any row was read)."""
    plan, public = p.plan, PaillierPublic.from_dict(p.public_key)
    a, b = p.parts["A"]["node_id"], p.parts["B"]["node_id"]

    async def ask(node: str, request: Record, stage: str) -> Any:
        try:
            return await hub.ask(node, job_id, request, timeout)
        except (NodeDropped, NodeFailed, XdpError) as e:
            why = e.error if isinstance(e, NodeFailed) else e.detail if isinstance(e, XdpError) else str(e)
            log.warning("join %s: node %s failed %s: %s", job_id, node, request.KIND, why)
            err = ProtocolAborted(f"private join aborted at {stage}"
                                  + (f": a holder's node refused: {why}" if stage == "join_keys" else ""))
            err.refused_at_policy = stage == "join_keys"  # type: ignore[attr-defined]
            raise err from None

    async def both(ra: Record, rb: Record, stage: str) -> tuple[Any, Any]:
        return tuple(await asyncio.gather(ask(a, ra, stage), ask(b, rb, stage)))  # type: ignore[return-value]

    # Round 0: policy, charge, keys.
    who = p.principal.name
    ka, kb = await both(JoinKeys(plan=plan.to_dict(), side="A", peer=b, public_key=public.to_dict(), principal=who),
                        JoinKeys(plan=plan.to_dict(), side="B", peer=a, public_key=public.to_dict(), principal=who),
                        "join_keys")
    assert isinstance(ka, JoinKeysReply) and isinstance(kb, JoinKeysReply)
    # Round 0b: each gets the other's advertised key; answers its seed half, sealed.
    sa, sb = await both(JoinSeed(peer_key=kb.key, peer_signature=kb.signature, peer_certificate=kb.certificate),
                        JoinSeed(peer_key=ka.key, peer_signature=ka.signature, peer_certificate=ka.certificate),
                        "join_seed")
    # Round 1: blind (A also encrypts its indicators).
    xa, yb = await both(JoinBegin(sealed=sb.sealed), JoinBegin(sealed=sa.sealed), "join_begin")
    assert isinstance(xa, JoinSealed) and isinstance(yb, JoinSealed)
    # Round 2: double blind; B answers T_A and E', A answers T_B.
    ta, tb = await both(JoinDoubleBlind(sealed=yb.sealed), JoinDoubleBlind(sealed=xa.sealed), "join_double_blind")
    assert isinstance(ta, JoinTags) and isinstance(tb, JoinTags)
    # Round 3: align (the gateway's one step).
    aligned = await asyncio.to_thread(align, public, plan, tb.tags, tb.ciphertexts, ta.tags)
    # Round 4: A unpermutes; sealed for B.
    ua = await ask(a, JoinUnpermute(ciphertexts=ciphertexts_to_bytes(aligned, public)), "join_unpermute")
    # Round 5: B aggregates with its noise share.
    cb = await ask(b, JoinAggregate(sealed=ua.sealed), "join_aggregate")
    assert isinstance(cb, JoinCiphertexts)
    # Round 6: A adds its noise share.
    out = await ask(a, JoinNoise(ciphertexts=cb.ciphertexts), "join_noise")
    assert isinstance(out, JoinCiphertexts)
    cts = ciphertexts_from_bytes(out.ciphertexts, public, max_bytes=MAX_JOIN_BYTES)
    if len(cts) != len(plan.b.cells) * len(plan.inner.measurements):
        raise ProtocolAborted("private join aborted: the indicator side answered the wrong number of ciphertexts")
    return cts


def align(public: PaillierPublic, plan: JoinPlan, tags_a: bytes, cts_a: bytes, tags_b: bytes) -> list[int]:
    """Round 3: for each position of T_B, the E' whose tag in T_A is equal, re-randomised; a fresh
    Enc(0) = r^n mod n^2 where none is (docs/private-joins.md, Message flow step 3).

    Every list length is checked against the plan (public): max_rows + 2·shift per side."""
    n_a, n_b = plan.a.max_rows + plan.dummy_max, plan.b.max_rows + plan.dummy_max
    if len(tags_a) != n_a * TAG_BYTES or len(tags_b) != n_b * TAG_BYTES:
        raise ProtocolAborted("private join aborted: a holder sent tag lists of the wrong length")
    e = ciphertexts_from_bytes(cts_a, public, max_bytes=MAX_JOIN_BYTES)
    if len(e) != n_a:
        raise ProtocolAborted("private join aborted: the value side sent the wrong number of ciphertexts")
    index: dict[bytes, int] = {}
    for i in range(n_a):
        index.setdefault(tags_a[i * TAG_BYTES:(i + 1) * TAG_BYTES], i)
    workers = 0 if n_b < 512 else 2
    n2 = gmpy2.mpz(public.n_square)
    with ObfuscatorPool(public, target=0, workers=workers, chunk=64) as pool:
        obf = pool.take(n_b)
    out = []
    for j in range(n_b):
        i = index.get(tags_b[j * TAG_BYTES:(j + 1) * TAG_BYTES])
        # Matched: E'_i * r^n (re-randomised); unmatched: Enc(0) = r^n.
        out.append(int(gmpy2.mpz(e[i]) * obf[j] % n2) if i is not None else int(obf[j]))
    return out


# ---------------------------------------------------------------------------- the job
class JoinService:
    """The join job: plan, dry run, submission through the one lifecycle, run and release."""

    def __init__(self, svc: Services) -> None:
        self.svc, self.store, self.gate = svc, svc.store, svc.gate
        self.jobs = JobLifecycle(svc)

    def _part(self, name: str) -> dict[str, Any]:
        parts = [x for x in self.store.lookup_parts(name)]
        online = [x for x in parts if x["online"]]
        if len(parts) != 1:
            # Two partitions could hold the same key twice: one person, two matched pairs.
            raise Conflict(f"dataset {name!r} is held by {len(parts)} nodes; a private join reads a dataset held "
                           "by exactly one node (docs/private-joins.md, Duplicates)")
        if not online:
            raise Conflict(f"no node holding dataset {name!r} is online")
        return online[0]

    def prepare(self, who: PrincipalView, body: dict[str, Any]) -> JoinPrepared:
        sql = body["sql"]
        stmt = parse_statement(sql, allow_join=True)
        from xdp_compute.query.joins import join_shape

        shape = join_shape(stmt)
        pl, pr = self._part(shape.left), self._part(shape.right)
        specs = {shape.left: DatasetSpec.from_dict(pl["spec"]), shape.right: DatasetSpec.from_dict(pr["spec"])}
        check_join(stmt, specs)
        level = body.get("level", 0.95)
        if not 0.5 <= level < 1:
            raise BadRequest("level must be in [0.5, 1)")
        public_key = body.get("public_key")
        if public_key is None:
            raise BadRequest("a join's answer is delivered encrypted under the analyst's Paillier key: send "
                             "public_key (the SDK and `xdp query` do this for a JOIN)")
        public = PaillierPublic.from_dict(public_key)
        default_delta = min(pl["delta_budget"], pr["delta_budget"]) * DEFAULT_DELTA_FRACTION
        eps, dlt = check_privacy_params(body["epsilon"], body.get("delta"), default_delta)
        plan = plan_join(sql, stmt, specs[shape.left], specs[shape.right], shape.left_key, shape.right_key, eps, dlt,
                         left_alias=shape.left_alias, right_alias=shape.right_alias)
        if len(plan.a.cells) > join_slots(public.bits, plan.slot_bits):
            raise InvalidQuery(f"{len(plan.a.cells)} groups of {plan.a.dataset!r} do not fit one {public.bits}-bit "
                               f"ciphertext ({join_slots(public.bits, plan.slot_bits)} slots): group by fewer values "
                               "on that side", construct="too many cells", clause="GROUP BY")
        parts = {"A": pl if plan.a.dataset == shape.left else pr, "B": pr if plan.b.dataset == shape.right else pl}
        noise = join_noise_plan(plan)
        epsilon, delta = noise.epsilon + plan.card_epsilon, noise.delta + plan.card_delta
        requester = Requester(who.name, who.role, who.region)
        decisions: list[Decision] = []
        for side in ("A", "B"):
            # Each dataset's policy on its own: classification, analysts, regions (the cross-border
            # rule for each holder), budget, per-query cap.
            for d in evaluate(node_parts([parts[side]]), requester, epsilon, delta,
                              restricted_categories=self.svc.settings.restricted_categories, output="he_query"):
                decisions.append(Decision(d.rule, d.allowed, f"{parts[side]['spec']['name']}: {d.reason}"))
        decisions.append(Decision("private_join", True,
                                  f"ECDH double blinding + Paillier indicators (docs/private-joins.md): "
                                  f"{plan.a.dataset} is the indicator side, {plan.b.dataset} the value side; "
                                  f"each holder pads to its declared max_rows and adds {plan.dummy_max} dummy/"
                                  f"random tags; both add a full noise share"))
        decisions.append(Decision("suppression", True,
                                  "the gateway sees no count of a join (only ciphertexts): cells are protected by "
                                  "DP noise, and the SDK blanks cells whose noisy COUNT(*) is below min_group_size"))
        spec_digest = digest({"operation": OPERATION, "sql": sql, "epsilon": eps, "delta": dlt, "level": level,
                              "public_key": public_key})
        return JoinPrepared(who, plan, parts, noise, epsilon, delta, level, decisions, spec_digest, public_key)

    def dry_run(self, p: JoinPrepared) -> dict[str, Any]:
        public = PaillierPublic.from_dict(p.public_key)
        ra, rb, dm = p.plan.a.max_rows, p.plan.b.max_rows, p.plan.dummy_max
        ct, outs = public.ciphertext_bytes, len(p.plan.b.cells) * len(p.plan.inner.measurements)
        # Approximate payload bytes (sealing and framing overheads left out), from public sizes only.
        a_sends = ra * (32 + ct) + (rb + dm) * 16 + rb * ct + outs * ct
        b_sends = rb * 32 + (ra + dm) * (16 + ct) + outs * ct
        gateway_sends = ra * (32 + ct) + rb * 32 + (rb + dm) * ct + rb * ct + outs * ct
        return {
            "dry_run": True, "operation": OPERATION, "datasets": p.datasets, "dataset": " JOIN ".join(p.datasets),
            "plan": {"sql": p.plan.inner.sql, "digest": p.plan.digest(), "cells": len(p.plan.inner.cells),
                     "nodes": p.node_names, "parties": 2, "threshold": 2,
                     "group_columns": list(p.plan.inner.group_columns),
                     "measurements": [mm.key for mm in p.plan.inner.measurements],
                     "indicator_side": {"dataset": p.plan.a.dataset, "node": p.parts["A"]["node"],
                                        "groups": list(p.plan.a.groups), "padded_rows": p.plan.a.max_rows},
                     "value_side": {"dataset": p.plan.b.dataset, "node": p.parts["B"]["node"],
                                    "groups": list(p.plan.b.groups), "padded_rows": p.plan.b.max_rows},
                     "dummies": {"shift": p.plan.dummy_shift, "max": p.plan.dummy_max,
                                 "epsilon_card": p.plan.card_epsilon, "delta_card": p.plan.card_delta}},
            "protocol": ["join_keys", "join_seed", "join_begin", "join_double_blind", "align (gateway)",
                         "join_unpermute", "join_aggregate", "join_noise", "release gate: join_aggregate"],
            "transfer_bytes": {"indicator_side_sends": a_sends, "value_side_sends": b_sends,
                               "gateway_sends": gateway_sends},
            "learns": LEARNS,
            "cost": p.cost(), "charged_on": p.datasets, "level": p.level,
            "decisions": [d.to_dict() for d in p.decisions],
            "allowed": all(d.allowed for d in p.decisions),
        }

    def outcome(self, p: JoinPrepared, payload: dict[str, Any] | None = None) -> Outcome:
        who = p.principal
        req = Requester(who.name, who.role, who.region)
        return Outcome(operation=OPERATION, payload=payload or {}, datasets=p.datasets, nodes=p.node_names,
                       spec_digest=p.spec_digest, cost=p.cost(), decisions=[d.to_dict() for d in p.decisions],
                       policy=PolicyContext(req, p.plan.a.dataset, (p.parts["A"]["node_id"],)),
                       joined=(PolicyContext(req, p.plan.b.dataset, (p.parts["B"]["node_id"],)),))

    def draft(self, p: JoinPrepared, spec: dict[str, Any]) -> JobDraft:
        parts = [p.parts["A"], p.parts["B"]]
        return JobDraft(kind=OPERATION, principal=p.principal, parts=parts, decisions=p.decisions,
                        spec_digest=p.spec_digest, spec=spec, cost=p.cost(), refusal=self.outcome(p),
                        plan={"join_plan": p.plan.to_dict(), "nodes": [x["node_id"] for x in parts],
                              "level": p.level,
                              # what approvals and recovery summarise of any job (both datasets named)
                              "plan": {"dataset": " JOIN ".join(p.datasets), "sql": p.plan.sql,
                                       "group_columns": list(p.plan.inner.group_columns)}},
                        # Both datasets' ledgers are held in the one transaction of the job's creation.
                        holds=[ReservationRequest(x["ledger_id"], p.epsilon, p.delta) for x in parts],
                        analyst_hold=(p.epsilon, p.delta))

    async def submit(self, who: PrincipalView, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """POST /v1/queries with a JOIN: 200 with the encrypted answer, or 202 awaiting approvals."""
        with self.svc.metrics.phase(OPERATION, "plan"):
            p = await asyncio.to_thread(self.prepare, who, body)
        if body.get("dry_run"):
            return 200, self.dry_run(p)
        await asyncio.to_thread(self._require_no_product, p, body)
        spec = {"sql": body["sql"], "epsilon": body["epsilon"], "delta": body.get("delta"), "level": p.level,
                "public_key": p.public_key}

        async def start(job_id: str) -> tuple[int, dict[str, Any]]:
            return 200, await self.run(job_id, p)

        return await self.jobs.submit(self.draft(p, spec), body.get("idempotency_key"), start,
                                      self.jobs.await_existing)

    def _require_no_product(self, p: JoinPrepared, body: dict[str, Any]) -> None:
        """The data exchange (issue #17): a dataset whose owner sells queries on it is queried only
        under a subscription, and a subscription's allowed shapes are single-dataset queries; so a
        join reads only datasets without a query product (refused before anything is reserved)."""
        from xdp_compute.gateway.exchange import ExchangeService

        if body.get("subscription"):
            raise BadRequest("a private join does not run under a subscription: a query product covers "
                             "single-dataset queries of its allowed shapes")
        exchange = ExchangeService(self.svc)
        for name in p.datasets:
            exchange.require_subscription(name)

    async def run(self, job_id: str, p: JoinPrepared, background: bool = False) -> dict[str, Any]:
        await asyncio.to_thread(self.jobs.start, job_id)
        return await self.jobs.guarded(job_id, p.principal.name, self.outcome(p), self._run(job_id, p, background))

    async def _run(self, job_id: str, p: JoinPrepared, background: bool) -> dict[str, Any]:
        started = time.time()
        try:
            cts = await private_join(self.svc.hub, job_id, p, timeout=self.svc.settings.round_timeout_seconds * 6)
        except ProtocolAborted as e:
            # A round-0 refusal comes from the nodes' checks of public inputs, before any row was
            # read: refunded. Any later failure may depend on data: charged (the nodes charged too).
            policy = bool(getattr(e, "refused_at_policy", False))
            await asyncio.to_thread(self.gate.refuse, job_id, p.principal.name, self.outcome(p), FAILED, e.detail,
                                    refund=policy, charge=not policy)
            raise
        public = PaillierPublic.from_dict(p.public_key)
        min_group = max(p.parts["A"]["spec"]["min_group_size"], p.parts["B"]["spec"]["min_group_size"])
        payload = {"encrypted": True, "key_fingerprint": public.fingerprint, "join_plan": p.plan.to_dict(),
                   "noise": p.noise.to_dict(), "n_shares": 2, "level": p.level, "datasets": p.datasets,
                   "nodes": p.node_names, "min_group_size": min_group, "epsilon": p.epsilon, "delta": p.delta,
                   "cells": len(p.plan.inner.cells),
                   "ciphertexts": base64.b64encode(ciphertexts_to_bytes(cts, public)).decode()}
        delivery = await self.jobs.release(job_id, p.principal.name, self.outcome(p, payload), started)
        return self.jobs.hand_over(job_id, delivery, background)


def prepared_join_from_job(js: JoinService, job: m.Job) -> JoinPrepared:
    """Rebuild what was decided at submission from the stored job (after approval)."""
    import json

    with js.store.read() as s:
        pr = s.get(m.Principal, job.principal_id)
    assert pr is not None
    who = PrincipalView(pr.id, pr.name, pr.role, pr.region)
    spec = json.loads(job.spec_json)
    p = js.prepare(who, spec)
    if p.spec_digest != spec["digest"] or p.plan.to_dict() != json.loads(job.plan_json)["join_plan"]:
        raise Conflict("the datasets of this join changed since it was approved; nothing is computed")
    return p


async def run_approved_join(svc: Services, job_id: str) -> dict[str, Any]:
    """An approved join job: re-plan it (the plan must be unchanged) and run it."""
    js = JoinService(svc)
    with svc.store.read() as s:
        job = s.get(m.Job, job_id)
    assert job is not None
    p = await asyncio.to_thread(prepared_join_from_job, js, job)
    return await js.run(job_id, p, background=True)


__all__ = ["LEARNS", "OPERATION", "JoinPrepared", "JoinService", "align", "is_join", "private_join",
           "run_approved_join"]
