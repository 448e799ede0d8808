"""Normalised WHERE predicates: small dataclasses a node turns back into SQL (no sqlglot objects).

The planner (``xdp_compute.query.parse``) produces these from the analyst's WHERE clause after
checking every column and literal against the manifest; the plan carries them as JSON to the
nodes. Literals are typed by the column they are compared with: ``float``/``int`` for numeric
columns, ``bool`` for bool columns, ``str`` (a declared value) for category columns.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from xdp_compute.errors import InvalidQuery

Scalar = bool | int | float | str

COMPARISON_OPS = ("=", "<>", "<", "<=", ">", ">=")
MAX_IN_LIST = 1000
MAX_PREDICATE_NODES = 500
MAX_PREDICATE_DEPTH = 64


@dataclass(frozen=True)
class Compare:
    """``column op value`` with the column always on the left (``5 < age`` is stored as ``age > 5``)."""

    column: str
    op: str
    value: Scalar


@dataclass(frozen=True)
class InList:
    """``column [NOT] IN (v1, v2, ...)`` over literals only."""

    column: str
    values: tuple[Scalar, ...]
    negated: bool = False


@dataclass(frozen=True)
class Between:
    """``column [NOT] BETWEEN low AND high`` (inclusive, as in SQL)."""

    column: str
    low: Scalar
    high: Scalar
    negated: bool = False


@dataclass(frozen=True)
class IsNull:
    """``column IS [NOT] NULL``; a value that does not cast to the declared type counts as NULL."""

    column: str
    negated: bool = False


@dataclass(frozen=True)
class And:
    items: tuple[Predicate, ...]


@dataclass(frozen=True)
class Or:
    items: tuple[Predicate, ...]


@dataclass(frozen=True)
class Not:
    item: Predicate


Predicate = Compare | InList | Between | IsNull | And | Or | Not


def _lit_to_json(v: Scalar) -> Any:
    return v


def _lit_from_json(v: Any, where: str) -> Scalar:
    if isinstance(v, bool | str):
        return v
    if isinstance(v, int):
        return v
    if isinstance(v, float) and math.isfinite(v):
        return v
    raise InvalidQuery(f"malformed plan: {where}: literal must be a finite number, string or boolean")


def predicate_to_dict(p: Predicate) -> dict[str, Any]:
    """JSON-able form, tagged by ``op``."""
    if isinstance(p, Compare):
        return {"op": "compare", "column": p.column, "cmp": p.op, "value": _lit_to_json(p.value)}
    if isinstance(p, InList):
        return {"op": "in", "column": p.column, "values": [_lit_to_json(v) for v in p.values],
                "negated": p.negated}
    if isinstance(p, Between):
        return {"op": "between", "column": p.column, "low": _lit_to_json(p.low),
                "high": _lit_to_json(p.high), "negated": p.negated}
    if isinstance(p, IsNull):
        return {"op": "is_null", "column": p.column, "negated": p.negated}
    if isinstance(p, And):
        return {"op": "and", "items": [predicate_to_dict(i) for i in p.items]}
    if isinstance(p, Or):
        return {"op": "or", "items": [predicate_to_dict(i) for i in p.items]}
    if isinstance(p, Not):
        return {"op": "not", "item": predicate_to_dict(p.item)}
    raise TypeError(f"not a predicate: {type(p).__name__}")


def predicate_from_dict(d: Any, _depth: int = 0) -> Predicate:
    """Inverse of ``predicate_to_dict``; raises ``InvalidQuery`` on anything malformed (input from the wire)."""
    if _depth > MAX_PREDICATE_DEPTH:
        raise InvalidQuery("malformed plan: WHERE predicate nested too deeply")
    if not isinstance(d, dict) or not isinstance(d.get("op"), str):
        raise InvalidQuery("malformed plan: WHERE predicate must be an object with an 'op'")
    op = d["op"]

    def col() -> str:
        c = d.get("column")
        if not isinstance(c, str) or not c:
            raise InvalidQuery(f"malformed plan: WHERE {op}: 'column' must be a name")
        return c

    def flag(key: str) -> bool:
        v = d.get(key, False)
        if not isinstance(v, bool):
            raise InvalidQuery(f"malformed plan: WHERE {op}: '{key}' must be true or false")
        return v

    if op == "compare":
        cmp = d.get("cmp")
        if cmp not in COMPARISON_OPS:
            raise InvalidQuery(f"malformed plan: WHERE compare: unknown operator {cmp!r}")
        return Compare(col(), cmp, _lit_from_json(d.get("value"), "WHERE compare"))
    if op == "in":
        vals = d.get("values")
        if not isinstance(vals, list) or not vals or len(vals) > MAX_IN_LIST:
            raise InvalidQuery(f"malformed plan: WHERE in: 'values' must be a list of 1..{MAX_IN_LIST} literals")
        return InList(col(), tuple(_lit_from_json(v, "WHERE in") for v in vals), flag("negated"))
    if op == "between":
        return Between(col(), _lit_from_json(d.get("low"), "WHERE between"),
                       _lit_from_json(d.get("high"), "WHERE between"), flag("negated"))
    if op == "is_null":
        return IsNull(col(), flag("negated"))
    if op in ("and", "or"):
        items = d.get("items")
        if not isinstance(items, list) or len(items) < 2:
            raise InvalidQuery(f"malformed plan: WHERE {op}: 'items' must list at least two predicates")
        parsed = tuple(predicate_from_dict(i, _depth + 1) for i in items)
        return And(parsed) if op == "and" else Or(parsed)
    if op == "not":
        return Not(predicate_from_dict(d.get("item"), _depth + 1))
    raise InvalidQuery(f"malformed plan: unknown WHERE predicate {op!r}")


def predicate_columns(p: Predicate) -> list[str]:
    """Column names referenced, in first-seen order, without duplicates."""
    out: list[str] = []

    def visit(q: Predicate) -> None:
        if isinstance(q, And | Or):
            for i in q.items:
                visit(i)
        elif isinstance(q, Not):
            visit(q.item)
        elif q.column not in out:
            out.append(q.column)

    visit(p)
    return out


def predicate_size(p: Predicate) -> int:
    """Number of nodes (used to cap the size of a WHERE clause)."""
    if isinstance(p, And | Or):
        return 1 + sum(predicate_size(i) for i in p.items)
    if isinstance(p, Not):
        return 1 + predicate_size(p.item)
    return 1
