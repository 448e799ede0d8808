"""Scoring a linear model the analyst keeps to itself: DP feature sums per group, weights applied in the SDK.

A linear score summed over a group is linear in the group's feature sums:
``sum_rows (w . x + b) = w . (sum_rows x) + b * n``. So the gateway releases, per group, the
noisy ``COUNT(*)`` and the noisy clipped ``SUM`` of each feature -- an ordinary federated DP query
through the same plan, secure aggregation, release gate and log as ``POST /v1/queries`` -- and
the SDK combines them with the weights locally. What is hidden from whom:

* **Holders, gateway, other analysts**: the weights and bias, entirely; they never leave the
  analyst's process.
* **The analyst**: every row, and every group total except through the DP noise. Each sum's
  sensitivity comes from the holder's declared bounds and its noise from the holder's policy and
  the plan (zCDP split across the count and the d sums), never from a number the analyst gives;
  every output slot carries independent noise.

Why not CKKS-encrypted weights (the first version): with secret weights the score's sensitivity
``sum_j |w_j| max|x_j| + |b|`` depends on numbers only the analyst knows, so its noise had to be
calibrated to the analyst's own ``score_bound`` -- an analyst declaring 1e-9 read one person's
income to four decimals -- and no node can check a bound under encryption without a
zero-knowledge range proof or an exact encrypted clamp. Its DP noise was also replicated across
slots, so slot differences cancelled it. A secret-weights mode that cannot be made DP is not
offered: requests that carry ``context``, ``weights`` or ``score_bound`` are refused with the
reason.

Cost in utility: noise on ``w . S`` has standard deviation ``sqrt(sum_j w_j^2 sigma_j^2)``
where each sum gets a 1/(d+1) share of the zCDP budget, against one measurement calibrated to
``sum_j |w_j| B_j`` before; for d features that is at most ~sqrt(d+1) times wider, and it buys
soundness for any weights (the closing note of issue #11 gives the measured figures).

**Under a scoring product** (issue #17): ``subscription`` runs the score under an approved
subscription to a ``scoring`` product on the dataset, priced per row scored. The rows counted are
the plan's public size, ``score_rows``: the sum of the ``max_rows`` each participating node
declared in its manifest, not the rows that exist or match the WHERE. A score takes no rows from
the analyst, and the true number of the holder's rows scored is data: an amount that followed it
would tell the analyst (and the statements every party reads) a count without noise, outside any
charged mechanism, breaking the observable rule of DESIGN.md. The declared size is a function of
the manifests and of which nodes are online -- public inputs -- so it is the same for any data,
and it is known before anything is reserved, so the allowance is checked and held exactly. The
noisy ``n`` released with the score is the analyst's DP estimate of the rows actually scored.
A dataset with a query, scoring or model product is scored only under a subscription (403
otherwise, ``ExchangeService.require_subscription``); dry runs stay free and unrefused.
"""

from __future__ import annotations

import asyncio
from typing import Any

from xdp_compute.errors import InvalidSpec
from xdp_compute.gateway.exchange import ExchangeService
from xdp_compute.gateway.exchange_jobs import check_job, submit_job
from xdp_compute.gateway.query_service import QueryService
from xdp_compute.gateway.store import PrincipalView
from xdp_compute.query.score import score_sql

SECRET_WEIGHT_FIELDS = ("context", "weights", "score_bound")


async def submit_score(qs: QueryService, who: PrincipalView, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """Handle POST /v1/scores: the DP feature sums of a linear score, as one federated query."""
    given = [k for k in SECRET_WEIGHT_FIELDS if body.get(k) is not None]
    if given:
        raise InvalidSpec(
            f"{', '.join(given)}: secret-weights (CKKS) scoring is not offered, because its noise would have "
            "to be calibrated to a bound only the analyst knows; send dataset, features, where and group_by "
            "only, and apply the weights to the released DP feature sums (the SDK's Client.score does this)",
            fields=given)
    sql = score_sql(body["dataset"], list(body["features"]), body.get("where"), list(body.get("group_by") or []))
    if not body.get("subscription"):
        if not body.get("dry_run"):
            # Refused (403) before anything is planned or reserved when the dataset sells jobs.
            await asyncio.to_thread(ExchangeService(qs.svc).require_subscription, body["dataset"], "scoring")
        status, out = await qs.submit(who, {"sql": sql, "epsilon": body["epsilon"], "delta": body.get("delta"),
                                            "level": body.get("level", 0.95), "dry_run": body.get("dry_run", False),
                                            "idempotency_key": body.get("idempotency_key")})
        out["score_sql"] = sql
        return status, out
    # Under a scoring product: planned, then checked and held before anything is reserved.
    with qs.svc.metrics.phase("query", "plan"):
        p = await asyncio.to_thread(qs.prepare, who, sql, body["epsilon"], body.get("delta"),
                                    body.get("level", 0.95), "query", None)
    exchange = ExchangeService(qs.svc)
    units = float(score_rows(p.parts))
    columns = score_columns(p, list(body["features"]), list(body.get("group_by") or []))
    if body.get("dry_run"):
        await asyncio.to_thread(check_job, exchange, who, body["subscription"], "scoring", p.dataset, columns, units)
        out = qs.dry_run(p)
        out.update(score_sql=sql, subscription={"id": body["subscription"], "units": units})
        return 200, out

    async def submit(hold: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        return await qs.submit_prepared(who, p, body.get("idempotency_key"),
                                        {"sql": sql, "epsilon": p.epsilon, "delta": p.delta, "public_key": None,
                                         "subscription": hold})

    status, out = await submit_job(exchange, who, "scoring", body["subscription"], p.dataset, columns, units, submit)
    out["score_sql"] = sql
    return status, out


def score_rows(parts: list[dict[str, Any]]) -> int:
    """Rows a score is metered for: the ``max_rows`` each participating node declared (public).

    Never the true or matching row count (module docstring): the amount must be the same for any
    data, since the analyst and the holders read it on receipts and statements."""
    from xdp_compute.gateway.training_service import max_rows_of

    return sum(max_rows_of(x) for x in parts)


def score_columns(p: Any, features: list[str], group_by: list[str]) -> list[str]:
    """Every column a score reads: features, GROUP BY, and the columns its WHERE names."""
    from xdp_compute.gateway.exchange import _where_columns
    from xdp_compute.query.where import predicate_to_dict

    used = set(_where_columns(predicate_to_dict(p.plan.where))) if p.plan.where is not None else set()
    return [*features, *group_by, *sorted(used)]
