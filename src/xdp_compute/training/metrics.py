"""The held-out metrics released with a trained model: clamped to their valid range, with intervals.

Each node evaluates the released model on its own held-out rows and adds discrete Gaussian noise
to three sums before they leave it (``node/tasks/train.py``, ``noisy_eval``): the row ``count``,
``loss_sum`` (per-row loss clipped to [0, ``EVAL_LOSS_BOUND``]) and ``second`` (rows classified
correctly, or the squared error of a prediction and a label both scaled to [0, 1]). The sums are
in units of 2**-8 except the count; each node reports the per-unit noise variance it used
(``sigma_node2``), a function of the public plan only.

A ratio of noisy sums can fall outside what the metric can be (``accuracy 1.29``, ``loss -8.0``).
Clamping the estimate and its interval to the metric's valid range is post-processing of released
values: it costs no privacy, and clamping to a set that holds the true value never lowers the
interval's coverage (``privacy/intervals.py``). Intervals are 95% delta-method intervals of
``sum / count`` from ``avg_interval``, pooled over nodes by adding the (independent) noise
variances of their sums.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from xdp_compute.privacy.intervals import Interval, NoisyCell, avg_interval

#: Fixed-point fraction bits of the noisy loss and second sums (as ``noisy_eval`` encodes them).
EVAL_FRAC_BITS = 8
#: Per-row evaluation loss bound; the same constant as ``training.local.EVAL_LOSS_BOUND`` (kept
#: here so the gateway need not import torch to read it; a test checks they agree).
EVAL_LOSS_BOUND = 10.0
LEVEL = 0.95


def _cell(value: float, variance_units: float | None, scale: float) -> NoisyCell:
    # One pooled "share": the summed noise variance of the nodes, in integer units.
    return NoisyCell(raw=round(value / scale), sigma_node2=max(float(variance_units or 0.0), 0.0), n_shares=1,
                     scale=scale)


def _interval(total: float, var_total: float | None, count: float, var_count: float | None,
              bounds: tuple[float, float], scale: float) -> Interval | None:
    if var_total is None or var_count is None:
        return None
    return avg_interval(_cell(total, var_total, scale), _cell(count, var_count, 1.0), bounds, LEVEL)


def _clamp(x: float | None, lo: float, hi: float) -> float | None:
    return None if x is None or not math.isfinite(x) else min(max(x, lo), hi)


def _metric(total: float, var_total: float | None, count: float, var_count: float | None,
            bounds: tuple[float, float], scale: float) -> tuple[float | None, list[float] | None]:
    """The clamped ratio ``total / count`` and its clamped interval (None when count <= 0)."""
    if count <= 0:
        return None, None
    est = _clamp(total / count, *bounds)
    iv = _interval(total, var_total, count, var_count, bounds, scale)
    return est, (None if iv is None else [iv.low, iv.high])


def released_metrics(evals: Mapping[str, Mapping[str, Any] | None], label_span: float | None = None
                     ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Per node and pooled metrics from the nodes' noisy held-out sums (``noisy_eval`` replies).

    ``evals`` maps a node name to its reply's metrics (``{}`` or None when it sent none);
    ``label_span`` is a regression label's declared ``max - min`` (for the MSE in label units).
    Returns ``(per_node, overall)``: ``accuracy`` in [0, 1] (classification), ``loss`` in
    [0, EVAL_LOSS_BOUND], ``mse`` in [0, span**2] (regression), each with ``<name>_interval``
    [low, high] at 95%, clamped likewise; ``holdout_rows_noisy`` clamped to >= 0.
    """
    scale = 2.0**-EVAL_FRAC_BITS
    per_node: dict[str, Any] = {}
    pooled = {"count": 0.0, "loss": 0.0, "second": 0.0}
    pooled_var: dict[str, float | None] = {"count": 0.0, "loss": 0.0, "second": 0.0}
    kinds = set()
    for node, mt in evals.items():
        mt = mt or {}
        c = float(mt.get("count") or 0)
        sig = mt.get("sigma_node2") or {}
        out: dict[str, Any] = {"holdout_rows_noisy": max(c, 0.0) if mt else 0, "accuracy": None, "loss": None}
        if mt:
            kinds.add(mt.get("kind"))
            for key, name in (("count", "count"), ("loss_sum", "loss"), ("second", "second")):
                pooled[name] += float(mt.get(key) or 0.0)
                v = sig.get(name)
                pooled_var[name] = None if v is None or pooled_var[name] is None else pooled_var[name] + float(v)
            out.update(_metrics_of(c, float(mt.get("loss_sum") or 0.0), float(mt.get("second") or 0.0),
                                   sig.get("count"), sig.get("loss"), sig.get("second"), mt.get("kind"),
                                   label_span, scale))
        per_node[node] = out
    overall: dict[str, Any] = {"accuracy": None, "loss": None}
    if len(kinds) == 1:
        overall.update(_metrics_of(pooled["count"], pooled["loss"], pooled["second"], pooled_var["count"],
                                   pooled_var["loss"], pooled_var["second"], next(iter(kinds)), label_span, scale))
    overall["confidence_level"] = LEVEL
    return per_node, overall


def _metrics_of(c: float, loss_sum: float, second: float, var_c: Any, var_loss: Any, var_second: Any,
                kind: Any, label_span: float | None, scale: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    out["loss"], out["loss_interval"] = _metric(loss_sum, var_loss, c, var_c, (0.0, EVAL_LOSS_BOUND), scale)
    if kind == "correct":
        out["accuracy"], out["accuracy_interval"] = _metric(second, var_second, c, var_c, (0.0, 1.0), scale)
    elif kind == "sq_err":
        mse, iv = _metric(second, var_second, c, var_c, (0.0, 1.0), scale)
        k = (label_span or 1.0) ** 2  # the error was taken on the label scaled to [0, 1]
        out["mse"] = None if mse is None else mse * k
        out["mse_interval"] = None if iv is None else [iv[0] * k, iv[1] * k]
    return out


__all__ = ["EVAL_FRAC_BITS", "EVAL_LOSS_BOUND", "LEVEL", "released_metrics"]
