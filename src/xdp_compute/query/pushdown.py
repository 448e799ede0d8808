"""Node-local pushdown SQL: one row per present group cell with the plan's measurements.

``local_sql(plan, source_sql, dialect)`` builds, as sqlglot expressions (every literal comes from
the plan and is quoted by sqlglot, never spliced as text), a query of the shape::

    SELECT g0, .., COUNT(*) AS m0, COUNT(v0) AS m1, SUM(v0) AS m2, SUM(v0 * v0) AS m3, ..
    FROM (SELECT <group key> AS g0, .., <clipped value> AS v0, ..
          FROM <source_sql> AS src WHERE <plan's WHERE>) AS t
    WHERE g0 IN (<declared values>) AND ..
    GROUP BY g0, ..

* a numeric column is read as ``NULLIF(TRY_CAST(col AS DOUBLE), 'NaN')`` — a value that does not
  cast (or is NaN) is NULL and is neither counted by COUNT(col) nor summed — and clipped to the
  declared [min, max] with a CASE (not LEAST/GREATEST: both engines' GREATEST skips NULLs, which
  would turn a missing value into the lower bound);
* a bool column contributes 1.0/0.0; a two-valued category contributes 1.0 for its second
  declared value, 0.0 for its first, NULL for anything else;
* a group key is the category value as text (bool: 'true'/'false'); rows whose key is not a
  declared value (or NULL) are excluded, so a node never reveals undeclared values. With
  ``enum_keys`` (DuckDB over Parquet, issue #13) a category key is instead
  ``TRY_CAST(text AS ENUM(<declared values>))`` — NULL for anything not declared, exactly as the
  IN list excludes it — and rows whose key is NULL are left out: on a dictionary-encoded column
  DuckDB casts each dictionary entry once and groups on small integers, where the IN list
  compared every row's string (1M rows: 27 -> 20 ms on one thread). The key is cast back to text
  on the (few) result rows;
* WHERE compares the *unclipped* typed value.

The query is generated in the DuckDB dialect and transpiled by sqlglot to the target dialect
(PostgreSQL has no TRY_CAST: sqlglot emits CAST, so a PostgreSQL column must hold values of
its declared type — ``validate_source`` reports one that does not). Spark SQL (issue #18) keeps
TRY_CAST (Spark >= 3.2), so a bad cell is NULL there too even with ANSI mode on; NaN = NaN is true
in Spark, so the NULLIF drops NaN as in DuckDB; VARCHAR becomes STRING.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping

import sqlglot
from sqlglot import exp

from xdp_compute.domain.manifest import ColumnSpec
from xdp_compute.query.plan import QueryPlan
from xdp_compute.query.where import And, Between, Compare, InList, IsNull, Not, Or, Predicate, Scalar

DIALECTS = ("duckdb", "postgres", "spark")
_CMP_EXP: dict[str, type[exp.Binary]] = {
    "=": exp.EQ, "<>": exp.NEQ, "<": exp.LT, "<=": exp.LTE, ">": exp.GT, ">=": exp.GTE,
}


def _double() -> exp.DataType:
    return exp.DataType.build("DOUBLE")


def _num(value: float) -> exp.Expression:
    """A numeric literal; negative numbers as unary minus so every dialect reads them."""
    if isinstance(value, bool):
        raise TypeError("bool is not a number here")
    lit: exp.Expression = exp.Literal.number(repr(abs(value)) if isinstance(value, float) else str(abs(value)))
    if isinstance(value, float):
        lit = exp.Cast(this=lit, to=_double())
    return exp.Neg(this=lit) if value < 0 else lit


def _literal(value: Scalar) -> exp.Expression:
    if isinstance(value, bool):
        return exp.Boolean(this=value)
    if isinstance(value, str):
        return exp.Literal.string(value)
    return _num(value)


class _Columns:
    """Typed, clipped and key expressions for the plan's columns over the source relation."""

    def __init__(self, plan: QueryPlan, column_map: Mapping[str, str] | None, enum_keys: bool = False) -> None:
        self.plan = plan
        self.column_map = {k.lower(): v for k, v in (column_map or {}).items()}
        self.enum_keys = enum_keys

    def raw(self, name: str) -> exp.Column:
        actual = self.column_map.get(name.lower(), name)
        return exp.column(actual, table="src", quoted=True)

    def spec(self, name: str) -> ColumnSpec:
        return self.plan.column(name)

    def typed(self, name: str) -> exp.Expression:
        """The column as its declared type; values that do not cast become NULL (DuckDB TRY_CAST)."""
        spec = self.spec(name)
        if spec.numeric:
            # NaN is not a usable value: treat it as missing (NaN sorts above every number in both
            # engines, so it would otherwise be clipped to max).
            # safe=True: sqlglot prints a plain TryCast as CAST for Spark, which fails the whole
            # query on one bad cell under ANSI mode (and quotes the cell in its error).
            return exp.Nullif(this=exp.TryCast(this=self.raw(name), to=_double(), safe=True),
                              expression=exp.Cast(this=exp.Literal.string("NaN"), to=_double()))
        if spec.type == "bool":
            return exp.TryCast(this=self.raw(name), to=exp.DataType.build("BOOLEAN"), safe=True)
        return exp.Cast(this=self.raw(name), to=exp.DataType.build("VARCHAR"))

    def value(self, name: str) -> exp.Expression:
        """The per-row value summed for the column, clipped to its declared bounds (NULL stays NULL)."""
        spec = self.spec(name)
        t = self.typed(name)
        if spec.numeric:
            assert spec.min is not None and spec.max is not None
            lo, hi = _num(float(spec.min)), _num(float(spec.max))
            return exp.Case(ifs=[
                exp.If(this=exp.LT(this=t.copy(), expression=lo.copy()), true=lo),
                exp.If(this=exp.GT(this=t.copy(), expression=hi.copy()), true=hi),
            ], default=t)
        one, zero = _num(1.0), _num(0.0)
        if spec.type == "bool":
            return exp.Case(ifs=[
                exp.If(this=exp.EQ(this=t.copy(), expression=exp.true()), true=one),
                exp.If(this=exp.EQ(this=t.copy(), expression=exp.false()), true=zero),
            ])
        assert spec.values is not None and len(spec.values) == 2
        return exp.Case(ifs=[
            exp.If(this=exp.EQ(this=t.copy(), expression=exp.Literal.string(spec.values[1])), true=one),
            exp.If(this=exp.EQ(this=t.copy(), expression=exp.Literal.string(spec.values[0])), true=zero),
        ])

    def key(self, name: str) -> exp.Expression:
        """The group key as text: the category value, or 'true'/'false' for a bool column."""
        spec = self.spec(name)
        t = self.typed(name)
        if spec.type == "bool":
            return exp.Case(ifs=[
                exp.If(this=exp.EQ(this=t.copy(), expression=exp.true()), true=exp.Literal.string("true")),
                exp.If(this=exp.EQ(this=t.copy(), expression=exp.false()), true=exp.Literal.string("false")),
            ])
        if self.enum_keys:
            return exp.TryCast(this=t, to=self.enum(name))
        return t

    def enum(self, name: str) -> exp.DataType:
        """DuckDB's ENUM of the column's declared values (unique: the manifest refuses repeats)."""
        values = self.spec(name).values or ()
        return exp.DataType(this=exp.DataType.Type.ENUM, expressions=[exp.Literal.string(v) for v in values],
                            nested=False)

    def enum_key(self, name: str) -> bool:
        """The group key of ``name`` is an ENUM (``enum_keys`` and a category column)."""
        return self.enum_keys and self.spec(name).type != "bool"

    def predicate(self, p: Predicate) -> exp.Expression:
        if isinstance(p, And | Or):
            parts = [exp.Paren(this=self.predicate(i)) for i in p.items]
            out = parts[0]
            for part in parts[1:]:
                out = (exp.And if isinstance(p, And) else exp.Or)(this=out, expression=part)
            return out
        if isinstance(p, Not):
            return exp.Not(this=exp.Paren(this=self.predicate(p.item)))
        t = self.typed(p.column)
        node: exp.Expression
        if isinstance(p, Compare):
            return _CMP_EXP[p.op](this=t, expression=_literal(p.value))
        if isinstance(p, InList):
            node = exp.In(this=t, expressions=[_literal(v) for v in p.values])
        elif isinstance(p, Between):
            node = exp.Between(this=t, low=_literal(p.low), high=_literal(p.high))
        elif isinstance(p, IsNull):
            node = exp.Is(this=t, expression=exp.Null())
        else:  # pragma: no cover - exhaustive over Predicate
            raise TypeError(type(p).__name__)
        return exp.Not(this=exp.Paren(this=node)) if p.negated else node


def _source_relation(source_sql: str, dialect: str) -> exp.Expression:
    parsed = sqlglot.parse_one(f"SELECT * FROM {source_sql}", read=dialect)
    frm = parsed.args.get("from_") if isinstance(parsed, exp.Select) else None
    if frm is None or parsed.args.get("joins") or parsed.args.get("where"):
        raise ValueError("source_sql must be a single FROM-able relation")
    rel = frm.this
    rel.set("alias", exp.TableAlias(this=exp.to_identifier("src")))
    return rel


class _SqlMemo:
    """The last ``size`` generated queries, keyed by the plan's canonical JSON and the other inputs.

    ``local_sql`` is a pure function of its inputs, and generating it with sqlglot (parsing the
    source relation, then printing a few hundred nodes) took 2-3 ms of a node's ~10 ms per query
    on 10k rows (issue #13); a repeated query, or the same query on a reloaded table, skips it.
    The key is the canonical JSON, not the plan object: equal-comparing values such as 1, 1.0
    and True print as different SQL.
    """

    def __init__(self, size: int = 256) -> None:
        self.size = size
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple[str, str, str, tuple[tuple[str, str], ...], bool], str] = OrderedDict()

    def get(self, plan: QueryPlan, source_sql: str, dialect: str, column_map: Mapping[str, str] | None,
            enum_keys: bool = False) -> str:
        key = (plan.to_json(), source_sql, dialect, tuple(sorted((column_map or {}).items())), enum_keys)
        with self._lock:
            sql = self._entries.get(key)
            if sql is not None:
                self._entries.move_to_end(key)
                return sql
        sql = _generate_local_sql(plan, source_sql, dialect, column_map, enum_keys)
        with self._lock:
            self._entries[key] = sql
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
        return sql


_MEMO = _SqlMemo()


def local_sql(plan: QueryPlan, source_sql: str, dialect: str, *,
              column_map: Mapping[str, str] | None = None, enum_keys: bool = False) -> str:
    """The node-local query for ``plan`` over ``source_sql`` in ``dialect`` ("duckdb", "postgres" or "spark").

    ``source_sql`` is a FROM-able relation from the node's own configuration (DuckDB:
    ``read_csv(...)``/``read_parquet(...)``; PostgreSQL: a quoted table name). ``column_map``
    maps declared column names (case-insensitively) to the source's actual spelling.
    Result columns: one per group column (text), then one per measurement in plan order.
    ``enum_keys`` (DuckDB only): category keys as ENUMs of the declared values (see above); the
    same rows and the same result, faster on a dictionary-encoded Parquet column.
    Memoised (the last 256 distinct inputs): the same inputs give the same text.
    """
    if dialect not in DIALECTS:
        raise ValueError(f"dialect must be one of {DIALECTS}")
    if enum_keys and dialect != "duckdb":
        raise ValueError("enum_keys is for the duckdb dialect only")
    return _MEMO.get(plan, source_sql, dialect, column_map, enum_keys)


def _generate_local_sql(plan: QueryPlan, source_sql: str, dialect: str,
                        column_map: Mapping[str, str] | None, enum_keys: bool = False) -> str:
    if dialect not in DIALECTS:
        raise ValueError(f"dialect must be one of {DIALECTS}")
    cols = _Columns(plan, column_map, enum_keys)

    inner_select: list[exp.Expression] = []
    for i, g in enumerate(plan.group_columns):
        inner_select.append(exp.alias_(cols.key(g), f"g{i}", quoted=True))
    value_alias: dict[str, str] = {}
    for m in plan.measurements:
        if m.column is not None and m.column not in value_alias:
            value_alias[m.column] = f"v{len(value_alias)}"
            inner_select.append(exp.alias_(cols.value(m.column), value_alias[m.column], quoted=True))
    if not inner_select:  # COUNT(*) only, no groups: still select something
        inner_select.append(exp.alias_(exp.Literal.number(1), "one", quoted=True))
    inner = exp.Select(expressions=inner_select).from_(_source_relation(source_sql, dialect), copy=False)
    if plan.where is not None:
        inner = inner.where(cols.predicate(plan.where), copy=False)

    def tcol(name: str) -> exp.Column:
        return exp.column(name, table="t", quoted=True)

    def key_out(i: int, g: str) -> exp.Expression:  # an ENUM key back to text, on the result rows
        return exp.Cast(this=tcol(f"g{i}"), to=exp.DataType.build("VARCHAR")) if cols.enum_key(g) else tcol(f"g{i}")

    outer_select: list[exp.Expression] = [exp.alias_(key_out(i, g), f"g{i}", quoted=True)
                                          for i, g in enumerate(plan.group_columns)]
    for j, m in enumerate(plan.measurements):
        agg: exp.Expression
        if m.kind == "count":
            agg = exp.Count(this=exp.Star() if m.column is None else tcol(value_alias[m.column]))
        elif m.kind == "sum":
            agg = exp.Sum(this=tcol(value_alias[m.column]))  # type: ignore[index]
        else:
            v = value_alias[m.column]  # type: ignore[index]
            agg = exp.Sum(this=exp.Mul(this=tcol(v), expression=tcol(v)))
        outer_select.append(exp.alias_(agg, f"m{j}", quoted=True))
    outer = exp.Select(expressions=outer_select).from_(
        exp.Subquery(this=inner, alias=exp.TableAlias(this=exp.to_identifier("t"))), copy=False)
    if plan.group_columns:
        conds = []
        for i, g in enumerate(plan.group_columns):
            if cols.enum_key(g):  # NULL: not a declared value (or no value)
                conds.append(exp.Not(this=exp.Is(this=tcol(f"g{i}"), expression=exp.Null())))
                continue
            values = cols.spec(g).values or ()
            conds.append(exp.In(this=tcol(f"g{i}"), expressions=[exp.Literal.string(v) for v in values]))
        outer = outer.where(exp.and_(*conds), copy=False)
        outer = outer.group_by(*[tcol(f"g{i}") for i in range(len(plan.group_columns))], copy=False)
    return outer.sql(dialect=dialect)
