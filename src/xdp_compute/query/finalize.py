"""From noisy totals to released rows: estimates, intervals from the known noise, suppression.

Pure: the gateway runs it on unmasked noisy totals (plain delivery); the SDK runs it after
decrypting (Paillier encrypted delivery), so both paths give the same QueryResult.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from xdp_compute.privacy import (
    NoisePlan,
    NoisyCell,
    avg_interval,
    cell_interval,
    stddev_interval,
    variance_interval,
)
from xdp_compute.query.plan import QueryPlan

GROUP_SIZE_ALIAS = "xdp_group_size"


def count_alias(plan: QueryPlan) -> str:
    for o in plan.outputs:
        if o.kind == "count" and o.column is None:
            return o.alias
    raise ValueError("the plan has no COUNT(*) to suppress small groups by")


def finalize_rows(plan: QueryPlan, noise: NoisePlan, totals: Sequence[int], n_shares: int, level: float,
                  hidden_count: bool, dataset: str) -> dict[str, Any]:
    """``totals`` are the signed noisy integer totals in the plan's cell x measurement order."""
    sig = {mm.name: mm.sigma_node2 for mm in noise.measurements}
    cells = [[NoisyCell(raw=int(totals[plan.index(c, j)]), sigma_node2=sig[mm.key], n_shares=n_shares,
                        scale=1.0 / mm.scale) for j, mm in enumerate(plan.measurements)]
             for c in range(len(plan.cells))]
    # Standard deviation of the noise on each COUNT/SUM output, in its real units: what a client
    # needs to propagate the noise through its own post-processing (e.g. a linear score).
    noise_sd = {o.alias: math.sqrt(float(sig[plan.measurements[o.inputs[0]].key]) * n_shares)
                / plan.measurements[o.inputs[0]].scale
                for o in plan.outputs if o.kind in ("count", "sum")
                and not (hidden_count and o.alias == GROUP_SIZE_ALIAS)}
    rows, intervals = [], []
    for c, cell in enumerate(plan.cells):
        row: dict[str, Any] = {}
        ivs: dict[str, Any] = {}
        for o in plan.outputs:
            if o.kind == "group":
                row[o.alias] = cell[plan.group_columns.index(o.column or "")]
                continue
            ins = [cells[c][i] for i in o.inputs]
            if o.kind == "count":
                iv = cell_interval(ins[0], level, lower=0)
            elif o.kind == "sum":
                iv = cell_interval(ins[0], level)
            else:
                col = plan.column(o.column or "")
                bounds = (float(col.min if col.min is not None else 0.0),
                          float(col.max if col.max is not None else 1.0))
                if o.kind == "avg":
                    iv = avg_interval(ins[1], ins[0], bounds, level)
                elif o.kind == "variance":
                    iv = variance_interval(ins[2], ins[1], ins[0], bounds, level)
                else:
                    iv = stddev_interval(ins[2], ins[1], ins[0], bounds, level)
            row[o.alias] = iv.estimate
            ivs[o.alias] = [iv.low, iv.high]
        rows.append(row)
        intervals.append(ivs)
    return {"columns": [o.alias for o in plan.outputs if not (hidden_count and o.alias == GROUP_SIZE_ALIAS)],
            "rows": rows, "intervals": intervals, "level": level, "epsilon": noise.epsilon, "delta": noise.delta,
            "dataset": dataset,
            "noise_variance": {mm.name: float(mm.sigma_node2 * n_shares) for mm in noise.measurements},
            "noise_sd": noise_sd}


def suppress_small_groups(plan: QueryPlan, payload: dict[str, Any], min_group_size: int, hidden_count: bool) -> int:
    """Blank every number of a group whose noisy COUNT(*) is below ``min_group_size``."""
    alias = count_alias(plan)
    group_aliases = {o.alias for o in plan.outputs if o.kind == "group"}
    suppressed = 0
    for row, ivs in zip(payload["rows"], payload["intervals"], strict=True):
        small = row[alias] is None or row[alias] < min_group_size
        if hidden_count:
            row.pop(alias, None)
            ivs.pop(alias, None)
        if small:
            for k in list(row):
                if k not in group_aliases:
                    row[k] = None
                    ivs[k] = None
            suppressed += 1
    payload["suppressed_groups"] = suppressed
    payload["min_group_size"] = min_group_size
    return suppressed
