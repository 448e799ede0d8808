"""Released models on raw values: the Predictor's encoding, refusals, outputs, ONNX export, metrics."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from xdp_compute.training.architecture import init_params, loss_kind
from xdp_compute.training.features import encode_features
from xdp_compute.training.metrics import EVAL_LOSS_BOUND, released_metrics
from xdp_compute.training.predictor import InvalidRow, Predictor
from xdp_compute.training.spec import TrainingSpec, column_dicts, encoded_width

COLUMNS = [
    {"name": "age", "type": "int", "min": 0, "max": 110, "uses": ["aggregate"]},
    {"name": "cost", "type": "float", "min": 100, "max": 5000, "uses": ["aggregate"]},
    {"name": "clinic", "type": "category", "values": ["north", "south", "east"], "uses": ["group"]},
    {"name": "smoker", "type": "bool", "uses": ["aggregate"]},
    {"name": "outcome", "type": "category", "values": ["good", "fair", "poor"], "uses": ["aggregate"]},
    {"name": "readmitted", "type": "category", "values": ["no", "yes"], "uses": ["aggregate"]},
    {"name": "stay", "type": "float", "min": 0, "max": 60, "uses": ["aggregate"]},
]
FEATURES = ["age", "cost", "clinic", "smoker"]
LABELS = {"logreg": "readmitted", "softmax": "outcome", "mlp": "readmitted", "linreg": "stay"}
ROWS = [
    {"age": 30, "cost": 250.5, "clinic": "south", "smoker": True},
    {"age": "81", "cost": 9000, "clinic": "east", "smoker": "no"},       # cost above the declared max
    {"Age": -5, "cost": 100.0, "clinic": "north", "smoker": 0},          # age below min; any case
]


def make(model: str, seed: int = 0) -> Predictor:
    spec = {"dataset": "d", "model": model, "features": FEATURES, "label": LABELS[model],
            **({"hidden": [6, 4]} if model == "mlp" else {})}
    s = TrainingSpec.from_dict(spec)
    d = encoded_width(s, COLUMNS)
    k = {"logreg": 2, "softmax": 3, "mlp": 2, "linreg": 0}[model]
    n = init_params(spec, d, k, seed=1).size
    params = np.random.default_rng(seed).normal(0, 1.5, n)
    return Predictor(spec, COLUMNS, params, d, k)


def test_the_predictor_uses_the_nodes_encoding_and_the_zoo_forward() -> None:
    import torch

    from xdp_compute.training.zoo import model_from_state, predict

    for model in ("logreg", "softmax", "mlp", "linreg"):
        p = make(model)
        X = p.encode(ROWS)
        by_hand = {"age": np.array([30, 81, -5], dtype=object), "cost": np.array([250.5, 9000, 100.0], dtype=object),
                   "clinic": np.array(["south", "east", "north"], dtype=object),
                   "smoker": np.array([True, "no", 0], dtype=object)}
        np.testing.assert_array_equal(X, encode_features(p.spec, column_dicts(COLUMNS), by_hand))
        # Out of range values are clipped as training clipped them, never used to rescale.
        assert X[1, 1] == 1.0 and X[2, 0] == 0.0 and X[0, 0] == pytest.approx(30 / 110)
        flat = np.concatenate([np.concatenate([w.reshape(-1), b]) for w, b in p.layers])
        torch.set_num_threads(1)
        ref = predict(model_from_state(p.spec, p.n_features, p.n_classes, flat), X, loss_kind(p.spec, p.n_classes),
                      label_lo=0.0, label_hi=60.0)
        if model == "linreg":
            np.testing.assert_allclose(p.predict(ROWS), ref, rtol=1e-5, atol=1e-5)
            continue
        proba = p.predict_proba(ROWS)
        np.testing.assert_allclose(proba if model != "logreg" else proba[:, 1], ref, rtol=1e-5, atol=1e-6)
        assert list(p.predict(ROWS)) == [p.classes[i] for i in proba.argmax(axis=1)]  # type: ignore[index]


def test_metadata_carried_by_the_predictor() -> None:
    p = make("softmax")
    assert p.feature_names == FEATURES and p.label == "outcome" and p.classes == ["good", "fair", "poor"]
    assert p.model == "softmax" and p.task == "classification"
    assert p.encoded_feature_names == ["age", "cost", "clinic=north", "clinic=south", "clinic=east", "smoker"]
    assert p.encoding == [{"name": "age", "type": "int", "min": 0.0, "max": 110.0},
                          {"name": "cost", "type": "float", "min": 100.0, "max": 5000.0},
                          {"name": "clinic", "type": "category", "values": ["north", "south", "east"]},
                          {"name": "smoker", "type": "bool"}]
    r = make("linreg")
    assert r.task == "regression" and r.classes is None and r.label_bounds == (0.0, 60.0)
    with pytest.raises(ValueError, match="predicts values"):
        r.predict_proba(ROWS)


def test_a_dataframe_of_raw_values_gives_the_same_answers() -> None:
    pd = pytest.importorskip("pandas")
    p = make("mlp")
    rows = [{**r, "age": r.get("age", r.get("Age"))} for r in ROWS]
    rows = [{k: v for k, v in r.items() if k != "Age"} for r in rows]
    frame = pd.DataFrame(rows).astype({"smoker": object})
    np.testing.assert_allclose(p.predict_proba(frame), p.predict_proba(rows))
    frame.loc[1, "cost"] = None
    with pytest.raises(InvalidRow, match="row 1 has no value for feature 'cost'") as e:
        p.predict(frame)
    assert e.value.feature == "cost"


@pytest.mark.parametrize(("row", "feature", "message"), [
    ({"age": 30, "cost": 200, "smoker": True}, "clinic", "no value for feature 'clinic'"),
    ({"age": 30, "cost": 200, "clinic": "west", "smoker": True}, "clinic", "'west' is not a declared value"),
    ({"age": None, "cost": 200, "clinic": "east", "smoker": True}, "age", "no value for feature 'age'"),
    ({"age": "old", "cost": 200, "clinic": "east", "smoker": True}, "age", "must be a number"),
    ({"age": 3, "cost": float("nan"), "clinic": "east", "smoker": True}, "cost", "no value"),
    ({"age": 3, "cost": 200, "clinic": "east", "smoker": "maybe"}, "smoker", "must be true or false"),
])
def test_rows_the_model_cannot_take_are_refused_naming_the_feature(row: dict[str, Any], feature: str,
                                                                  message: str) -> None:
    p = make("logreg")
    with pytest.raises(ValueError, match=message) as e:
        p.predict([ROWS[0], row])
    assert isinstance(e.value, InvalidRow) and e.value.feature == feature and e.value.row == 1
    with pytest.raises(ValueError, match="not one dict"):
        p.predict(ROWS[0])


def test_a_release_without_columns_is_refused_with_a_reason() -> None:
    with pytest.raises(ValueError, match="carries no declared columns"):
        Predictor.from_release({"spec": {"dataset": "d", "model": "logreg", "features": ["age"],
                                         "label": "readmitted"}, "n_features": 1, "n_classes": 2,
                                "params": [0.0, 0.0]})


_ORT = """
import json, sys
sys.modules["xdp_compute"] = None  # the exported model must run without this package
import numpy as np, onnxruntime as ort
s = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
x = np.array(json.loads(sys.argv[2]), dtype=np.float32)
outs = s.run(None, {"input": x})
meta = s.get_modelmeta().custom_metadata_map
print(json.dumps({"out": [o.tolist() for o in outs], "meta": meta}))
"""


@pytest.mark.parametrize("model", ["logreg", "softmax", "mlp", "linreg"])
def test_the_onnx_export_runs_with_onnxruntime_alone_and_matches(model: str, tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    p = make(model, seed=3)
    path = p.export(tmp_path / "m.onnx")
    x = p.onnx_inputs(ROWS)
    assert x[:, 2].tolist() == [1.0, 2.0, 0.0]  # categories go in as their declared index
    r = subprocess.run([sys.executable, "-c", _ORT, str(path), json.dumps(x.tolist())], capture_output=True,
                       text=True, check=True, timeout=120)
    got = json.loads(r.stdout)
    if model == "linreg":
        np.testing.assert_allclose(np.array(got["out"][0])[:, 0], p.predict(ROWS), atol=1e-4)
    else:
        np.testing.assert_allclose(got["out"][0], p.predict_proba(ROWS), atol=1e-5)
        assert got["out"][1] == p.predict_proba(ROWS).argmax(axis=1).tolist()
    meta = got["meta"]
    assert json.loads(meta["feature_names"]) == FEATURES and meta["label"] == LABELS[model]
    assert json.loads(meta["encoding"]) == p.encoding and json.loads(meta["classes"]) == p.classes
    assert "categories as the index" in meta["input"]


def test_export_refuses_a_path_that_is_not_onnx(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="ending in .onnx"):
        make("logreg").export(tmp_path / "model.pt")


def test_released_metrics_are_clamped_to_their_range_with_intervals() -> None:
    sig = {"count": 4.0, "loss": 30000.0, "second": 3000.0}
    evals = {
        # few noisy rows and large noise: ratios fall outside their range before clamping
        "a": {"count": 5, "loss_sum": -40.0, "second": 6.5, "kind": "correct", "sigma_node2": sig},
        "b": {"count": 60, "loss_sum": 30.0, "second": 48.0, "kind": "correct", "sigma_node2": sig},
        "c": {},
    }
    per_node, overall = released_metrics(evals)
    a = per_node["a"]
    assert a["accuracy"] == 1.0 and a["loss"] == 0.0  # 6.5 / 5 and -40 / 5, clamped
    assert 0.0 <= a["accuracy_interval"][0] <= a["accuracy_interval"][1] <= 1.0
    assert 0.0 <= a["loss_interval"][0] <= a["loss_interval"][1] <= EVAL_LOSS_BOUND
    assert per_node["c"] == {"holdout_rows_noisy": 0, "accuracy": None, "loss": None}
    assert overall["accuracy"] == pytest.approx(54.5 / 65) and overall["loss"] == 0.0
    lo, hi = overall["accuracy_interval"]
    assert 0.0 <= lo < 54.5 / 65 < hi <= 1.0 and overall["confidence_level"] == 0.95
    assert hi - lo < 1.0
    # Without the nodes' noise variances the estimates are still clamped, with no interval.
    per_node, overall = released_metrics({"a": {"count": 5, "loss_sum": 60.0, "second": -1.0, "kind": "correct"}})
    assert overall["accuracy"] == 0.0 and overall["loss"] == EVAL_LOSS_BOUND and overall["accuracy_interval"] is None


def test_regression_metrics_are_in_label_units() -> None:
    _, overall = released_metrics({"a": {"count": 100, "loss_sum": 2.0, "second": 4.0, "kind": "sq_err",
                                         "sigma_node2": {"count": 1.0, "loss": 1.0, "second": 1.0}}}, 60.0)
    assert overall["mse"] == pytest.approx(0.04 * 3600) and overall["accuracy"] is None
    assert overall["mse_interval"][0] <= overall["mse"] <= overall["mse_interval"][1]


def test_the_metrics_loss_bound_is_the_one_training_clips_to() -> None:
    pytest.importorskip("torch")
    from xdp_compute.training import local

    assert local.EVAL_LOSS_BOUND == EVAL_LOSS_BOUND
