"""A released model that takes raw values: the declared feature encoding applied for the user.

The nodes trained on features encoded by ``training.features.encode_features`` from the dataset's
declared columns (numeric rescaled by the declared [min, max] and clipped to [0, 1]; bool 0/1;
category one-hot over the declared values). A model applied to raw values without that encoding
is wrong (0.41 accuracy where the encoded rows give 0.80), so ``Predictor`` keeps the declared
columns the model was trained with and runs the *same* ``encode_features`` on the rows it is
given, then the zoo architecture's forward pass in numpy (no torch needed).

It is stricter than the nodes: a node encodes a missing value as mid-range and an unknown category
as all zeros (it must not fail because of its data), but a user's row with a missing feature or an
undeclared category is refused with ``InvalidRow`` naming the feature — a silent 0.5 would give a
prediction nobody asked for. Numeric values outside the declared range are clipped to it, exactly
as training clipped them.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from xdp_compute.errors import InvalidArgument
from xdp_compute.training.architecture import LOSS_BCE, LOSS_CE, LOSS_MSE, loss_kind
from xdp_compute.training.features import _as_bool01, _as_float, encode_features, feature_names
from xdp_compute.training.spec import (
    NUMERIC_TYPES,
    LabelInfo,
    TrainingSpec,
    category_values,
    column_dicts,
    label_info,
    layer_sizes,
    spec_from_any,
)


class InvalidRow(InvalidArgument):
    """A row the model cannot take: a feature is missing, unparsable or an undeclared category.

    A ``ValueError`` (through ``InvalidArgument``); ``feature`` names the offending column.
    """

    def __init__(self, detail: str, *, feature: str, row: int | None = None) -> None:
        super().__init__(detail, feature=feature, row=row)
        self.feature, self.row = feature, row


Rows = Iterable[Mapping[str, Any]] | Any  # a list of dicts or a pandas DataFrame


class Predictor:
    """A released zoo model with its declared input encoding: ``predict`` / ``predict_proba`` on raw rows.

    Attributes: ``model`` (logreg | softmax | linreg | mlp), ``feature_names`` (the declared feature
    columns, in order), ``encoded_feature_names`` (the model's inputs: ``col`` or ``col=value``),
    ``label`` (its name), ``task`` (classification | regression), ``classes`` (class names in
    output order; None for regression), ``encoding`` (each feature's declared type and bounds or
    values, as the manifest declares them).
    """

    def __init__(self, spec: TrainingSpec | Mapping[str, Any], columns: Iterable[Any],
                 params: Sequence[float] | np.ndarray, n_features: int, n_classes: int) -> None:
        self.spec = spec_from_any(spec)
        self._cols = column_dicts(columns)
        self._info: LabelInfo = self.spec.validate(self._cols.values())
        self.model = self.spec.model
        self.feature_names = [self._cols[f.lower()]["name"] for f in self.spec.features]
        self.encoded_feature_names = feature_names(self.spec, self._cols.values())
        if len(self.encoded_feature_names) != n_features:
            raise InvalidArgument(f"the model takes {n_features} inputs but its declared features encode to "
                                  f"{len(self.encoded_feature_names)}")
        self.label = self._info.name
        self.task = self._info.kind
        self.classes = list(self._info.classes) if self._info.classes is not None else None
        self.label_bounds = (self._info.lo, self._info.hi) if self.task == "regression" else None
        self.kind = loss_kind(self.spec, n_classes)
        self.n_features, self.n_classes = n_features, n_classes
        flat = np.asarray(params, dtype=np.float64).reshape(-1)
        self.layers: list[tuple[np.ndarray, np.ndarray]] = []
        offset = 0
        for a, b in itertools.pairwise(layer_sizes(self.spec, n_features, n_classes)):
            w = flat[offset:offset + a * b].reshape(b, a)
            offset += a * b
            self.layers.append((w, flat[offset:offset + b].copy()))
            offset += b
        if offset != flat.size or not np.all(np.isfinite(flat)):
            raise InvalidArgument(f"the model needs {offset} finite parameters, got {flat.size}")

    @classmethod
    def from_release(cls, model: Mapping[str, Any]) -> Predictor:
        """From a released training payload's ``model`` member (spec, columns, dimensions, params)."""
        if not model.get("columns"):
            raise InvalidArgument("this released model carries no declared columns (released before models "
                                  "recorded their encoding); it cannot encode raw values")
        return cls(model["spec"], model["columns"], model["params"], int(model["n_features"]),
                   int(model["n_classes"]))

    @property
    def encoding(self) -> list[dict[str, Any]]:
        """Each feature's declared column: name, type, and min/max (numeric) or values (category)."""
        out = []
        for f in self.feature_names:
            c = self._cols[f.lower()]
            d: dict[str, Any] = {"name": c["name"], "type": c["type"]}
            if c["type"] in NUMERIC_TYPES:
                d.update(min=float(c["min"]), max=float(c["max"]))
            elif c["type"] == "category":
                d["values"] = list(category_values(c))
            out.append(d)
        return out

    # ---- rows -> model inputs ------------------------------------------------------------------
    def columns_of(self, rows: Rows) -> dict[str, np.ndarray]:
        """Raw rows as ``{feature: object array}``, refusing what the model cannot take (``InvalidRow``)."""
        if hasattr(rows, "to_dict") and hasattr(rows, "columns"):  # a pandas DataFrame
            rows = rows.to_dict(orient="records")
        if isinstance(rows, Mapping):
            raise InvalidArgument("rows must be a list of dicts or a DataFrame, not one dict (wrap it in a list)")
        records = list(rows)
        out: dict[str, np.ndarray] = {}
        for f in self.feature_names:
            col = self._cols[f.lower()]
            vals = np.empty(len(records), dtype=object)
            for i, r in enumerate(records):
                vals[i] = self._checked(r, col, i)
            out[f] = vals
        return out

    def _checked(self, row: Mapping[str, Any], col: Mapping[str, Any], i: int) -> Any:
        name = col["name"]
        if not isinstance(row, Mapping):
            raise InvalidArgument(f"row {i} is a {type(row).__name__}, not a dict of column values")
        key = name if name in row else next((k for k in row if str(k).lower() == name.lower()), None)
        v = None if key is None else row[key]
        if v is None or _is_nan(v):
            raise InvalidRow(f"row {i} has no value for feature {name!r}", feature=name, row=i)
        one = np.array([v], dtype=object)
        if col["type"] in NUMERIC_TYPES and math.isnan(_as_float(one)[0]):
            raise InvalidRow(f"row {i}: feature {name!r} must be a number, got {v!r}", feature=name, row=i)
        if col["type"] == "bool" and math.isnan(_as_bool01(one)[0]):
            raise InvalidRow(f"row {i}: feature {name!r} must be true or false, got {v!r}", feature=name, row=i)
        if col["type"] == "category" and str(v) not in category_values(col):
            raise InvalidRow(f"row {i}: {v!r} is not a declared value of feature {name!r} "
                             f"(declared: {', '.join(category_values(col))})", feature=name, row=i)
        return v

    def encode(self, rows: Rows) -> np.ndarray:
        """The model's inputs (n, d) for raw rows: the nodes' own ``encode_features``."""
        return encode_features(self.spec, self._cols, self.columns_of(rows))

    # ---- outputs -------------------------------------------------------------------------------
    def _scores(self, X: np.ndarray) -> np.ndarray:
        h = np.asarray(X, dtype=np.float64)
        for i, (w, b) in enumerate(self.layers):
            h = h @ w.T + b
            if i < len(self.layers) - 1:
                h = np.maximum(h, 0.0)
        return h

    def predict_proba(self, rows: Rows) -> np.ndarray:
        """Class probabilities (n, n_classes), columns in ``classes`` order (classification only)."""
        if self.task != "classification":
            raise InvalidArgument(f"a {self.model} model of {self.label!r} predicts values, not probabilities")
        return self.proba_of_encoded(self.encode(rows))

    def proba_of_encoded(self, X: np.ndarray) -> np.ndarray:
        """Class probabilities for inputs already encoded (``encode``)."""
        z = self._scores(X)
        if self.kind == LOSS_BCE:
            p = 1.0 / (1.0 + np.exp(-z[:, 0]))
            return np.stack([1.0 - p, p], axis=1)
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)  # type: ignore[no-any-return]

    def predict(self, rows: Rows) -> np.ndarray:
        """Predicted class names (classification) or values in label units (regression), one per row."""
        X = self.encode(rows)
        if self.kind == LOSS_MSE:
            lo, hi = self.label_bounds or (0.0, 1.0)
            return lo + self._scores(X)[:, 0] * (hi - lo)  # type: ignore[no-any-return,operator]
        assert self.kind in (LOSS_BCE, LOSS_CE) and self.classes is not None
        return np.array(self.classes, dtype=object)[self.proba_of_encoded(X).argmax(axis=1)]

    # ---- export --------------------------------------------------------------------------------
    def export(self, path: str | Path) -> Path:
        """Write the model with its encoding as ONNX (``.onnx``), runnable without this package.

        The ONNX model takes one float tensor ``input`` (n, len(feature_names)), columns in
        ``feature_names`` order: numeric features as raw values, bools as 0/1, categories as the
        index of the value in its declared values. It outputs ``probabilities`` (n, n_classes)
        and ``class_index`` (n,) for classification, ``prediction`` (n, 1) in label units for
        regression. Its ``metadata_props`` carry feature names, label, classes, the encoding
        (JSON) and this description.
        """
        from xdp_compute.training.onnx_export import save_onnx

        p = Path(path)
        if p.suffix.lower() != ".onnx":
            raise InvalidArgument(f"export writes ONNX: give a path ending in .onnx, not {p.name!r}")
        return save_onnx(self, p)

    def onnx_inputs(self, rows: Rows) -> np.ndarray:
        """Raw rows as the exported ONNX model's ``input`` (category values as their index)."""
        cols = self.columns_of(rows)
        out = np.zeros((len(next(iter(cols.values()))) if cols else 0, len(self.feature_names)), dtype=np.float32)
        for j, f in enumerate(self.feature_names):
            c = self._cols[f.lower()]
            if c["type"] == "category":
                idx = {v: i for i, v in enumerate(category_values(c))}
                out[:, j] = [idx[str(v)] for v in cols[f]]
            elif c["type"] == "bool":
                out[:, j] = _as_bool01(cols[f])
            else:
                out[:, j] = _as_float(cols[f])
        return out

    def __repr__(self) -> str:
        what = f"classes={self.classes}" if self.classes is not None else f"bounds={self.label_bounds}"
        return f"Predictor({self.model}, features={self.feature_names}, label={self.label!r}, {what})"


def _is_nan(v: Any) -> bool:
    """NaN, pandas' NA/NaT: values unequal to themselves (or whose comparison cannot be a bool)."""
    try:
        return bool(v != v)  # noqa: PLR0124 - NaN and NA are the values unequal to themselves
    except (TypeError, ValueError):
        return True


def label_of_model(model: Mapping[str, Any]) -> LabelInfo | None:
    """The label of a released model payload, or None when it carries no columns."""
    cols = column_dicts(model.get("columns") or [])
    lab = str(model["spec"]["label"]).lower()
    return label_info(model["spec"]["model"], cols[lab]) if lab in cols else None


__all__ = ["InvalidRow", "Predictor", "label_of_model"]
