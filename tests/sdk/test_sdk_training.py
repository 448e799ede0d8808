"""The SDK's TrainingJob hands out a Predictor for the released model; print_card states what the card holds."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest

from xdp_compute import errors as E
from xdp_compute.sdk.training import TrainingJob, print_card

COLUMNS = [{"name": "age", "type": "int", "min": 0, "max": 100, "uses": ["aggregate"]},
           {"name": "sick", "type": "bool", "uses": ["aggregate"]}]
SPEC = {"dataset": "d", "model": "logreg", "features": ["age"], "label": "sick"}


class FakeClient:
    def __init__(self, job: dict[str, Any]) -> None:
        self.answer = job

    def job(self, job_id: str) -> dict[str, Any]:
        return self.answer


def released(columns: Any = COLUMNS) -> dict[str, Any]:
    card = {"architecture": {"model": "logreg", "layers": []}, "dataset": "d", "nodes": ["a", "b"],
            "rounds_done": 3, "rounds_planned": 3, "rounds_missing_nodes": [], "epsilon_per_node": {"a": 1.0},
            "delta": 1e-6, "features": ["age"], "label": "sick", "classes": ["false", "true"], "n_nodes": 2,
            "parties": 1, "sampling_rate": {"a": 0.064, "b": 0.064},
            "metrics": {"accuracy": 1.0, "accuracy_interval": [0.91, 1.0], "loss": 0.0,
                        "loss_interval": [0.0, 0.2], "confidence_level": 0.95}}
    return {"status": "released", "result": {"card": card, "metrics": card["metrics"],
                                             "model": {"spec": SPEC, "n_features": 1, "n_classes": 2,
                                                       "params": [4.0, -2.0], "columns": columns}}}


def test_predictor_of_a_released_job_takes_raw_values() -> None:
    job = TrainingJob(FakeClient(released()), "j1")
    model = job.predictor()
    assert model.feature_names == ["age"] and model.label == "sick" and model.classes == ["false", "true"]
    p = model.predict_proba([{"age": 100}, {"age": 0}, {"age": 250}])[:, 1]
    # age 100 -> 1.0 (declared max) -> sigmoid(4 - 2); 250 is clipped to the max as training clipped it
    np.testing.assert_allclose(p, [1 / (1 + np.exp(-2.0)), 1 / (1 + np.exp(2.0)), 1 / (1 + np.exp(-2.0))])
    assert list(model.predict([{"age": 90}, {"age": 10}])) == ["true", "false"]


def test_a_job_not_released_or_released_without_columns_says_why() -> None:
    with pytest.raises(E.Conflict, match="not released"):
        TrainingJob(FakeClient({"status": "running"}), "j2").predictor()
    with pytest.raises(ValueError, match="carries no declared columns"):
        TrainingJob(FakeClient(released(columns=None)), "j3").predictor()


def test_print_card_states_features_parties_sampling_and_clamped_metrics_with_intervals() -> None:
    out = io.StringIO()
    print_card(released()["result"]["card"], out=out)
    text = out.getvalue()
    assert "features: age; label 'sick' (classes false, true)" in text
    assert "nodes (2, 1 parties): a, b" in text and "sampling rate per node: a=0.064, b=0.064" in text
    assert "accuracy 1.0000 [0.9100, 1.0000], loss 0.0000 [0.0000, 0.2000]" in text
    assert "95% intervals" in text
