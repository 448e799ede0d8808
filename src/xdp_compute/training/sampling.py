"""Poisson sampling for DP-SGD (numpy only): which rows each step uses.

Each row is included in each step independently with probability q — the sampling the RDP
analysis of the sampled Gaussian mechanism assumes (Mironov, Talwar, Zhang 2019) and Opacus's
``UniformWithReplacementSampler`` draws. Uniforms come from ``TrainingRandomness`` (ChaCha20).
"""

from __future__ import annotations

import math

import numpy as np

from xdp_compute.training.randomness import TrainingRandomness

#: Below this sample rate Poisson sampling draws geometric gaps (O(rows sampled)) instead of a
#: full Bernoulli mask per step (O(n) per step, i.e. O(n / q) per epoch).
_GAP_SAMPLING_BELOW = 1.0 / 16


def _gap_positions(total: int, sample_rate: float, rng: TrainingRandomness) -> np.ndarray:
    """Positions (0-based, sorted) of the ones of a Bernoulli(q) sequence of length ``total``.

    The distances between successive ones are i.i.d. Geometric(q), drawn by inverse CDF
    ``floor(log U / log(1 - q)) + 1`` with U uniform in (0, 1].
    """
    log1mq = math.log1p(-sample_rate)
    expected = total * sample_rate
    chunk = int(expected + 6.0 * math.sqrt(expected) + 16)
    picked: list[np.ndarray] = []
    pos = 0  # 1-based position of the last one so far
    while True:
        gaps = np.floor(np.log(rng.uniform(chunk)) / log1mq).astype(np.int64) + 1
        cum = pos + np.cumsum(gaps)
        inside = cum[cum <= total]
        picked.append(inside - 1)
        if inside.size < chunk:  # a gap crossed the end: the sample is complete
            break
        pos = int(cum[-1])
    return np.concatenate(picked) if len(picked) > 1 else picked[0]


def poisson_sample(n: int, sample_rate: float, gen: TrainingRandomness) -> np.ndarray:
    """Indices of a Poisson sample of ``range(n)``: each row independently with probability q.

    The sampling the RDP analysis of the sampled Gaussian mechanism assumes (Mironov, Talwar,
    Zhang 2019) and Opacus's ``UniformWithReplacementSampler`` draws: a Bernoulli mask for
    q >= 1/16, the equivalent geometric-gap form below. Sorted, int64.
    """
    if n <= 0:
        return np.zeros(0, dtype=np.int64)
    if sample_rate >= 1.0:
        return np.arange(n, dtype=np.int64)
    if sample_rate >= _GAP_SAMPLING_BELOW:
        return np.flatnonzero(gen.uniform(n) <= sample_rate).astype(np.int64)
    return _gap_positions(n, sample_rate, gen)


def poisson_schedule(n: int, sample_rate: float, steps: int, gen: TrainingRandomness
                     ) -> list[tuple[int, np.ndarray]]:
    """The non-empty steps of ``steps`` Poisson samples of ``range(n)``: [(step, sorted rows)].

    Same distribution as ``poisson_sample`` once per step (each (step, row) included
    independently with probability q), drawn over the whole (steps x n) grid at once, so that
    a plan for many more rows than the node holds costs O(rows sampled), not O(steps).
    """
    if n <= 0 or steps <= 0:
        return []
    if sample_rate >= _GAP_SAMPLING_BELOW:
        return [(t, idx) for t in range(steps) if (idx := poisson_sample(n, sample_rate, gen)).size > 0]
    pos = _gap_positions(n * steps, sample_rate, gen)
    step_of, row_of = pos // n, pos % n
    starts = np.flatnonzero(np.r_[True, step_of[1:] != step_of[:-1]]) if pos.size else np.zeros(0, np.int64)
    ends = np.r_[starts[1:], pos.size]
    return [(int(step_of[a]), row_of[a:b].astype(np.int64)) for a, b in zip(starts, ends, strict=True)]


__all__ = ["poisson_sample", "poisson_schedule"]
