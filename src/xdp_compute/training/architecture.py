"""The zoo's architectures as data: losses, model-card descriptions and initial parameters.

numpy only, so the gateway can start a training job, describe its model and make the initial
global parameters without importing torch (an import of several seconds that once stalled the
gateway's event loop, see issue #9). ``zoo`` builds the torch modules from the same layer sizes.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from xdp_compute.errors import InvalidSpec
from xdp_compute.training.spec import TrainingSpec, layer_sizes, spec_from_any

LOSS_BCE, LOSS_CE, LOSS_MSE = "bce", "ce", "mse"


def loss_kind(spec: TrainingSpec | Mapping[str, Any], n_classes: int) -> str:
    """The training loss of a zoo model: "bce" (logreg), "ce" (softmax / mlp classes), "mse"."""
    s = spec_from_any(spec)
    if s.model == "logreg":
        return LOSS_BCE
    if s.model == "softmax":
        return LOSS_CE
    if s.model == "linreg":
        return LOSS_MSE
    return LOSS_CE if n_classes >= 2 else LOSS_MSE


def check_dims(s: TrainingSpec, n_features: int, n_classes: int) -> None:
    """Refuse dimensions the zoo model cannot take (InvalidSpec naming the field)."""
    if not isinstance(n_features, int) or n_features < 1:
        raise InvalidSpec(f"n_features must be a positive integer, got {n_features!r}", field="features")
    if s.model == "softmax" and n_classes < 2:
        raise InvalidSpec("softmax needs at least 2 classes", field="label")
    if s.model == "logreg" and n_classes not in (0, 2):
        raise InvalidSpec("logreg is binary: n_classes must be 2", field="label")


def init_params(
    spec: TrainingSpec | Mapping[str, Any], n_features: int, n_classes: int, *, seed: int | None = None
) -> np.ndarray:
    """Initial global parameters, made once by the gateway and sent to every node.

    Linear models (logreg, softmax, linreg) start at zero (their loss is convex, and zero is a
    deterministic, data-free start). An mlp needs symmetry breaking: each layer is drawn
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)) like torch's default ``nn.Linear`` init, from a generator
    seeded from ``os.urandom`` unless ``seed`` is given (tests). No data is involved. The order is
    the zoo's flat order: per linear layer the weight (out x in, row-major), then the bias.
    """
    s = spec_from_any(spec)
    check_dims(s, n_features, n_classes)
    sizes = layer_sizes(s, n_features, n_classes)
    total = sum((a + 1) * b for a, b in itertools.pairwise(sizes))
    if s.model != "mlp":
        return np.zeros(total, dtype=np.float64)
    rng = np.random.default_rng(seed if seed is not None else int.from_bytes(os.urandom(16), "little"))
    parts: list[np.ndarray] = []
    for fan_in, fan_out in itertools.pairwise(sizes):
        bound = 1.0 / math.sqrt(fan_in)
        parts.append(rng.uniform(-bound, bound, fan_out * fan_in))  # weight, (out, in) row-major
        parts.append(rng.uniform(-bound, bound, fan_out))           # bias
    return np.concatenate(parts).astype(np.float64)


def describe_model(
    spec: TrainingSpec | Mapping[str, Any],
    n_features: int,
    n_classes: int,
    *,
    feature_names: Sequence[str] | None = None,
    label: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Architecture description for the model card (JSON-friendly).

    Holds everything ``model_from_state`` and a reader need: model name, layer list, output
    link, loss, parameter count and order, input encoding, and the label's classes/bounds
    (pass ``LabelInfo.to_dict()`` as ``label``).
    """
    s = spec_from_any(spec)
    sizes = layer_sizes(s, n_features, n_classes)
    layers: list[dict[str, Any]] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append({"type": "linear", "in": a, "out": b})
        if i < len(sizes) - 2:
            layers.append({"type": "relu"})
    kind = loss_kind(s, n_classes)
    link = {
        LOSS_BCE: "sigmoid",
        LOSS_CE: "softmax",
        LOSS_MSE: "identity (label scaled to [0,1] by declared bounds)",
    }
    return {
        "model": s.model,
        "n_features": n_features,
        "n_classes": n_classes,
        "layers": layers,
        "output": link[kind],
        "loss": {LOSS_BCE: "binary cross-entropy", LOSS_CE: "cross-entropy", LOSS_MSE: "half squared error"}[
            kind
        ],
        "n_params": sum((a + 1) * b for a, b in itertools.pairwise(sizes)),
        "param_order": "per linear layer: weight (out x in, row-major) then bias",
        "input_encoding": "numeric scaled to [0,1] by declared min/max and clipped; bool 0/1; "
        "category one-hot over declared values (unknown -> zeros); missing numeric/bool -> 0.5",
        "feature_names": list(feature_names) if feature_names is not None else None,
        "label": dict(label) if label is not None else None,
    }


__all__ = ["LOSS_BCE", "LOSS_CE", "LOSS_MSE", "check_dims", "describe_model", "init_params", "loss_kind"]
