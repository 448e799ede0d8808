"""Scoring a linear model that never leaves the analyst: DP feature sums in, scores computed here.

The gateway releases per group the noisy ``COUNT(*)`` and the noisy clipped ``SUM`` of each
feature (``POST /v1/scores``, an ordinary federated DP query). Here the mean score of a group is

    score = (sum_j w_j S_j) / N + b

with S_j the released feature sums and N the released count. The noise on ``sum_j w_j S_j`` is
a weighted sum of independent noises, variance ``sum_j w_j^2 sd_j^2`` (each ``sd_j`` released
with the result, from the known noise plan); the interval is the delta-method ratio interval of
:func:`xdp_compute.privacy.avg_interval`, intersected with what the declared bounds allow for
``w . x + b``. Post-processing of DP releases: it costs no privacy.
"""

from __future__ import annotations

import math
from typing import Any

from xdp_compute.errors import InvalidSpec
from xdp_compute.privacy import NoisyCell, avg_interval, cell_interval
from xdp_compute.query.score import COUNT_ALIAS, feature_alias
from xdp_compute.sdk.results import QueryResult

_FRAC = 2.0**20  # fixed-point units of the synthetic numerator cell (avg_interval takes integers)


def score_bounds(columns: dict[str, dict[str, Any]], features: list[str], weights: list[float], bias: float
                 ) -> tuple[float, float]:
    """The range of ``w . x + b`` over the declared bounds of the features."""
    lo = hi = float(bias)
    for f, w in zip(features, weights, strict=True):
        c = columns.get(f.lower())
        if c is None or c.get("type") not in ("int", "float"):
            raise InvalidSpec(f"feature {f!r} is not a declared numeric column")
        a, b = float(w) * float(c["min"]), float(w) * float(c["max"])
        lo, hi = lo + min(a, b), hi + max(a, b)
    return lo, hi


def group_score(row: dict[str, Any], noise_sd: dict[str, float], features: list[str], weights: list[float],
                bias: float, bounds: tuple[float, float], level: float) -> tuple[float, tuple[float, float]] | None:
    """One group's mean score and its interval from the released sums; None if suppressed."""
    n = row.get(COUNT_ALIAS)
    sums = [row.get(feature_alias(f)) for f in features]
    if n is None or any(s is None for s in sums):
        return None
    numerator = sum(w * float(s) for w, s in zip(weights, sums, strict=True))
    variance = sum(w * w * noise_sd[feature_alias(f)] ** 2 for w, f in zip(weights, features, strict=True))
    num_cell = NoisyCell(raw=round(numerator * _FRAC), sigma_node2=variance * _FRAC**2, n_shares=1, scale=1 / _FRAC)
    n_cell = NoisyCell(raw=round(float(n)), sigma_node2=noise_sd[COUNT_ALIAS] ** 2, n_shares=1)
    lo, hi = bounds
    iv = avg_interval(num_cell, n_cell, (lo - bias, hi - bias), level)
    return iv.estimate + bias, (iv.low + bias, iv.high + bias)


def linear_score(client: Any, dataset: str, features: list[str], weights: list[float], bias: float,
                 where: str | None, group_by: list[str] | None, epsilon: float, delta: float | None,
                 level: float, idempotency_key: str | None, wait: float,
                 subscription: str | None = None) -> QueryResult:
    """Mean of ``w . x + bias`` per group over the holders' rows; the weights stay in this process."""
    features = list(features)
    if len(weights) != len(features):
        raise InvalidSpec("give one weight per feature")
    ws = [float(w) for w in weights]
    if not all(math.isfinite(w) for w in [*ws, float(bias)]):
        raise InvalidSpec("weights and bias must be finite")
    meta = client.dataset(dataset)
    cols = {c["name"].lower(): c for c in meta["columns"]}
    bounds = score_bounds(cols, features, ws, float(bias))
    groups = list(group_by or [])
    for g in groups:
        if not (cols.get(g.lower()) or {}).get("values"):
            raise InvalidSpec(f"group column {g!r} has no declared values")
    body = {"dataset": dataset, "features": features, "where": where, "group_by": groups or None,
            "epsilon": epsilon, "delta": delta, "level": level, "idempotency_key": idempotency_key}
    if subscription is not None:  # data exchange (issue #17): under a scoring product
        body["subscription"] = subscription
    out = client._post("/v1/scores", json=body)
    if out.get("status") != "released":
        out = client._wait(out, wait)
    res = out["result"]
    noise_sd = res["noise_sd"]
    rows, intervals = [], []
    for row in res["rows"]:
        got = group_score(row, noise_sd, features, ws, float(bias), bounds, level)
        n = row.get(COUNT_ALIAS)
        out_row: dict[str, Any] = {g: row[g] for g in groups}
        out_row.update({"score": None if got is None else got[0], "n": None if got is None else n})
        rows.append(out_row)
        n_iv = None
        if got is not None:
            n_iv = cell_interval(NoisyCell(raw=round(float(n)), sigma_node2=noise_sd[COUNT_ALIAS] ** 2, n_shares=1),
                                 level, lower=0)
        intervals.append({"score": None if got is None else got[1],
                          "n": None if n_iv is None else (n_iv.low, n_iv.high)})
    return QueryResult(rows=rows, intervals=intervals, epsilon=res["epsilon"], delta=res["delta"],
                       remaining=out.get("budget_left", {}), columns=[*groups, "score", "n"], level=level,
                       job_id=out.get("job_id"), nodes=res.get("nodes", []), receipt=out.get("receipt"),
                       delivery=out)


__all__ = ["group_score", "linear_score", "score_bounds"]