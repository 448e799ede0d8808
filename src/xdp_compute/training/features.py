"""Turn a node's rows into the model's inputs ``X`` and targets ``y`` (numpy only, no pandas).

Input representation: a **dict of numpy column arrays** ``{column name: 1-D array}``, all the
same length — exactly what DuckDB's ``fetchnumpy()`` returns (NULLs arrive as masked entries of a
``numpy.ma.MaskedArray``; ``None``/NaN in object or float arrays are treated the same way). Names
are matched case-insensitively against the declared columns.

Encoding (deterministic; order = ``feature_names(spec, columns)``):

- int/float: ``(x - min) / (max - min)`` with the *declared* bounds, clipped to [0, 1] (a value
  outside the declared range is clipped, never used to rescale). Missing -> 0.5 (mid-range).
- bool: 1.0 / 0.0 (accepts bools, numbers, "true"/"false"/"1"/"0"/"yes"/"no"); missing -> 0.5.
- category: one-hot over the declared values in declared order; unknown or missing -> all zeros.

Targets: classification labels become class indices (``int64``; ``float32`` 0/1 for logreg);
regression labels are scaled to [0, 1] by the declared bounds and clipped (``float32``). Rows
whose label is missing or not a declared class are dropped (the count is returned so the node
can log it; it is not released).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from xdp_compute.errors import InvalidSpec
from xdp_compute.training.spec import (
    NUMERIC_TYPES,
    LabelInfo,
    TrainingSpec,
    category_values,
    column_dicts,
    label_info,
    spec_from_any,
)

_TRUE = {"true", "t", "1", "yes", "y", "1.0"}
_FALSE = {"false", "f", "0", "no", "n", "0.0"}

ColumnData = Mapping[str, Any]


@dataclass(frozen=True)
class EncodedData:
    """Model-ready arrays: ``X`` (n, d) float32, ``y`` (n,), and rows dropped for a bad label."""

    X: np.ndarray
    y: np.ndarray
    n_dropped: int

    def __len__(self) -> int:
        return int(self.X.shape[0])


def feature_names(spec: TrainingSpec | Mapping[str, Any], columns: Iterable[Any]) -> list[str]:
    """Names of the encoded input dimensions, in model order (``"col"`` or ``"col=value"``)."""
    s = spec_from_any(spec)
    cols = column_dicts(columns)
    names: list[str] = []
    for f in s.features:
        col = cols[f.lower()]
        if col["type"] == "category":
            names.extend(f"{col['name']}={v}" for v in category_values(col))
        else:
            names.append(col["name"])
    return names


def _column(data: ColumnData, name: str) -> np.ndarray:
    """The data array for a declared column (case-insensitive), with NULLs as None/NaN."""
    found = data.get(name)
    if found is None:
        lowered = {k.lower(): k for k in data}
        key = lowered.get(name.lower())
        if key is None:
            raise InvalidSpec(f"column {name!r} is missing from the node's data", field="features")
        found = data[key]
    arr = found
    if isinstance(arr, np.ma.MaskedArray):
        mask = np.ma.getmaskarray(arr)
        if mask.any():
            obj = np.asarray(arr.data, dtype=object).copy()
            obj[mask] = None
            return obj
        return np.asarray(arr.data)
    return np.asarray(arr)


def _as_float(arr: np.ndarray) -> np.ndarray:
    """Float64 view of a numeric column, NaN where missing or unparsable."""
    if arr.dtype.kind in "fiub":
        return arr.astype(np.float64)
    out = np.empty(arr.shape[0], dtype=np.float64)
    for i, v in enumerate(arr):
        try:
            out[i] = float(v) if v is not None else np.nan
        except (TypeError, ValueError):
            out[i] = np.nan
    return out


def _as_bool01(arr: np.ndarray) -> np.ndarray:
    """1.0 / 0.0 for true / false, NaN where missing or unparsable."""
    if arr.dtype.kind in "biuf":
        f = arr.astype(np.float64)
        return np.where(np.isnan(f), np.nan, (f != 0).astype(np.float64))
    out = np.full(arr.shape[0], np.nan, dtype=np.float64)
    for i, v in enumerate(arr):
        if v is None:
            continue
        if isinstance(v, bool | np.bool_ | int | np.integer):
            out[i] = 1.0 if v else 0.0
            continue
        s = str(v).strip().lower()
        if s in _TRUE:
            out[i] = 1.0
        elif s in _FALSE:
            out[i] = 0.0
    return out


def _class_index(arr: np.ndarray, col: Mapping[str, Any], info: LabelInfo) -> np.ndarray:
    """Class index per row, -1 where missing or not a declared class."""
    if col["type"] == "bool" or col["type"] in NUMERIC_TYPES:
        v = _as_bool01(arr) if col["type"] == "bool" else _as_float(arr)
        idx = np.full(v.shape[0], -1, dtype=np.int64)
        idx[v == 0.0] = 0
        idx[v == 1.0] = 1
        return idx
    lookup = {c: i for i, c in enumerate(info.classes or ())}
    return np.array([lookup.get(str(x), -1) if x is not None else -1 for x in arr], dtype=np.int64)


def encode_features(
    spec: TrainingSpec, cols: Mapping[str, Mapping[str, Any]], data: ColumnData
) -> np.ndarray:
    """Encode the feature columns into X (n, d) float32 in ``feature_names`` order."""
    blocks: list[np.ndarray] = []
    n: int | None = None
    for f in spec.features:
        col = cols[f.lower()]
        arr = _column(data, col["name"])
        if arr.ndim != 1:
            raise InvalidSpec(f"column {col['name']!r} data must be one-dimensional", field="features")
        if n is None:
            n = arr.shape[0]
        elif arr.shape[0] != n:
            raise InvalidSpec("all column arrays must have the same length", field="features")
        ctype = col["type"]
        if ctype in NUMERIC_TYPES:
            lo, hi = float(col["min"]), float(col["max"])
            x = _as_float(arr)
            # Scale by the *declared* range: the data's own range would leak through the model.
            scaled = np.zeros_like(x) if hi == lo else (x - lo) / (hi - lo)
            scaled = np.clip(scaled, 0.0, 1.0)
            scaled[np.isnan(x)] = 0.5
            blocks.append(scaled[:, None])
        elif ctype == "bool":
            b = _as_bool01(arr)
            b[np.isnan(b)] = 0.5
            blocks.append(b[:, None])
        elif ctype == "category":
            vals = category_values(col)
            lookup = {v: i for i, v in enumerate(vals)}
            onehot = np.zeros((arr.shape[0], len(vals)), dtype=np.float64)
            idx = np.array([lookup.get(str(x), -1) if x is not None else -1 for x in arr], dtype=np.int64)
            rows = np.nonzero(idx >= 0)[0]
            onehot[rows, idx[rows]] = 1.0
            blocks.append(onehot)
        else:
            raise InvalidSpec(
                f"column {col['name']!r} of type {ctype!r} cannot be a feature", field="features"
            )
    return np.concatenate(blocks, axis=1).astype(np.float32)


def encode(spec: TrainingSpec | Mapping[str, Any], columns: Iterable[Any], data: ColumnData) -> EncodedData:
    """Validate ``spec`` against ``columns`` and encode ``data`` into (X, y); see module docstring."""
    s = spec_from_any(spec)
    cols = column_dicts(columns)
    info = s.validate(cols.values())
    X = encode_features(s, cols, data)
    lcol = cols[s.label.lower()]
    larr = _column(data, lcol["name"])
    if larr.shape[0] != X.shape[0]:
        raise InvalidSpec("the label array must have as many rows as the features", field="label")
    if info.kind == "classification":
        idx = _class_index(larr, lcol, info)
        keep = idx >= 0
        y: np.ndarray = idx[keep]
        if s.model == "logreg":
            y = y.astype(np.float32)
    else:
        v = _as_float(larr)
        keep = ~np.isnan(v)
        assert info.lo is not None and info.hi is not None
        y = np.clip((v[keep] - info.lo) / (info.hi - info.lo), 0.0, 1.0).astype(np.float32)
    return EncodedData(X=np.ascontiguousarray(X[keep]), y=y, n_dropped=int((~keep).sum()))


def label_of(spec: TrainingSpec | Mapping[str, Any], columns: Iterable[Any]) -> LabelInfo:
    """``LabelInfo`` for the spec's label (validates the spec against the columns)."""
    s = spec_from_any(spec)
    cols = column_dicts(columns)
    s.validate(cols.values())
    return label_info(s.model, cols[s.label.lower()])


__all__ = ["ColumnData", "EncodedData", "encode", "encode_features", "feature_names", "label_of"]
