"""From the aggregated (noisy) vector back to per-cell statistics (pure post-processing).

``decode_totals`` undoes the fixed-point encoding of a summed vector; ``derive_rows`` turns the
noisy totals into the SELECT list per cell. Both are post-processing of an already-noised
vector, so they cost no privacy (Dwork & Roth 2014, Prop. 2.1). Error bars are the caller's: they
depend on the noise distribution, which this module does not know.

Derivations (n = COUNT(col) total, s = SUM, q = SUM of squares, per cell):
count = n; sum = s; avg = s / n clamped to the declared [min, max];
variance = q / n - (s / n)^2 (population variance, also for VAR_SAMP) clamped to
[0, ((max - min) / 2)^2]; stddev = sqrt(variance). When the noisy n is below 1 the
ratio-based statistics are None (not enough signal to divide by).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from xdp_compute.query.plan import QueryPlan, from_ring


def decode_totals(plan: QueryPlan, vector: np.ndarray | list[int]) -> np.ndarray:
    """float64 array (cells x measurements) from an aggregated uint64 vector (two's complement, 2^-f)."""
    vals = np.asarray(vector, dtype=np.uint64)
    if vals.shape != (plan.vector_length,):
        raise ValueError(f"vector has {vals.size} entries; the plan needs {plan.vector_length}")
    signed = vals.view(np.int64).astype(np.float64).reshape(len(plan.cells), len(plan.measurements))
    scales = np.array([float(m.scale) for m in plan.measurements], dtype=np.float64)
    return signed / scales  # dividing by 2^f is exact in binary floating point


def decode_value(encoded: int, frac_bits: int) -> float:
    """One ring element back to a real number."""
    return from_ring(encoded) / float(1 << frac_bits)


def derive_rows(plan: QueryPlan, totals: np.ndarray) -> list[dict[str, Any]]:
    """One dict per cell (plan order), keyed by output alias, from decoded noisy ``totals``."""
    if totals.shape != (len(plan.cells), len(plan.measurements)):
        raise ValueError("totals must have shape (cells, measurements)")
    rows: list[dict[str, Any]] = []
    for ci, cell in enumerate(plan.cells):
        row: dict[str, Any] = {}
        for out in plan.outputs:
            if out.kind == "group":
                assert out.column is not None
                row[out.alias] = cell[plan.group_columns.index(out.column)]
                continue
            t = [float(totals[ci, i]) for i in out.inputs]
            row[out.alias] = _derive(plan, out.kind, out.column, t)
        rows.append(row)
    return rows


def _derive(plan: QueryPlan, kind: str, column: str | None, t: list[float]) -> float | None:
    if kind in ("count", "sum"):
        return t[0]
    n, s = t[0], t[1]
    if n < 1:
        return None
    assert column is not None
    spec = plan.column(column)
    lo, hi = (float(spec.min), float(spec.max)) if spec.numeric else (0.0, 1.0)  # type: ignore[arg-type]
    mean = min(max(s / n, lo), hi)
    if kind == "avg":
        return mean
    var = t[2] / n - (s / n) ** 2
    var = min(max(var, 0.0), ((hi - lo) / 2) ** 2)
    return var if kind == "variance" else math.sqrt(var)
