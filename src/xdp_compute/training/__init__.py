"""Differentially private federated training: spec, features, zoo, local DP-SGD round, FedAvg.

``spec``, ``features``, ``architecture`` and ``federated`` need only numpy, so the gateway can validate specs and
average updates without torch. ``zoo`` and ``local`` need torch and opacus (the ``train`` extra);
their names are imported lazily on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from xdp_compute.training.features import EncodedData, encode, feature_names, label_of
from xdp_compute.training.federated import (
    clamp_weight,
    fedavg,
    fedavg_from_sums,
    holdout_split,
    node_contribution,
)
from xdp_compute.training.spec import MODELS, LabelInfo, TrainingSpec, count_params, label_info

_LAZY = {
    "build_model": "zoo",
    "describe_model": "architecture",
    "flatten_params": "zoo",
    "init_params": "architecture",
    "load_flat_params": "zoo",
    "loss_kind": "architecture",
    "model_from_state": "zoo",
    "predict": "zoo",
    "EvalSums": "local",
    "LocalTrainer": "local",
    "NodePrivacyState": "local",
    "PrivacyPlan": "local",
    "RoundResult": "local",
    "epsilon_for_history": "local",
    "plan_privacy": "local",
    "TrainingRandomness": "randomness",
    "InvalidRow": "predictor",
    "Predictor": "predictor",
    "released_metrics": "metrics",
}


def __getattr__(name: str) -> Any:
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{mod}"), name)


__all__ = [
    "MODELS",
    "EncodedData",
    "EvalSums",
    "InvalidRow",
    "LabelInfo",
    "LocalTrainer",
    "NodePrivacyState",
    "Predictor",
    "PrivacyPlan",
    "RoundResult",
    "TrainingRandomness",
    "TrainingSpec",
    "build_model",
    "clamp_weight",
    "count_params",
    "describe_model",
    "encode",
    "epsilon_for_history",
    "feature_names",
    "fedavg",
    "fedavg_from_sums",
    "flatten_params",
    "holdout_split",
    "init_params",
    "label_info",
    "label_of",
    "load_flat_params",
    "loss_kind",
    "model_from_state",
    "node_contribution",
    "plan_privacy",
    "predict",
    "released_metrics",
]
