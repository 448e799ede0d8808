"""What an ML team asks for: a vetted zoo model trained with DP-SGD over a partitioned dataset.

``TrainingSpec`` is the whole request. ``TrainingSpec.from_dict`` refuses unknown keys and wrong
types; ``TrainingSpec.validate(columns)`` checks it against the data holder's declared columns
(plain dicts ``{"name", "type", "min", "max", "values", "uses"}`` as in
``xdp_compute.domain.manifest.ColumnSpec.to_dict()``) and returns a ``LabelInfo``. Every refusal
is ``InvalidSpec`` (HTTP 400) whose ``detail`` says what is wrong and whose ``field`` extra names
the offending key, so a user can fix the request.

Column rules (why): a feature or label must be declared with an analyst use that lets its
values reach an aggregate output (``aggregate`` or ``group``) — a ``filter``-only or ``[]``
column never contributes values to a result, and a model is an aggregate of its rows. Numeric
columns need finite declared bounds, because features are scaled by the *declared* range (never
the data's, which would leak) and DP-SGD needs bounded inputs to keep the model card honest.
Text columns cannot be features or labels.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from xdp_compute.errors import InvalidSpec

MODELS = ("logreg", "softmax", "linreg", "mlp")
COLUMN_TYPES = ("int", "float", "category", "text", "bool")
NUMERIC_TYPES = ("int", "float")
#: Declared uses under which a column's values may reach a trained model.
TRAINING_USES = ("aggregate", "group")

MAX_ROUNDS = 1000
MAX_LOCAL_EPOCHS = 100
MAX_BATCH_SIZE = 1_000_000
MAX_LR = 100.0
MAX_GRAD_NORM = 1e6
MAX_TARGET_EPSILON = 100.0
MAX_PARAMS = 1_000_000
MAX_HIDDEN_LAYERS = 8
MAX_HIDDEN_WIDTH = 4096
MAX_FEATURES = 1000
MAX_WHERE_CHARS = 10_000
DEFAULT_MLP_HIDDEN = (64, 64)

# Defaults tuned by simulation (DP-SGD at eps=3, delta=1e-5, 3 nodes, features scaled to
# [0, 1]): logreg/softmax/mlp on scikit-learn's breast-cancer data split over 3 nodes of ~150
# training rows (tests/training/test_training_federated.py), linreg on a synthetic 5-feature
# regression. Clipped DP-SGD moves by about lr * max_grad_norm per step, so the two are tuned
# together per model: the linear classifiers need long steps on [0, 1]-scaled inputs, while
# squared error on a [0, 1]-scaled label is only stable with short ones.
DEFAULT_ROUNDS = 20
DEFAULT_LOCAL_EPOCHS = 1
DEFAULT_BATCH_SIZE = 64
DEFAULT_LR = {"logreg": 16.0, "softmax": 8.0, "linreg": 0.5, "mlp": 2.0}
DEFAULT_MAX_GRAD_NORM = {"logreg": 0.25, "softmax": 0.25, "linreg": 0.05, "mlp": 0.25}


def _fail(field_name: str, what: str) -> InvalidSpec:
    return InvalidSpec(f"{field_name}: {what}", field=field_name)


@dataclass(frozen=True)
class LabelInfo:
    """How the label is learned: ``kind`` is "classification" or "regression".

    ``classes`` are the class names in output order (class index i <-> classes[i]); for a
    binary logreg label, index 1 is the positive class. ``lo``/``hi`` are the declared bounds a
    regression label is scaled by (prediction = lo + output * (hi - lo)).
    """

    name: str
    kind: str
    n_classes: int  # 0 for regression
    classes: tuple[str, ...] | None = None
    lo: float | None = None
    hi: float | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["classes"] = list(self.classes) if self.classes is not None else None
        return d


def column_dicts(columns: Iterable[Any]) -> dict[str, dict[str, Any]]:
    """Declared columns keyed by lower-cased name; accepts dicts or objects with ``to_dict()``."""
    out: dict[str, dict[str, Any]] = {}
    for c in columns:
        d = c.to_dict() if hasattr(c, "to_dict") else c
        if not isinstance(d, Mapping) or not isinstance(d.get("name"), str):
            raise InvalidSpec("columns: each declared column must be a dict with a name", field="columns")
        out[d["name"].lower()] = dict(d)
    return out


def _declared_bounds(col: Mapping[str, Any]) -> tuple[float, float] | None:
    lo, hi = col.get("min"), col.get("max")
    if lo is None or hi is None or isinstance(lo, bool) or isinstance(hi, bool):
        return None
    try:
        flo, fhi = float(lo), float(hi)
    except (TypeError, ValueError):
        return None
    if not (math.isfinite(flo) and math.isfinite(fhi)) or flo > fhi:
        return None
    return flo, fhi


def category_values(col: Mapping[str, Any]) -> tuple[str, ...]:
    """Declared values of a category or bool column (bool is ("false", "true"))."""
    if col["type"] == "bool":
        return ("false", "true")
    vals = col.get("values") or ()
    return tuple(str(v) for v in vals)


def column_width(col: Mapping[str, Any]) -> int:
    """Number of encoded feature dimensions a declared column takes (one-hot for categories)."""
    if col["type"] == "category":
        return len(category_values(col))
    return 1


@dataclass(frozen=True)
class TrainingSpec:
    """One DP federated training request; see the module docstring for the column rules.

    ``delta`` None means: use the dataset's declared delta (the node passes it). ``where`` is an
    opaque row filter handled by the node's query layer, not here. ``hidden`` is only for
    ``mlp`` (default ``DEFAULT_MLP_HIDDEN``). ``lr`` and ``max_grad_norm`` left out take the
    model's tuned default (``DEFAULT_LR`` / ``DEFAULT_MAX_GRAD_NORM``).
    """

    dataset: str
    model: str
    features: tuple[str, ...]
    label: str
    rounds: int = DEFAULT_ROUNDS
    local_epochs: int = DEFAULT_LOCAL_EPOCHS
    batch_size: int = DEFAULT_BATCH_SIZE
    lr: float = None  # type: ignore[assignment]  # None -> DEFAULT_LR[model] (set in __post_init__)
    target_epsilon: float = 3.0
    delta: float | None = None
    max_grad_norm: float = None  # type: ignore[assignment]  # None -> DEFAULT_MAX_GRAD_NORM[model]
    where: str | None = None
    hidden: tuple[int, ...] | None = field(default=None)

    def __post_init__(self) -> None:
        # lr / max_grad_norm left out (or null) take the model's tuned default, so the stored
        # spec always says what was run.
        if self.lr is None and isinstance(self.model, str) and self.model in DEFAULT_LR:
            object.__setattr__(self, "lr", DEFAULT_LR[self.model])
        if self.max_grad_norm is None and isinstance(self.model, str) and self.model in DEFAULT_MAX_GRAD_NORM:
            object.__setattr__(self, "max_grad_norm", DEFAULT_MAX_GRAD_NORM[self.model])

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainingSpec:
        """Build from JSON-like input; unknown keys and wrong types raise ``InvalidSpec``.

        Structural checks only (types, ranges that need no schema); call ``validate(columns)``
        for the checks against the dataset's declared columns.
        """
        if not isinstance(d, Mapping):
            raise InvalidSpec("training spec must be an object", field="spec")
        allowed = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(d) - allowed)
        if unknown:
            raise _fail(str(unknown[0]), f"unknown key (allowed: {', '.join(sorted(allowed))})")
        for req in ("dataset", "model", "features", "label"):
            if req not in d:
                raise _fail(req, "required")
        feats = d["features"]
        if not isinstance(feats, list | tuple) or not all(isinstance(f, str) for f in feats):
            raise _fail("features", "must be a list of column names")
        hidden = d.get("hidden")
        if hidden is not None:
            if not isinstance(hidden, list | tuple) or not all(
                isinstance(h, int) and not isinstance(h, bool) for h in hidden
            ):
                raise _fail("hidden", "must be a list of positive integers")
            hidden = tuple(hidden)
        kwargs: dict[str, Any] = {k: v for k, v in d.items() if k not in ("features", "hidden")}
        spec = cls(features=tuple(feats), hidden=hidden, **kwargs)
        spec.check_structure()
        return spec

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict; ``from_dict(to_dict())`` round-trips."""
        d = asdict(self)
        d["features"] = list(self.features)
        d["hidden"] = list(self.hidden) if self.hidden is not None else None
        return d

    # ---- validation ---------------------------------------------------------------------------
    def hidden_sizes(self) -> tuple[int, ...]:
        """Hidden layer widths actually used (empty for non-mlp models)."""
        if self.model != "mlp":
            return ()
        return self.hidden if self.hidden is not None else DEFAULT_MLP_HIDDEN

    def check_structure(self) -> None:
        """Schema-free checks: types, finiteness and ranges of every field."""

        def is_int(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        def is_num(v: Any) -> bool:
            return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(float(v))

        if not isinstance(self.dataset, str) or not self.dataset:
            raise _fail("dataset", "must be a non-empty string")
        if self.model not in MODELS:
            raise _fail("model", f"unknown model {self.model!r} (choose one of {', '.join(MODELS)})")
        if not self.features:
            raise _fail("features", "at least one feature column is required")
        if len(self.features) > MAX_FEATURES:
            raise _fail("features", f"at most {MAX_FEATURES} feature columns")
        lowered = [f.lower() for f in self.features]
        dup = next((f for f in lowered if lowered.count(f) > 1), None)
        if dup is not None:
            raise _fail("features", f"column {dup!r} listed twice")
        if not isinstance(self.label, str) or not self.label:
            raise _fail("label", "must be a column name")
        if self.label.lower() in lowered:
            raise _fail("label", f"the label {self.label!r} cannot also be a feature")
        if not is_int(self.rounds) or not 1 <= self.rounds <= MAX_ROUNDS:
            raise _fail("rounds", f"must be an integer in 1..{MAX_ROUNDS}, got {self.rounds!r}")
        if not is_int(self.local_epochs) or not 1 <= self.local_epochs <= MAX_LOCAL_EPOCHS:
            raise _fail(
                "local_epochs", f"must be an integer in 1..{MAX_LOCAL_EPOCHS}, got {self.local_epochs!r}"
            )
        if not is_int(self.batch_size) or not 1 <= self.batch_size <= MAX_BATCH_SIZE:
            raise _fail("batch_size", f"must be an integer in 1..{MAX_BATCH_SIZE}, got {self.batch_size!r}")
        if not is_num(self.lr) or not 0 < self.lr <= MAX_LR:
            raise _fail("lr", f"must be a number in (0, {MAX_LR:g}], got {self.lr!r}")
        if not is_num(self.target_epsilon) or not 0 < self.target_epsilon <= MAX_TARGET_EPSILON:
            raise _fail(
                "target_epsilon",
                f"must be a finite number in (0, {MAX_TARGET_EPSILON:g}], got {self.target_epsilon!r}",
            )
        if self.delta is not None and (not is_num(self.delta) or not 0 < self.delta < 1):
            raise _fail("delta", f"must be in (0, 1) or null (use the dataset's delta), got {self.delta!r}")
        if not is_num(self.max_grad_norm) or not 0 < self.max_grad_norm <= MAX_GRAD_NORM:
            raise _fail(
                "max_grad_norm", f"must be a number in (0, {MAX_GRAD_NORM:g}], got {self.max_grad_norm!r}"
            )
        if self.where is not None and (not isinstance(self.where, str) or len(self.where) > MAX_WHERE_CHARS):
            raise _fail("where", f"must be a string of at most {MAX_WHERE_CHARS} characters or null")
        if self.hidden is not None:
            if self.model != "mlp" and len(self.hidden) > 0:
                raise _fail("hidden", f"hidden layers apply to model 'mlp' only, not {self.model!r}")
            if self.model == "mlp":
                if not 1 <= len(self.hidden) <= MAX_HIDDEN_LAYERS:
                    raise _fail("hidden", f"an mlp needs 1..{MAX_HIDDEN_LAYERS} hidden layers")
                for h in self.hidden:
                    if not is_int(h) or not 1 <= h <= MAX_HIDDEN_WIDTH:
                        raise _fail(
                            "hidden",
                            f"each hidden width must be an integer in 1..{MAX_HIDDEN_WIDTH}, got {h!r}",
                        )

    def validate(self, columns: Iterable[Any]) -> LabelInfo:
        """Check the spec against the dataset's declared columns; return how the label is learned.

        Raises ``InvalidSpec`` naming the field and the reason (unknown column, text feature,
        wrong label type for the model, undeclared bounds, too many parameters, ...).
        """
        self.check_structure()
        cols = column_dicts(columns)
        for name in self.features:
            col = cols.get(name.lower())
            if col is None:
                raise _fail("features", f"column {name!r} is not declared in dataset {self.dataset!r}")
            _check_trainable(col, "features")
            if col["type"] in NUMERIC_TYPES and _declared_bounds(col) is None:
                raise _fail("features", f"numeric column {col['name']!r} needs declared finite min <= max")
            if col["type"] == "category" and not category_values(col):
                raise _fail("features", f"category column {col['name']!r} has no declared values")
        lcol = cols.get(self.label.lower())
        if lcol is None:
            raise _fail("label", f"column {self.label!r} is not declared in dataset {self.dataset!r}")
        _check_trainable(lcol, "label")
        info = label_info(self.model, lcol)
        n_params = count_params(self, encoded_width(self, cols.values()), info.n_classes)
        if n_params > MAX_PARAMS:
            raise _fail(
                "hidden" if self.model == "mlp" else "features",
                f"model would have {n_params} parameters (limit {MAX_PARAMS})",
            )
        return info


def _check_trainable(col: Mapping[str, Any], field_name: str) -> None:
    ctype = col.get("type")
    if ctype not in COLUMN_TYPES:
        raise _fail(field_name, f"column {col['name']!r} has unknown type {ctype!r}")
    if ctype == "text":
        raise _fail(field_name, f"text column {col['name']!r} cannot be used for training")
    uses = col.get("uses") or ()
    if not any(u in TRAINING_USES for u in uses):
        raise _fail(
            field_name,
            f"column {col['name']!r} is not declared for aggregate use (uses={list(uses)!r}); "
            "its values may not reach a model",
        )


def label_info(model: str, col: Mapping[str, Any]) -> LabelInfo:
    """How ``model`` learns declared column ``col``; ``InvalidSpec`` if the types do not fit.

    logreg: bool, two-value category (positive class = values[1]) or int with bounds 0..1.
    softmax: category with >= 2 values. linreg: int/float with finite min < max (scaled to
    [0, 1] by the declared bounds). mlp: any of these — classification for category, bool or a
    0..1 int, regression for other numeric labels.
    """
    name, ctype = col["name"], col["type"]
    bounds = _declared_bounds(col)
    is01 = ctype == "int" and bounds == (0.0, 1.0)

    def classes_of() -> tuple[str, ...]:
        return ("0", "1") if is01 else category_values(col)

    if model == "logreg":
        if ctype == "bool" or is01 or (ctype == "category" and len(category_values(col)) == 2):
            return LabelInfo(name, "classification", 2, classes_of())
        raise _fail("label", f"logreg needs a bool, two-value category or 0/1 int label; {name!r} is {ctype}")
    if model == "softmax":
        vals = category_values(col) if ctype == "category" else ()
        if len(vals) >= 2:
            return LabelInfo(name, "classification", len(vals), vals)
        raise _fail(
            "label", f"softmax needs a category label with at least 2 declared values; {name!r} is {ctype}"
        )
    if model == "linreg" or (model == "mlp" and ctype in NUMERIC_TYPES and not is01):
        if ctype not in NUMERIC_TYPES:
            raise _fail("label", f"{model} regression needs an int or float label; {name!r} is {ctype}")
        if bounds is None or bounds[0] >= bounds[1]:
            raise _fail("label", f"regression label {name!r} needs declared finite bounds min < max")
        return LabelInfo(name, "regression", 0, None, bounds[0], bounds[1])
    if model == "mlp":
        vals = classes_of() if (ctype in ("bool", "category") or is01) else ()
        if len(vals) >= 2:
            return LabelInfo(name, "classification", len(vals), vals)
        raise _fail("label", f"mlp label {name!r} ({ctype}) needs >= 2 classes or numeric bounds")
    raise _fail("model", f"unknown model {model!r}")


def encoded_width(spec: TrainingSpec, columns: Iterable[Mapping[str, Any]]) -> int:
    """Number of input features after encoding (numeric/bool: 1, category: one-hot width)."""
    cols = {c["name"].lower(): c for c in columns}
    return sum(column_width(cols[f.lower()]) for f in spec.features)


def layer_sizes(spec: TrainingSpec, n_features: int, n_classes: int) -> list[int]:
    """Widths from input to output, e.g. [30, 64, 64, 2] (the architecture the zoo builds)."""
    if spec.model in ("logreg", "linreg"):
        out = 1
    elif spec.model == "softmax":
        out = n_classes
    else:
        out = n_classes if n_classes >= 2 else 1
    return [n_features, *spec.hidden_sizes(), out]


def count_params(spec: TrainingSpec, n_features: int, n_classes: int) -> int:
    """Number of trainable parameters of the zoo model (weights + biases)."""
    sizes = layer_sizes(spec, n_features, n_classes)
    return sum((a + 1) * b for a, b in itertools.pairwise(sizes))


def spec_from_any(spec: TrainingSpec | Mapping[str, Any]) -> TrainingSpec:
    """Accept a ``TrainingSpec`` or its dict form."""
    return spec if isinstance(spec, TrainingSpec) else TrainingSpec.from_dict(spec)


__all__ = [
    "MODELS",
    "LabelInfo",
    "TrainingSpec",
    "category_values",
    "column_dicts",
    "column_width",
    "count_params",
    "encoded_width",
    "label_info",
    "layer_sizes",
    "spec_from_any",
]
