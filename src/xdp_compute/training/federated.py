"""Federated averaging at the gateway, in the form secure aggregation allows (numpy only).

FedAvg (McMahan et al., AISTATS 2017, Algorithm 1, server step): the new global model is the
global model plus the weighted mean of the node updates, weighted by each node's row count.
Here counts are the nodes' *noisy* counts, and the gateway must only see sums: each node sends
``(update_i * w_i, w_i)`` (``node_contribution``), secure aggregation (Bonawitz et al. 2017)
yields ``(sum_i w_i update_i, sum_i w_i)``, and ``fedavg_from_sums`` finishes. ``fedavg`` is the
same computation from individual updates (tests, simulations).

A noisy count can be <= 0 on a small node; each weight is floored at ``MIN_WEIGHT`` on the
node before use (post-processing of a DP value, so it costs no privacy) so that no node's
update is ever applied with a negative or zero weight and the total is never zero.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

import numpy as np

from xdp_compute.errors import ProtocolAborted

MIN_WEIGHT = 1.0


def clamp_weight(noisy_count: float, min_weight: float = MIN_WEIGHT) -> float:
    """A node's FedAvg weight from its noisy row count: finite and at least ``min_weight``."""
    w = float(noisy_count)
    if not math.isfinite(w):
        raise ValueError(f"noisy count must be finite, got {noisy_count!r}")
    return max(w, min_weight)


def node_contribution(
    update: np.ndarray, noisy_count: float, *, min_weight: float = MIN_WEIGHT
) -> tuple[np.ndarray, float]:
    """What a node feeds secure aggregation: (update * w, w) with w = clamped noisy count."""
    u = np.asarray(update, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(u)):
        raise ValueError("update holds NaN or infinite values")
    w = clamp_weight(noisy_count, min_weight)
    return u * w, w


def fedavg_from_sums(
    global_flat: np.ndarray, weighted_update_sum: np.ndarray, total_weight: float
) -> np.ndarray:
    """New global parameters from secure-aggregated sums: global + sum(w_i u_i) / sum(w_i).

    Raises ``ProtocolAborted`` if the total weight is not a positive finite number (no usable
    node contributed) or shapes disagree.
    """
    g = np.asarray(global_flat, dtype=np.float64).reshape(-1)
    s = np.asarray(weighted_update_sum, dtype=np.float64).reshape(-1)
    if s.shape != g.shape:
        raise ProtocolAborted(f"aggregated update has {s.shape[0]} values, the model has {g.shape[0]}")
    tw = float(total_weight)
    if not math.isfinite(tw) or tw <= 0:
        raise ProtocolAborted(f"total FedAvg weight must be positive, got {total_weight!r}")
    if not np.all(np.isfinite(s)):
        raise ProtocolAborted("aggregated update holds NaN or infinite values")
    return g + s / tw


def fedavg(global_flat: np.ndarray, updates: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """FedAvg from individual updates: global + sum(w_i u_i) / sum(w_i), weights clamped as above.

    Equal to ``fedavg_from_sums`` over the nodes' ``node_contribution``s.
    """
    if len(updates) != len(weights) or not updates:
        raise ValueError("need one weight per update and at least one update")
    total = np.zeros_like(np.asarray(global_flat, dtype=np.float64).reshape(-1))
    wsum = 0.0
    for u, w in zip(updates, weights, strict=True):
        wu, cw = node_contribution(u, w)
        if wu.shape != total.shape:
            raise ValueError(f"update has {wu.shape[0]} values, the model has {total.shape[0]}")
        total += wu
        wsum += cw
    return fedavg_from_sums(global_flat, total, wsum)


def holdout_split(X: np.ndarray, y: np.ndarray, fraction: float, key: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(train_idx, holdout_idx), each sorted: row i is held out iff PRF_key(row i's content) < fraction.

    Each row's side is a function of that row alone — keyed BLAKE2b (RFC 7693 keyed mode, a PRF)
    of its encoded features and label, read as a uniform number in [0, 1) — never of its
    position or of how many rows there are, so adding or removing one row moves no other row.
    That is what makes the accounting sound: for a row added to or removed from the data, either
    it is a training row (only DP-SGD and the count release see it) or a held-out row (only the
    noisy evaluations see it), so the job's privacy loss for that row is at most the larger of
    the two sides' losses (parallel composition, McSherry 2009, per row and adaptively: the
    evaluations of a model are post-processing of the training side for a training row).
    ``key`` may be public (the split is not secret; it only has to be row-local).
    """
    if not (isinstance(fraction, int | float) and 0.0 <= float(fraction) < 1.0):
        raise ValueError(f"fraction must be in [0, 1), got {fraction!r}")
    Xa = np.ascontiguousarray(np.asarray(X, dtype=np.float32))
    ya = np.ascontiguousarray(np.asarray(y, dtype=np.float64))
    if Xa.ndim != 2 or ya.shape != (Xa.shape[0],):
        raise ValueError("X must be (n, d) and y (n,)")
    bound = int(float(fraction) * 2**64)
    held = np.fromiter(
        (int.from_bytes(hashlib.blake2b(Xa[i].tobytes() + ya[i].tobytes(), key=key, digest_size=8).digest(),
                        "little") < bound for i in range(Xa.shape[0])),
        dtype=bool, count=Xa.shape[0])
    return np.flatnonzero(~held), np.flatnonzero(held)


__all__ = ["MIN_WEIGHT", "clamp_weight", "fedavg", "fedavg_from_sums", "holdout_split", "node_contribution"]
