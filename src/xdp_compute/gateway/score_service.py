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
"""

from __future__ import annotations

from typing import Any

from xdp_compute.errors import InvalidSpec
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
    status, out = await qs.submit(who, {"sql": sql, "epsilon": body["epsilon"], "delta": body.get("delta"),
                                        "level": body.get("level", 0.95), "dry_run": body.get("dry_run", False),
                                        "idempotency_key": body.get("idempotency_key")})
    out["score_sql"] = sql
    return status, out
