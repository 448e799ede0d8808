"""TrainingSpec: structural checks, checks against declared columns, label rules, defaults."""

from __future__ import annotations

from typing import Any

import pytest

from xdp_compute.errors import InvalidSpec
from xdp_compute.training.spec import (
    DEFAULT_LR,
    DEFAULT_MAX_GRAD_NORM,
    MAX_PARAMS,
    TrainingSpec,
    count_params,
    label_info,
)

COLUMNS: list[dict[str, Any]] = [
    {"name": "age", "type": "int", "min": 0, "max": 100, "values": None, "uses": ["aggregate", "filter"]},
    {"name": "cost", "type": "float", "min": 0.0, "max": 5000.0, "values": None, "uses": ["aggregate"]},
    {
        "name": "clinic",
        "type": "category",
        "min": None,
        "max": None,
        "values": ["north", "south", "east"],
        "uses": ["group", "filter"],
    },
    {
        "name": "label",
        "type": "category",
        "min": None,
        "max": None,
        "values": ["no", "yes"],
        "uses": ["group"],
    },
    {"name": "smoker", "type": "bool", "min": None, "max": None, "values": None, "uses": ["aggregate"]},
    {"name": "flag01", "type": "int", "min": 0, "max": 1, "values": None, "uses": ["aggregate"]},
    {"name": "note", "type": "text", "min": None, "max": None, "values": None, "uses": []},
    {"name": "secret", "type": "float", "min": 0.0, "max": 1.0, "values": None, "uses": ["filter"]},
    {"name": "unbounded", "type": "float", "min": None, "max": None, "values": None, "uses": ["aggregate"]},
    {
        "name": "wide",
        "type": "category",
        "min": None,
        "max": None,
        "values": [f"v{i}" for i in range(900)],
        "uses": ["group"],
    },
]


def base(**kw: Any) -> dict[str, Any]:
    d: dict[str, Any] = {
        "dataset": "visits",
        "model": "logreg",
        "features": ["age", "cost", "clinic"],
        "label": "label",
    }
    d.update(kw)
    return d


def test_valid_spec_round_trips_and_validates() -> None:
    spec = TrainingSpec.from_dict(base(rounds=5, delta=1e-6, where="age > 3"))
    info = spec.validate(COLUMNS)
    assert info.kind == "classification" and info.n_classes == 2 and info.classes == ("no", "yes")
    assert TrainingSpec.from_dict(spec.to_dict()) == spec
    assert spec.to_dict()["features"] == ["age", "cost", "clinic"]


def test_defaults_are_per_model_and_recorded() -> None:
    for model in ("logreg", "softmax", "linreg", "mlp"):
        s = TrainingSpec.from_dict(base(model=model))
        assert s.lr == DEFAULT_LR[model] and s.max_grad_norm == DEFAULT_MAX_GRAD_NORM[model]
        assert s.to_dict()["lr"] == DEFAULT_LR[model]
    s = TrainingSpec.from_dict(base(lr=0.1, max_grad_norm=2.0))
    assert (s.lr, s.max_grad_norm) == (0.1, 2.0)
    assert TrainingSpec.from_dict(base(model="mlp")).hidden_sizes() == (64, 64)
    assert TrainingSpec.from_dict(base()).hidden_sizes() == ()


BAD_STRUCTURE: list[tuple[dict[str, Any], str]] = [
    (base(model="xgboost"), "model"),
    (base(model=None), "model"),
    (base(features=[]), "features"),
    (base(features="age"), "features"),
    (base(features=["age", "AGE"]), "features"),
    (base(features=["age", "label"]), "label"),
    (base(target_epsilon=0), "target_epsilon"),
    (base(target_epsilon=-1.0), "target_epsilon"),
    (base(target_epsilon=float("inf")), "target_epsilon"),
    (base(target_epsilon=float("nan")), "target_epsilon"),
    (base(target_epsilon=1e9), "target_epsilon"),
    (base(target_epsilon="3"), "target_epsilon"),
    (base(rounds=0), "rounds"),
    (base(rounds=10**9), "rounds"),
    (base(rounds=1001), "rounds"),
    (base(rounds=2.5), "rounds"),
    (base(rounds=True), "rounds"),
    (base(batch_size=0), "batch_size"),
    (base(batch_size=-5), "batch_size"),
    (base(local_epochs=0), "local_epochs"),
    (base(local_epochs=10**6), "local_epochs"),
    (base(lr=0), "lr"),
    (base(lr=-0.1), "lr"),
    (base(lr=float("nan")), "lr"),
    (base(max_grad_norm=0), "max_grad_norm"),
    (base(max_grad_norm=-1), "max_grad_norm"),
    (base(max_grad_norm=float("inf")), "max_grad_norm"),
    (base(delta=0), "delta"),
    (base(delta=1.0), "delta"),
    (base(hidden=[8]), "hidden"),  # hidden on a non-mlp model
    (base(model="mlp", hidden=[0]), "hidden"),
    (base(model="mlp", hidden=[]), "hidden"),
    (base(model="mlp", hidden=[10**6]), "hidden"),
    (base(model="mlp", hidden=[8] * 9), "hidden"),
    (base(model="mlp", hidden=[True]), "hidden"),
    (base(model="mlp", hidden="64"), "hidden"),
    (base(where=5), "where"),
    (base(dataset=""), "dataset"),
    (base(epochs=3), "epochs"),  # unknown key
    (base(code="import os"), "code"),  # unknown key
]


@pytest.mark.parametrize(("spec", "field"), BAD_STRUCTURE)
def test_bad_structure_is_invalid_spec(spec: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidSpec) as e:
        TrainingSpec.from_dict(spec).validate(COLUMNS)
    assert e.value.status == 400
    assert e.value.extra["field"] == field
    assert field in e.value.detail


def test_missing_required_key_is_invalid_spec() -> None:
    for key in ("dataset", "model", "features", "label"):
        d = base()
        del d[key]
        with pytest.raises(InvalidSpec, match=key):
            TrainingSpec.from_dict(d)
    with pytest.raises(InvalidSpec):
        TrainingSpec.from_dict(["not", "a", "dict"])  # type: ignore[arg-type]


BAD_AGAINST_COLUMNS: list[tuple[dict[str, Any], str, str]] = [
    (base(features=["age", "height"]), "features", "not declared"),
    (base(features=["age", "note"]), "features", "text column"),
    (base(features=["age", "secret"]), "features", "not declared for aggregate use"),
    (base(features=["unbounded"]), "features", "finite min"),
    (base(label="nope"), "label", "not declared"),
    (base(label="note"), "label", "text column"),
    (base(features=["smoker"], label="clinic"), "label", "logreg needs"),  # 3-value category
    (base(features=["smoker"], label="cost"), "label", "logreg needs"),
    (base(features=["smoker"], label="age"), "label", "logreg needs"),  # int but not 0/1
    (base(model="softmax", label="smoker"), "label", "softmax needs a category"),
    (base(model="softmax", features=["age"], label="cost"), "label", "softmax needs a category"),
    (base(model="linreg", label="label"), "label", "needs an int or float"),
    (base(model="linreg", label="smoker"), "label", "needs an int or float"),
    (base(model="linreg", label="unbounded"), "label", "bounds"),
    (base(model="mlp", label="note"), "label", "text column"),
    (base(model="mlp", features=["wide"], label="clinic", hidden=[2048, 2048]), "hidden", "parameters"),
]


@pytest.mark.parametrize(("spec", "field", "reason"), BAD_AGAINST_COLUMNS)
def test_bad_against_columns_is_invalid_spec(spec: dict[str, Any], field: str, reason: str) -> None:
    s = TrainingSpec.from_dict(spec)
    with pytest.raises(InvalidSpec) as e:
        s.validate(COLUMNS)
    assert e.value.extra["field"] == field
    assert reason in e.value.detail


def test_label_rules_per_model() -> None:
    cols = {c["name"]: c for c in COLUMNS}
    assert label_info("logreg", cols["smoker"]).classes == ("false", "true")
    assert label_info("logreg", cols["flag01"]).classes == ("0", "1")
    assert label_info("logreg", cols["label"]).n_classes == 2
    sm = label_info("softmax", cols["clinic"])
    assert (sm.kind, sm.n_classes, sm.classes) == ("classification", 3, ("north", "south", "east"))
    lr = label_info("linreg", cols["cost"])
    assert (lr.kind, lr.n_classes, lr.lo, lr.hi) == ("regression", 0, 0.0, 5000.0)
    assert label_info("linreg", cols["flag01"]).kind == "regression"
    assert label_info("mlp", cols["cost"]).kind == "regression"
    assert label_info("mlp", cols["flag01"]).n_classes == 2
    assert label_info("mlp", cols["clinic"]).n_classes == 3


def test_column_lookup_is_case_insensitive_and_accepts_column_objects() -> None:
    class Col:
        def __init__(self, d: dict[str, Any]) -> None:
            self.d = d

        def to_dict(self) -> dict[str, Any]:
            return self.d

    spec = TrainingSpec.from_dict(base(features=["AGE", "Cost"], label="LABEL"))
    assert spec.validate([Col(c) for c in COLUMNS]).n_classes == 2


def test_parameter_count_matches_architecture_and_cap() -> None:
    s = TrainingSpec.from_dict(base(model="mlp", hidden=[64, 64]))
    assert count_params(s, 30, 2) == (30 + 1) * 64 + (64 + 1) * 64 + (64 + 1) * 2
    assert count_params(TrainingSpec.from_dict(base()), 30, 2) == 31
    assert count_params(TrainingSpec.from_dict(base(model="softmax")), 30, 4) == 31 * 4
    big = TrainingSpec.from_dict(base(model="mlp", features=["wide"], label="clinic", hidden=[1200]))
    assert count_params(big, 900, 3) > MAX_PARAMS
    with pytest.raises(InvalidSpec, match="parameters"):
        big.validate(COLUMNS)
