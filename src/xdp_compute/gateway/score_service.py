"""CKKS encrypted scoring: an analyst's secret linear model scored against holders' rows.

The analyst sends a public CKKS context (no secret key; only the Galois keys the node's
baby-step giant-step product needs) and its encrypted weights. Each node computes, per group,
the encrypted sum of w.x over its filtered rows (features clipped to declared bounds by the
node's own SQL) plus its noisy count, adds its DP noise share and flooding noise, and returns a
ciphertext; the gateway adds ciphertexts. Neither node nor gateway sees w or the answer.

Known limit: the score's sensitivity depends on the secret weights, so noise is calibrated to the
analyst-declared row bound ``score_bound`` >= sum_j |w_j| max|x_j| + |bias|, which nothing here can
verify (that would need a zero-knowledge range proof); the SDK computes it honestly.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import math
import re
import time
from typing import Any

from xdp_compute.contract import HeScorePartial, HeScoreReply
from xdp_compute.crypto import ckks
from xdp_compute.domain.manifest import DatasetSpec
from xdp_compute.domain.policy import Decision, Requester, check_privacy_params, evaluate
from xdp_compute.errors import BadRequest, Conflict, InvalidSpec, ProtocolAborted, XdpError
from xdp_compute.gateway.hub import NodeDropped, NodeFailed
from xdp_compute.gateway.query_service import DEFAULT_DELTA_FRACTION, Prepared, QueryService, ScoreInputs
from xdp_compute.gateway.release import FAILED, digest
from xdp_compute.gateway.store import PrincipalView, node_parts
from xdp_compute.privacy import Measurement, plan_noise
from xdp_compute.query import plan_query

log = logging.getLogger("xdp.gateway.score")
SCORE_FRAC_BITS = 16
MAX_FEATURES = 64
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


def _b64(value: Any, what: str, limit: int) -> bytes:
    if not isinstance(value, str):
        raise BadRequest(f"{what} must be base64 text")
    if len(value) > limit * 4 // 3 + 8:
        from xdp_compute.errors import PayloadTooLarge

        raise PayloadTooLarge(f"{what} exceeds {limit} bytes")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"{what} is not valid base64") from None


def score_sql(dataset: str, features: list[str], where: str | None, group_by: list[str]) -> str:
    for name in [dataset, *features, *group_by]:
        if not isinstance(name, str) or not _IDENT.match(name):
            raise InvalidSpec(f"{name!r} is not a column or dataset identifier")
    if not 1 <= len(features) <= MAX_FEATURES:
        raise InvalidSpec(f"give 1..{MAX_FEATURES} features")
    if len(set(features)) != len(features):
        raise InvalidSpec("features must be distinct")
    cols = ", ".join([*group_by, "COUNT(*) AS xdp_group_size", *(f"SUM({f}) AS s{i}" for i, f in enumerate(features))])
    sql = f"SELECT {cols} FROM {dataset}"
    if where:
        sql += f" WHERE {where}"
    if group_by:
        sql += " GROUP BY " + ", ".join(group_by)
    return sql


def prepare_score(qs: QueryService, who: PrincipalView, body: dict[str, Any]) -> Prepared:
    parts = [p for p in qs.lookup(body["dataset"]) if p["online"]]
    if not parts:
        raise Conflict(f"no node holding dataset {body['dataset']!r} is online")
    spec = DatasetSpec.from_dict(parts[0]["spec"])
    eps, dlt = check_privacy_params(body["epsilon"], body.get("delta"),
                                    min(p["delta_budget"] for p in parts) * DEFAULT_DELTA_FRACTION)
    level = float(body.get("level", 0.95))
    if not 0.5 <= level < 1:
        raise BadRequest("level must be in [0.5, 1)")
    bound = body["score_bound"]
    if not isinstance(bound, int | float) or not math.isfinite(bound) or not 0 < bound <= 2.0**40:
        raise InvalidSpec("score_bound must be a positive number <= 2^40 (sum_j |w_j| max|x_j| + |bias|)")
    features, group_by = list(body["features"]), list(body.get("group_by") or [])
    plan = plan_query(score_sql(spec.name, features, body.get("where"), group_by), spec)
    cells = len(plan.cells)
    context = _b64(body["context"], "context", ckks.DEFAULT_MAX_CONTEXT_BYTES)
    weights = _b64(body["weights"], "weights", ckks.DEFAULT_MAX_CIPHERTEXT_BYTES)
    # Border checks: a public context only (no secret key), allowed parameters, parsed in a sandbox.
    info = ckks.validate_public_context(context)
    header = ckks.weights_header(weights, context)
    if header["n_features"] != len(features) + 2 or header["max_groups"] < 2 * cells:
        raise InvalidSpec(f"the encrypted weights must cover {len(features) + 2} inputs (features, bias, count) "
                          f"and {2 * cells} outputs")
    # Parse the weights ciphertext too (sandboxed, on zeros): a malformed one is the analyst's 400
    # here, not a node failure later.
    import numpy as np

    ckks.score_partial(context, weights, np.zeros((2 * cells, len(features) + 2)), np.zeros(2 * cells), 0.0)
    sens = math.ceil(bound * 2**SCORE_FRAC_BITS) + 1
    n = len(parts)
    from xdp_compute.crypto.secagg import default_threshold

    t = default_threshold(n)
    noise = plan_noise(eps, dlt, [Measurement("score", sens, cells, sens), Measurement("count", 1, cells, 1)], t)
    decisions = evaluate(node_parts(parts), Requester(who.name, who.role, who.region), noise.epsilon, noise.delta,
                         restricted_categories=qs.svc.settings.restricted_categories, output="encrypted score")
    decisions.append(Decision("score_bound", True, f"noise calibrated to the analyst-declared row bound {bound:g} "
                                                   "(cannot be checked under encryption)"))
    decisions.append(Decision("he_context", True, f"public CKKS context, degree {info.poly_modulus_degree}, "
                                                  "no secret key"))
    spec_digest = digest({"operation": "he_score", "dataset": spec.name, "features": features,
                          "where": body.get("where"), "group_by": group_by, "epsilon": eps, "delta": dlt,
                          "score_bound": bound, "context": digest(context), "weights": digest(weights)})
    return Prepared(who, spec.name, parts, plan, True, noise, t, decisions, eps, dlt, level, spec_digest,
                    "he_score", None, ScoreInputs(context, weights, features, bound))


async def submit_score(qs: QueryService, who: PrincipalView, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    p = await asyncio.to_thread(prepare_score, qs, who, body)
    if body.get("dry_run"):
        return 200, {"dry_run": True, "operation": "he_score", "cost": p.cost(),
                     "decisions": [d.to_dict() for d in p.decisions],
                     "allowed": all(d.allowed for d in p.decisions), "cells": len(p.plan.cells)}
    assert p.score is not None
    return await qs.submit_prepared(who, p, body.get("idempotency_key"),
                                    {"dataset": p.dataset, "epsilon": p.epsilon, "delta": p.delta,
                                     "features": p.score.features, "score_bound": p.score.score_bound},
                                    run=lambda job_id, prepared: run_score_job(qs, job_id, prepared))


async def run_score_job(qs: QueryService, job_id: str, p: Prepared, background: bool = False) -> dict[str, Any]:
    """Start a scoring job and run it to its release; failures are charged or refunded as for queries."""
    await asyncio.to_thread(qs.jobs.start, job_id)
    return await qs.jobs.guarded(job_id, p.principal.name, qs.outcome_for(p), run_score(qs, job_id, p, background))


async def run_score(qs: QueryService, job_id: str, p: Prepared, background: bool) -> dict[str, Any]:
    started = time.time()
    score = p.score
    assert score is not None, "a scoring job carries its inputs"
    request = HeScorePartial(plan=p.plan.to_dict(), sigma_node2={mm.name: mm.sigma_node2 for mm in p.noise.measurements},
                             score_frac_bits=SCORE_FRAC_BITS, context=score.context,
                             weights=score.weights)
    names = {x["node_id"]: x["node"] for x in p.parts}
    timeout = qs.svc.settings.round_timeout_seconds * 6

    async def one(node: str) -> tuple[str, bytes | None]:
        try:
            r = await qs.svc.hub.ask(node, job_id, request, timeout)
        except NodeDropped:
            return node, None
        except NodeFailed as e:
            log.warning("node %s failed its encrypted scores: %s", names[node], e.error)
            return node, None
        except XdpError as e:
            log.warning("node %s answered outside the contract: %s", names[node], e.detail)
            return node, None
        assert isinstance(r, HeScoreReply)
        blob = r.scores
        try:  # each node's envelope on its own: one bad node is one drop-out, not a failed job
            h = ckks.scores_header(blob)
            if h.get("context") != ckks.context_fingerprint(score.context) or \
                    h.get("n_groups") != 2 * len(p.plan.cells) or h.get("n_contributions") != 1:
                raise BadRequest("score envelope does not match this job")
        except XdpError as e:
            log.warning("node %s sent bad encrypted scores: %s", names[node], e.detail)
            return node, None
        return node, blob

    got = [(n, b) for n, b in await asyncio.gather(*(one(x["node_id"]) for x in p.parts)) if b]
    if len(got) < p.threshold:
        reason = f"only {len(got)} of {len(p.parts)} nodes returned encrypted scores; {p.threshold} are needed"
        await asyncio.to_thread(qs.gate.refuse, job_id, p.principal.name, qs.outcome_for(p), FAILED, reason,
                                refund=True)
        raise ProtocolAborted(reason)
    total = await asyncio.to_thread(ckks.add_ciphertexts, score.context, [b for _, b in got])
    survivors = sorted(names[n] for n, _ in got)
    payload = {"encrypted": True, "ciphertext": base64.b64encode(total).decode(), "dataset": p.dataset,
               "cells": [list(c) for c in p.plan.cells], "group_columns": list(p.plan.group_columns),
               "noise": p.noise.to_dict(), "n_shares": len(got), "level": p.level, "nodes": survivors,
               "min_group_size": max(x["spec"]["min_group_size"] for x in p.parts),
               "score_frac_bits": SCORE_FRAC_BITS, "epsilon": p.noise.epsilon, "delta": p.noise.delta,
               "n_outputs": 2 * len(p.plan.cells)}
    outcome = qs.outcome_for(p, payload, survivors)
    return qs.jobs.hand_over(job_id, await qs.jobs.release(job_id, p.principal.name, outcome, started), background)
