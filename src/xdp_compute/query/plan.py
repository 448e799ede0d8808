"""The federated DP query plan: what every node computes, and how it is encoded for secure aggregation.

``plan_query(sql, dataset)`` turns the analyst's SQL into a ``QueryPlan``:

* ``cells`` — every combination of the group columns' declared values (cross product, in GROUP
  BY order), so the set of released cells never depends on the data;
* ``measurements`` — the de-duplicated per-cell sums each node contributes (:class:`CellTotal`):
  ``count`` (of rows, or of non-NULL values of a column), ``sum`` and ``sumsq`` of values clipped
  to the declared bounds, each with its per-row contribution bound ``bound`` (1 for counts,
  B = max(|min|, |max|) for sums, B^2 for sums of squares) and its fixed-point scale ``frac_bits``;
* ``outputs`` — the SELECT list in order, each aggregate pointing at the measurements it is
  derived from.

A node's vector is cell-major: entry ``cell * len(measurements) + m``. Values are fixed point,
``round(total * 2**frac_bits)`` as a two's-complement integer modulo 2^64 (the ring of the
secure-aggregation masks, Bonawitz et al. 2017 §3 "inputs in Z_R"), encoded by the one codec in
:mod:`xdp_compute.crypto.fixedpoint` (``encode_fixed``, ``to_ring``, ``from_ring`` are
re-exported here for the plan's users).

The plan travels to nodes as JSON (``to_dict``/``from_dict``); a node re-derives it from the SQL
against its *own* manifest with ``validate_plan_for`` and refuses any difference.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np
from sqlglot import exp

from xdp_compute.crypto.fixedpoint import decode, encode_fixed, from_ring, to_ring
from xdp_compute.domain.manifest import ColumnSpec, DatasetSpec
from xdp_compute.errors import InvalidQuery
from xdp_compute.query.parse import ParsedAggregate, ParsedGroupRef, parse_query
from xdp_compute.query.where import Predicate, predicate_columns, predicate_from_dict, predicate_to_dict

PLAN_VERSION = 1
DEFAULT_MAX_ROWS_PER_NODE = 2**32
DEFAULT_MAX_PARTIES = 128
DEFAULT_MAX_CELLS = 10_000
MAX_VECTOR_LENGTH = 500_000
MAX_FRAC_BITS = 24
# Each node's value must satisfy |v| * max_parties < 2^62: the n-way sum then stays below 2^62 in
# magnitude, leaving the top bit of the signed 64-bit ring for the noise.
HEADROOM_BITS = 62

MEASUREMENT_KINDS = ("count", "sum", "sumsq")
OUTPUT_KINDS = ("group", "count", "sum", "avg", "variance", "stddev")
# measurement kinds each output is derived from (in this order in ``OutputColumn.inputs``)
_NEEDS: dict[str, tuple[str, ...]] = {
    "count": ("count",),
    "sum": ("sum",),
    "avg": ("count", "sum"),
    "variance": ("count", "sum", "sumsq"),
    "stddev": ("count", "sum", "sumsq"),
}

__all__ = [
    "DEFAULT_MAX_CELLS",
    "DEFAULT_MAX_PARTIES",
    "DEFAULT_MAX_ROWS_PER_NODE",
    "HEADROOM_BITS",
    "MAX_FRAC_BITS",
    "MAX_VECTOR_LENGTH",
    "MEASUREMENT_KINDS",
    "OUTPUT_KINDS",
    "PLAN_VERSION",
    "CellTotal",
    "OutputColumn",
    "QueryPlan",
    "decode_totals",
    "encode_fixed",
    "frac_bits_for",
    "from_ring",
    "headroom_guaranteed",
    "plan_query",
    "to_ring",
    "validate_plan_for",
]


# ---------------------------------------------------------------------------------------------
# fixed-point scale (the encoding itself: xdp_compute.crypto.fixedpoint)


def frac_bits_for(bound: float, *, max_rows_per_node: int = DEFAULT_MAX_ROWS_PER_NODE,
                  max_parties: int = DEFAULT_MAX_PARTIES) -> int:
    """Largest f in [0, 24] with max_rows_per_node * bound * 2^f * max_parties < 2^62 (0 if none).

    Computed in exact rational arithmetic. When even f = 0 does not satisfy the inequality the
    worst case could overflow; the node then checks its actual values (``check_headroom``).
    """
    b = Fraction(abs(bound))
    scale = Fraction(max_rows_per_node) * Fraction(max_parties) * b
    for f in range(MAX_FRAC_BITS, -1, -1):
        if scale * (1 << f) < (1 << HEADROOM_BITS):
            return f
    return 0


def headroom_guaranteed(bound: float, frac_bits: int, *, max_rows_per_node: int, max_parties: int) -> bool:
    """Whether the worst case (every row at the bound on every party) provably fits in 2^62."""
    return Fraction(max_rows_per_node) * Fraction(max_parties) * Fraction(abs(bound)) * (1 << frac_bits) \
        < (1 << HEADROOM_BITS)


# ---------------------------------------------------------------------------------------------
# plan types


@dataclass(frozen=True)
class CellTotal:
    """One per-cell total every node contributes (an entry of ``QueryPlan.measurements``).

    Not to be confused with :class:`xdp_compute.privacy.Measurement`, what the accountant
    calibrates noise for: the vector of one ``CellTotal`` over all cells, with its sensitivity.

    ``bound`` is the most one row can change this total (L1 = L2 per row and per measurement):
    1 for counts, B = max(|min|, |max|) for sums of clipped values, B^2 for sums of squares.
    """

    kind: str
    column: str | None
    bound: float
    frac_bits: int

    @property
    def key(self) -> str:
        """Stable name: ``count``, ``count(age)``, ``sum(age)``, ``sumsq(age)``."""
        return self.kind if self.column is None else f"{self.kind}({self.column})"

    @property
    def scale(self) -> int:
        """2^frac_bits: multiply a real total by this to get the encoded integer."""
        return 1 << self.frac_bits

    @property
    def sensitivity(self) -> int:
        """Per-row sensitivity in encoded integer units: 1 for counts, ceil(B * 2^f) + 1 for sums.

        The +1 covers rounding the float sum once (|round(a) - round(b)| <= |a - b| + 1).
        """
        if self.kind == "count":
            return 1
        return math.ceil(Fraction(self.bound) * self.scale) + 1

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "column": self.column, "bound": self.bound, "frac_bits": self.frac_bits}


@dataclass(frozen=True)
class OutputColumn:
    """One SELECT item in order: a group column or an aggregate derived from ``inputs``.

    ``inputs`` are indices into ``QueryPlan.measurements``, in the order (count, sum, sumsq) as
    far as the kind needs them (count: count; sum: sum; avg: count, sum; variance/stddev: count,
    sum, sumsq). ``function`` is the SQL function as written (e.g. VAR_SAMP, computed as the
    population variance).
    """

    alias: str
    kind: str
    column: str | None
    function: str | None = None
    inputs: tuple[int, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"alias": self.alias, "kind": self.kind, "column": self.column, "function": self.function,
                "inputs": list(self.inputs)}


@dataclass(frozen=True)
class QueryPlan:
    """Everything a node needs to compute its vector, and the gateway needs to interpret the sum."""

    sql: str
    dataset: str
    group_columns: tuple[str, ...]
    cells: tuple[tuple[str, ...], ...]
    outputs: tuple[OutputColumn, ...]
    measurements: tuple[CellTotal, ...]
    where: Predicate | None
    columns: tuple[ColumnSpec, ...]
    max_rows_per_node: int = DEFAULT_MAX_ROWS_PER_NODE
    max_parties: int = DEFAULT_MAX_PARTIES
    version: int = PLAN_VERSION

    # -- shape

    @property
    def vector_length(self) -> int:
        return len(self.cells) * len(self.measurements)

    def index(self, cell: int, measurement: int) -> int:
        """Position of (cell, measurement) in a node's vector (cell-major)."""
        return cell * len(self.measurements) + measurement

    def column(self, name: str) -> ColumnSpec:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(name)

    def measurement_index(self, kind: str, column: str | None) -> int:
        for i, m in enumerate(self.measurements):
            if m.kind == kind and m.column == column:
                return i
        raise KeyError((kind, column))

    def sensitivities(self) -> tuple[int, ...]:
        """Per-measurement sensitivity in encoded units (one row touches one cell, every measurement)."""
        return tuple(m.sensitivity for m in self.measurements)

    def frac_bits_vector(self) -> tuple[int, ...]:
        """frac_bits of each vector entry (cell-major), for decoding the aggregated vector."""
        return tuple(m.frac_bits for _ in self.cells for m in self.measurements)

    # -- wire form

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "sql": self.sql,
            "dataset": self.dataset,
            "group_columns": list(self.group_columns),
            "cells": [list(c) for c in self.cells],
            "outputs": [o.to_dict() for o in self.outputs],
            "measurements": [m.to_dict() for m in self.measurements],
            "where": predicate_to_dict(self.where) if self.where is not None else None,
            "columns": [c.to_dict() for c in self.columns],
            "max_rows_per_node": self.max_rows_per_node,
            "max_parties": self.max_parties,
        }

    def to_json(self) -> str:
        """Canonical JSON (sorted keys, no spaces): what ``digest`` hashes."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                          allow_nan=False)

    def digest(self) -> str:
        """SHA-256 hex of the canonical JSON: names this exact plan in approvals, tasks and the log."""
        return hashlib.sha256(self.to_json().encode("utf-8")).hexdigest()

    @classmethod
    def from_dict(cls, d: Any) -> QueryPlan:
        """Rebuild a plan from its wire form; raises ``InvalidQuery`` on anything malformed.

        Structural checks only: a node must still call ``validate_plan_for`` against its manifest.
        """
        try:
            return _plan_from_dict(d)
        except InvalidQuery:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise InvalidQuery(f"malformed plan: {type(e).__name__}: {e}") from None


def decode_totals(plan: QueryPlan, vector: np.ndarray | list[int]) -> np.ndarray:
    """float64 array (cells x measurements) of the real totals in a node's or an aggregated vector.

    Reads each measurement's entries with its own ``frac_bits`` through the fixed-point codec
    (two's complement, times 2^-frac_bits: exact in binary floating point).
    """
    vals = np.asarray(vector, dtype=np.uint64)
    if vals.shape != (plan.vector_length,):
        raise ValueError(f"vector has {vals.size} entries; the plan needs {plan.vector_length}")
    by_cell = vals.reshape(len(plan.cells), len(plan.measurements))
    return np.column_stack([decode(by_cell[:, j], m.frac_bits) for j, m in enumerate(plan.measurements)])


def _req(d: dict[str, Any], key: str, typ: type) -> Any:
    v = d.get(key)
    if not isinstance(v, typ) or (isinstance(v, bool) and typ is not bool):
        raise InvalidQuery(f"malformed plan: '{key}' is missing or has the wrong type")
    return v


def _plan_from_dict(d: Any) -> QueryPlan:
    if not isinstance(d, dict):
        raise InvalidQuery("malformed plan: expected an object")
    version = _req(d, "version", int)
    if version != PLAN_VERSION:
        raise InvalidQuery(f"unsupported plan version {version} (this node understands {PLAN_VERSION})")
    max_rows = _req(d, "max_rows_per_node", int)
    max_parties = _req(d, "max_parties", int)
    if not 1 <= max_rows <= 2**48 or not 1 <= max_parties <= 2**16:
        raise InvalidQuery("malformed plan: max_rows_per_node or max_parties out of range")
    group_columns = tuple(_req(d, "group_columns", list))
    cells_raw = _req(d, "cells", list)
    if len(cells_raw) > DEFAULT_MAX_CELLS * 10:
        raise InvalidQuery("malformed plan: too many cells")
    cells = tuple(tuple(c) for c in cells_raw)
    if any(len(c) != len(group_columns) or not all(isinstance(v, str) for v in c) for c in cells):
        raise InvalidQuery("malformed plan: each cell must list one declared value per group column")
    measurements = []
    for m in _req(d, "measurements", list):
        if not isinstance(m, dict) or m.get("kind") not in MEASUREMENT_KINDS:
            raise InvalidQuery("malformed plan: bad measurement")
        bound = m.get("bound")
        fb = m.get("frac_bits")
        if isinstance(bound, bool) or not isinstance(bound, int | float) or not math.isfinite(bound) or bound < 0:
            raise InvalidQuery("malformed plan: measurement bound must be a finite non-negative number")
        if isinstance(fb, bool) or not isinstance(fb, int) or not 0 <= fb <= MAX_FRAC_BITS:
            raise InvalidQuery("malformed plan: frac_bits out of range")
        col = m.get("column")
        if col is not None and not isinstance(col, str):
            raise InvalidQuery("malformed plan: measurement column must be a name or null")
        measurements.append(CellTotal(m["kind"], col, float(bound), fb))
    outputs = []
    for o in _req(d, "outputs", list):
        if not isinstance(o, dict) or o.get("kind") not in OUTPUT_KINDS or not isinstance(o.get("alias"), str):
            raise InvalidQuery("malformed plan: bad output column")
        inputs = o.get("inputs") or []
        if not isinstance(inputs, list) or not all(isinstance(i, int) and 0 <= i < len(measurements)
                                                  for i in inputs):
            raise InvalidQuery("malformed plan: output inputs must index measurements")
        col = o.get("column")
        fn = o.get("function")
        if (col is not None and not isinstance(col, str)) or (fn is not None and not isinstance(fn, str)):
            raise InvalidQuery("malformed plan: bad output column")
        outputs.append(OutputColumn(o["alias"], o["kind"], col, fn, tuple(inputs)))
    where_raw = d.get("where")
    where = predicate_from_dict(where_raw) if where_raw is not None else None
    cols_raw = _req(d, "columns", list)
    columns = []
    for c in cols_raw:
        if not isinstance(c, dict):
            raise InvalidQuery("malformed plan: bad column snapshot")
        columns.append(ColumnSpec.from_dict(c))
    return QueryPlan(
        sql=_req(d, "sql", str), dataset=_req(d, "dataset", str), group_columns=group_columns, cells=cells,
        outputs=tuple(outputs), measurements=tuple(measurements), where=where, columns=tuple(columns),
        max_rows_per_node=max_rows, max_parties=max_parties, version=version,
    )


# ---------------------------------------------------------------------------------------------
# planning


def _bound_magnitude(spec: ColumnSpec) -> float:
    """B = max(|min|, |max|) of the value a row contributes (1 for bool and two-valued categories)."""
    if spec.numeric:
        assert spec.min is not None and spec.max is not None
        return max(abs(float(spec.min)), abs(float(spec.max)))
    return 1.0


def _default_alias(item: ParsedAggregate | ParsedGroupRef) -> str:
    if isinstance(item, ParsedGroupRef):
        return item.column.lower()
    return item.kind if item.column is None else f"{item.kind}_{item.column.lower()}"


def _aliases(select: tuple[ParsedAggregate | ParsedGroupRef, ...]) -> list[str]:
    """Explicit aliases as written (must be unique ignoring case); defaults made unique with _2, _3..."""
    explicit = [s.alias for s in select if s.alias is not None]
    seen_explicit: set[str] = set()
    for a in explicit:
        if a.lower() in seen_explicit:
            raise InvalidQuery(f"output name '{a}' is used twice in SELECT: give each column its own alias",
                               construct="duplicate alias", clause="SELECT")
        seen_explicit.add(a.lower())
    taken = set(seen_explicit)
    out: list[str] = []
    for s in select:
        if s.alias is not None:
            out.append(s.alias)
            continue
        base = _default_alias(s)
        name, n = base, 1
        while name.lower() in taken:
            n += 1
            name = f"{base}_{n}"
        taken.add(name.lower())
        out.append(name)
    return out


def plan_query(sql: str, dataset: DatasetSpec, *, max_rows_per_node: int | None = None,
               max_parties: int = DEFAULT_MAX_PARTIES, max_cells: int = DEFAULT_MAX_CELLS,
               statement: exp.Select | None = None) -> QueryPlan:
    """Parse, check against ``dataset``'s manifest and plan ``sql``; raise ``InvalidQuery`` (400) otherwise.

    ``max_rows_per_node`` (default: the dataset's declared ``max_rows``) and ``max_parties`` size
    the fixed-point scale (see ``frac_bits_for``); a plan whose worst case (every row at its
    declared bound on every party) could overflow the ring is refused here, from public inputs
    only, so a node's true totals never overflow and no node can fail on its data (issue #11);
    ``max_cells`` caps the cross product of the group columns' declared values. ``statement``:
    the tree ``parse_statement`` already made of ``sql`` (the gateway parses a query once).
    """
    if max_rows_per_node is None:
        max_rows_per_node = dataset.max_rows
    if not 1 <= max_rows_per_node <= 2**48 or not 1 <= max_parties <= 2**16:
        raise ValueError("max_rows_per_node must be in [1, 2^48] and max_parties in [1, 2^16]")
    parsed = parse_query(statement if statement is not None else sql, dataset)

    # cells: the cross product of declared values, never the values present in the data
    value_lists = []
    n_cells = 1
    for g in parsed.group_by:
        spec = dataset.column(g)
        assert spec is not None and spec.values is not None
        value_lists.append(spec.values)
        n_cells *= len(spec.values)
        if n_cells > max_cells:
            raise InvalidQuery(f"GROUP BY {', '.join(parsed.group_by)} gives more than {max_cells} cells "
                               f"(the cross product of the declared values): group by fewer columns",
                               construct="too many cells", clause="GROUP BY", max_cells=max_cells)
    cells = tuple(tuple(c) for c in itertools.product(*value_lists))

    # measurements, de-duplicated in first-use order
    measurements: list[CellTotal] = []
    index: dict[tuple[str, str | None], int] = {}

    def need(kind: str, column: str | None) -> int:
        key = (kind, column)
        if key not in index:
            if column is None:
                bound = 1.0
            else:
                spec = dataset.column(column)
                assert spec is not None
                b = _bound_magnitude(spec)
                bound = 1.0 if kind == "count" else (b if kind == "sum" else b * b)
            fb = 0 if kind == "count" else frac_bits_for(bound, max_rows_per_node=max_rows_per_node,
                                                         max_parties=max_parties)
            if not headroom_guaranteed(bound, fb, max_rows_per_node=max_rows_per_node, max_parties=max_parties):
                # Refused from public inputs: otherwise a node whose *true* total overflows
                # would fail on its data, and its failure would be a noise-free bit.
                what = f"{kind.upper()}({column})" if column else kind.upper()
                raise InvalidQuery(
                    f"{what} could overflow: declared bound {bound:g} per row x max_rows "
                    f"{max_rows_per_node} per node x {max_parties} parties exceeds 2^{HEADROOM_BITS}; "
                    "a holder can declare a smaller max_rows or tighter column bounds",
                    construct="overflow", column=column)
            index[key] = len(measurements)
            measurements.append(CellTotal(kind, column, bound, fb))
        return index[key]

    aliases = _aliases(parsed.select)
    outputs: list[OutputColumn] = []
    for item, alias in zip(parsed.select, aliases, strict=True):
        if isinstance(item, ParsedGroupRef):
            outputs.append(OutputColumn(alias, "group", item.column))
        else:
            inputs = tuple(need(k, item.column) for k in _NEEDS[item.kind])
            outputs.append(OutputColumn(alias, item.kind, item.column, item.function, inputs))
    if len(cells) * len(measurements) > MAX_VECTOR_LENGTH:
        raise InvalidQuery(f"query needs {len(cells)} cells x {len(measurements)} totals, more than "
                           f"{MAX_VECTOR_LENGTH}: group by fewer columns or ask fewer aggregates",
                           construct="too many cells", clause="SELECT")

    referenced: list[str] = list(parsed.group_by)
    for o in outputs:
        if o.column is not None and o.column not in referenced:
            referenced.append(o.column)
    if parsed.where is not None:
        referenced += [c for c in predicate_columns(parsed.where) if c not in referenced]
    columns = tuple(sorted((dataset.column(c) for c in referenced), key=lambda c: c.name))  # type: ignore[arg-type,return-value]

    return QueryPlan(
        sql=sql, dataset=dataset.name, group_columns=parsed.group_by, cells=cells, outputs=tuple(outputs),
        measurements=tuple(measurements), where=parsed.where, columns=columns,
        max_rows_per_node=max_rows_per_node, max_parties=max_parties,
    )


def validate_plan_for(plan: QueryPlan, dataset: DatasetSpec) -> QueryPlan:
    """Re-derive ``plan`` from its SQL against this node's own manifest; refuse any difference.

    Returns the re-derived plan (identical to ``plan``). Raises ``InvalidQuery`` naming what
    differs — e.g. a column's bounds here vs in the plan — or why the SQL is not allowed here
    (a use this holder forbids, an unknown column, ...).
    """
    if plan.dataset != dataset.name:
        raise InvalidQuery(f"plan is for dataset '{plan.dataset}', not '{dataset.name}'")
    mine = plan_query(plan.sql, dataset, max_rows_per_node=plan.max_rows_per_node,
                      max_parties=plan.max_parties, max_cells=max(DEFAULT_MAX_CELLS, len(plan.cells)))
    if mine.to_dict() == plan.to_dict():
        return mine
    theirs = plan.to_dict()
    here = mine.to_dict()
    mine_cols = {c["name"]: c for c in here["columns"]}
    for c in theirs.get("columns", []):
        h = mine_cols.get(c.get("name"))
        if h is None:
            raise InvalidQuery(f"plan does not match this node's manifest: column '{c.get('name')}' is not "
                               "referenced the same way here", construct="plan mismatch")
        for attr in ("type", "min", "max", "values", "uses"):
            if h.get(attr) != c.get(attr):
                raise InvalidQuery(f"plan does not match this node's manifest: column '{c['name']}' {attr} "
                                   f"differs ({h.get(attr)!r} here vs {c.get(attr)!r} in the plan)",
                                   construct="plan mismatch", column=c["name"])
    for key in sorted(here):
        if here[key] != theirs.get(key):
            raise InvalidQuery(f"plan does not match this node's manifest: '{key}' differs",
                               construct="plan mismatch", key=key)
    raise InvalidQuery("plan does not match this node's manifest", construct="plan mismatch")
