"""The vetted model zoo: the only architectures an ML team can train (no user code on a node).

Every zoo model is an ``nn.Sequential`` of ``nn.Linear`` layers with ``nn.ReLU`` between them,
which is what lets ``local.py`` compute per-sample gradients in closed form. Outputs are raw
scores; the link lives in the loss (``loss_kind``) and in ``predict``:

- logreg  ``Linear(d, 1)``; P(label = classes[1]) = sigmoid(output); loss: binary cross-entropy.
- softmax ``Linear(d, k)``; class probabilities = softmax(output); loss: cross-entropy.
- linreg  ``Linear(d, 1)``; prediction = lo + output * (hi - lo); loss: half squared error on
  the label scaled to [0, 1] by its declared bounds.
- mlp     ``Linear(d, h1), ReLU, ..., Linear(h_last, out)``; out = k (cross-entropy) for a
  classification label (k = 2 for binary), 1 (half squared error) for a regression label.

Flat parameter vectors (what nodes send and the gateway averages) are ``float64`` in
``model.parameters()`` order: W0 (row-major, shape (out, in)), b0, W1, b1, ...
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from xdp_compute.errors import InvalidSpec
from xdp_compute.training.architecture import (
    LOSS_BCE,
    LOSS_CE,
    LOSS_MSE,
    check_dims,
    describe_model,
    init_params,
    loss_kind,
)
from xdp_compute.training.spec import TrainingSpec, layer_sizes, spec_from_any


def build_model(spec: TrainingSpec | Mapping[str, Any], n_features: int, n_classes: int) -> nn.Sequential:
    """Build the zoo model (float32, parameters as torch initialises them; use ``init_params``).

    ``n_classes`` is the number of label classes (2 for a binary label), 0 for regression.
    """
    s = spec_from_any(spec)
    check_dims(s, n_features, n_classes)
    sizes = layer_sizes(s, n_features, n_classes)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def flatten_params(model: nn.Module) -> np.ndarray:
    """All parameters as one float64 vector, in ``model.parameters()`` order."""
    with torch.no_grad():
        return np.concatenate(
            [p.detach().cpu().reshape(-1).to(torch.float64).numpy() for p in model.parameters()]
        )


def n_params(model: nn.Module) -> int:
    """Number of scalar parameters (length of the flat vector)."""
    return sum(p.numel() for p in model.parameters())


def load_flat_params(model: nn.Module, vec: np.ndarray | Sequence[float]) -> None:
    """Copy a flat vector into the model's parameters (in place); refuses a wrong length or NaN/inf."""
    flat = np.asarray(vec, dtype=np.float64).reshape(-1)
    total = n_params(model)
    if flat.shape[0] != total:
        raise InvalidSpec(
            f"parameter vector has {flat.shape[0]} values, the model needs {total}", field="params"
        )
    if not np.all(np.isfinite(flat)):
        raise InvalidSpec("parameter vector holds NaN or infinite values", field="params")
    offset = 0
    with torch.no_grad():
        for p in model.parameters():
            k = p.numel()
            p.copy_(torch.from_numpy(flat[offset : offset + k]).reshape(p.shape).to(p.dtype))
            offset += k


def per_sample_loss(output: torch.Tensor, y: torch.Tensor, kind: str) -> torch.Tensor:
    """Loss of each row (shape (B,)): BCE-with-logits, cross-entropy or half squared error."""
    if kind == LOSS_BCE:
        return F.binary_cross_entropy_with_logits(output.squeeze(-1), y.to(output.dtype), reduction="none")
    if kind == LOSS_CE:
        return F.cross_entropy(output, y.long(), reduction="none")
    if kind == LOSS_MSE:
        return 0.5 * (output.squeeze(-1) - y.to(output.dtype)) ** 2
    raise ValueError(f"unknown loss kind {kind!r}")


def model_from_state(
    spec_dict: TrainingSpec | Mapping[str, Any],
    n_features: int,
    n_classes: int,
    flat: np.ndarray | Sequence[float],
) -> nn.Sequential:
    """Rebuild a released model (SDK side) from its spec dict, dimensions and flat parameters.

    Returns the zoo ``nn.Sequential`` in eval mode; its forward gives raw scores (see module
    docstring for the link per model, or use ``predict``).
    """
    model = build_model(spec_dict, n_features, n_classes)
    load_flat_params(model, flat)
    model.eval()
    return model


def predict(
    model: nn.Module,
    X: np.ndarray,
    kind: str,
    *,
    label_lo: float | None = None,
    label_hi: float | None = None,
) -> np.ndarray:
    """Predictions for encoded inputs: P(positive) for bce, class probabilities for ce,
    values in label units for mse (if the label's declared bounds are given, else in [0, 1] scale).
    """
    with torch.no_grad():
        out = model(torch.as_tensor(np.asarray(X, dtype=np.float32)))
        if kind == LOSS_BCE:
            return torch.sigmoid(out.squeeze(-1)).numpy().astype(np.float64)
        if kind == LOSS_CE:
            return torch.softmax(out, dim=-1).numpy().astype(np.float64)
        pred = out.squeeze(-1).numpy().astype(np.float64)
        if label_lo is not None and label_hi is not None:
            pred = label_lo + pred * (label_hi - label_lo)
        return pred


__all__ = [
    "LOSS_BCE",
    "LOSS_CE",
    "LOSS_MSE",
    "build_model",
    "describe_model",
    "flatten_params",
    "init_params",
    "load_flat_params",
    "loss_kind",
    "model_from_state",
    "n_params",
    "per_sample_loss",
    "predict",
]
