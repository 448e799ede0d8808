"""Feature encoding: declared-bounds scaling, one-hot, missing values, labels per model."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from xdp_compute.errors import InvalidSpec
from xdp_compute.training.features import encode, feature_names, label_of

COLUMNS: list[dict[str, Any]] = [
    {"name": "age", "type": "int", "min": 0, "max": 100, "values": None, "uses": ["aggregate"]},
    {"name": "cost", "type": "float", "min": 100.0, "max": 300.0, "values": None, "uses": ["aggregate"]},
    {
        "name": "clinic",
        "type": "category",
        "min": None,
        "max": None,
        "values": ["north", "south", "east"],
        "uses": ["group"],
    },
    {"name": "smoker", "type": "bool", "min": None, "max": None, "values": None, "uses": ["aggregate"]},
    {
        "name": "label",
        "type": "category",
        "min": None,
        "max": None,
        "values": ["no", "yes"],
        "uses": ["group"],
    },
    {"name": "score", "type": "float", "min": -10.0, "max": 10.0, "values": None, "uses": ["aggregate"]},
]


def spec(**kw: Any) -> dict[str, Any]:
    d: dict[str, Any] = {
        "dataset": "visits",
        "model": "logreg",
        "features": ["age", "cost", "clinic", "smoker"],
        "label": "label",
    }
    d.update(kw)
    return d


def data() -> dict[str, np.ndarray]:
    return {
        "age": np.array([0, 50, 100, 150, -3]),
        "cost": np.array([100.0, 200.0, np.nan, 300.0, 50.0]),
        "clinic": np.array(["north", "east", "west", None, "south"], dtype=object),
        "smoker": np.array([True, False, True, False, True]),
        "label": np.array(["yes", "no", "yes", "maybe", None], dtype=object),
        "score": np.array([-10.0, 0.0, 5.0, 20.0, np.nan]),
    }


def test_feature_names_follow_spec_then_declared_value_order() -> None:
    assert feature_names(spec(), COLUMNS) == [
        "age",
        "cost",
        "clinic=north",
        "clinic=south",
        "clinic=east",
        "smoker",
    ]


def test_encoding_scales_by_declared_bounds_one_hot_and_drops_bad_labels() -> None:
    enc = encode(spec(), COLUMNS, data())
    assert enc.X.dtype == np.float32 and enc.X.shape == (3, 6)
    # Rows 3 ("maybe") and 4 (None) have no declared label: dropped.
    assert enc.n_dropped == 2
    np.testing.assert_allclose(
        enc.X,
        np.array(
            [
                [0.0, 0.0, 1, 0, 0, 1],
                [0.5, 0.5, 0, 0, 1, 0],
                [1.0, 0.5, 0, 0, 0, 1],  # cost NaN -> mid-range 0.5; 'west' undeclared -> all zeros
            ],
            dtype=np.float32,
        ),
    )
    assert enc.y.dtype == np.float32  # logreg: 0/1 floats for BCE
    np.testing.assert_array_equal(enc.y, [1.0, 0.0, 1.0])


def test_out_of_range_values_are_clipped_not_rescaled() -> None:
    d = data()
    d["label"] = np.array(["yes"] * 5, dtype=object)
    enc = encode(spec(), COLUMNS, d)
    assert enc.X[:, 0].tolist() == [0.0, 0.5, 1.0, 1.0, 0.0]  # 150 -> 1, -3 -> 0
    assert enc.X[4, 1] == 0.0  # cost 50 below declared min 100
    assert enc.X[3, 2:5].tolist() == [0.0, 0.0, 0.0]  # None category -> zeros
    assert float(enc.X.min()) >= 0.0 and float(enc.X.max()) <= 1.0


def test_masked_arrays_like_duckdb_fetchnumpy() -> None:
    d = data()
    d["label"] = np.array(["yes"] * 5, dtype=object)
    d["age"] = np.ma.MaskedArray(np.array([10, 20, 30, 40, 50], dtype=np.int32), mask=[0, 1, 0, 0, 0])
    d["smoker"] = np.ma.MaskedArray(np.array([True, True, False, False, True]), mask=[0, 0, 0, 1, 0])
    d["clinic"] = np.ma.MaskedArray(np.array(["north"] * 5, dtype=object), mask=[1, 0, 0, 0, 0])
    enc = encode(spec(), COLUMNS, d)
    np.testing.assert_allclose(enc.X[:, 0], [0.1, 0.5, 0.3, 0.4, 0.5])  # masked -> 0.5
    np.testing.assert_allclose(enc.X[:, 5], [1.0, 1.0, 0.0, 0.5, 1.0])
    assert enc.X[0, 2:5].tolist() == [0.0, 0.0, 0.0] and enc.X[1, 2:5].tolist() == [1.0, 0.0, 0.0]


def test_bool_strings_and_case_insensitive_column_names() -> None:
    d = {k.upper(): v for k, v in data().items()}
    d["SMOKER"] = np.array(["true", "False", "1", "no", "??"], dtype=object)
    d["LABEL"] = np.array(["yes"] * 5, dtype=object)
    enc = encode(spec(), COLUMNS, d)
    np.testing.assert_allclose(enc.X[:, 5], [1.0, 0.0, 1.0, 0.0, 0.5])


def test_labels_per_model() -> None:
    d = data()
    sm = encode(spec(model="softmax", features=["age"], label="clinic"), COLUMNS, d)
    assert sm.y.dtype == np.int64
    np.testing.assert_array_equal(sm.y, [0, 2, 1])  # north, east, south; 'west' and None dropped
    assert sm.n_dropped == 2
    lr = encode(spec(model="linreg", features=["age"], label="score"), COLUMNS, d)
    assert lr.y.dtype == np.float32
    np.testing.assert_allclose(lr.y, [0.0, 0.5, 0.75, 1.0])  # 20 clipped to the declared max
    assert lr.n_dropped == 1
    bl = encode(spec(features=["age"], label="smoker"), COLUMNS, d)
    np.testing.assert_array_equal(bl.y, [1, 0, 1, 0, 1])
    mlp = encode(spec(model="mlp", features=["age"], label="label"), COLUMNS, d)
    assert mlp.y.dtype == np.int64 and mlp.y.tolist() == [1, 0, 1]
    info = label_of(spec(model="linreg", features=["age"], label="score"), COLUMNS)
    assert (info.lo, info.hi) == (-10.0, 10.0)


def test_encoding_is_deterministic() -> None:
    a, b = encode(spec(), COLUMNS, data()), encode(spec(), COLUMNS, data())
    assert np.array_equal(a.X, b.X) and np.array_equal(a.y, b.y)


def test_missing_or_ragged_columns_are_refused() -> None:
    d = data()
    del d["cost"]
    with pytest.raises(InvalidSpec, match="missing"):
        encode(spec(), COLUMNS, d)
    d = data()
    d["cost"] = d["cost"][:3]
    with pytest.raises(InvalidSpec, match="same length"):
        encode(spec(), COLUMNS, d)


def test_encode_validates_the_spec_first() -> None:
    with pytest.raises(InvalidSpec, match="not declared"):
        encode(spec(features=["age", "nope"]), COLUMNS, data())
