"""Parse the analyst's SQL subset with sqlglot and check it against a dataset's manifest.

Accepted shape (one statement)::

    SELECT [group columns,] aggregate [AS alias], ...
    FROM dataset [AS alias]
    [WHERE predicate]
    [GROUP BY group columns]

Aggregates: COUNT(*), COUNT(col), SUM, AVG, VARIANCE / VAR_SAMP / VAR_POP, STDDEV / STDDEV_SAMP /
STDDEV_POP (every variance is computed as the *population* variance: the noisy totals give
sum(x^2)/n - mean^2, and the n-1 correction is meaningless next to DP noise). WHERE takes
column-vs-literal comparisons, IN lists, BETWEEN, IS [NOT] NULL, AND/OR/NOT and parentheses.

Everything else raises ``InvalidQuery`` whose message names the construct, the clause and the
character offset of the fragment, and says why. JOIN (issue #16) is refused shape by shape in
``query.joins``; an inner join of two datasets, until docs/private-joins.md is wired, as not
available yet. Identifiers are case-insensitive (quoted or not);
results use the manifest's spelling of column names.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, TokenError

from xdp_compute.domain.manifest import ColumnSpec, DatasetSpec
from xdp_compute.errors import InvalidQuery
from xdp_compute.query.joins import refuse_join
from xdp_compute.query.where import (
    MAX_IN_LIST,
    MAX_PREDICATE_DEPTH,
    MAX_PREDICATE_NODES,
    And,
    Between,
    Compare,
    InList,
    IsNull,
    Not,
    Or,
    Predicate,
    Scalar,
    predicate_size,
)

READ_DIALECT = "duckdb"
MAX_SQL_CHARS = 20_000
MAX_SELECT_ITEMS = 64
MAX_ALIAS_CHARS = 63

# sqlglot expression class -> (output kind, canonical function name)
_AGGREGATES: dict[type[exp.Expression], str] = {
    exp.Count: "count",
    exp.Sum: "sum",
    exp.Avg: "avg",
    exp.Variance: "variance",  # VARIANCE and VAR_SAMP (population variance, see module doc)
    exp.VariancePop: "variance",
    exp.Stddev: "stddev",
    exp.StddevSamp: "stddev",
    exp.StddevPop: "stddev",
}

# Select clauses we refuse, with the name an analyst knows them by.
_CLAUSE_NAMES = {
    "with_": ("WITH (common table expression)", "queries run directly over one dataset"),
    "distinct": ("DISTINCT", "a set of distinct raw values would reveal rows"),
    "into": ("SELECT INTO", "queries cannot write"),
    "joins": ("JOIN", "queries run over one dataset only"),  # not used: query/joins.py refuses each shape
    "laterals": ("LATERAL", "queries run over one dataset only"),
    "pivots": ("PIVOT", "not in the supported subset"),
    "having": ("HAVING", "filtering on noisy aggregates is done by the analyst after release"),
    "qualify": ("QUALIFY", "window functions are not supported"),
    "windows": ("WINDOW clause", "window functions are not supported"),
    "order": ("ORDER BY", "results come back in the order of the declared group cells"),
    "sort": ("SORT BY", "results come back in the order of the declared group cells"),
    "cluster": ("CLUSTER BY", "not in the supported subset"),
    "distribute": ("DISTRIBUTE BY", "not in the supported subset"),
    "limit": ("LIMIT", "every declared group cell is always returned"),
    "offset": ("OFFSET", "every declared group cell is always returned"),
    "locks": ("FOR UPDATE/SHARE", "queries are read-only aggregates"),
    "for_": ("FOR clause", "not in the supported subset"),
    "sample": ("sampling (TABLESAMPLE / USING SAMPLE)", "not in the supported subset"),
    "connect": ("CONNECT BY", "not in the supported subset"),
    "prewhere": ("PREWHERE", "not in the supported subset"),
    "match": ("MATCH_RECOGNIZE", "not in the supported subset"),
    "settings": ("SETTINGS", "not in the supported subset"),
    "format": ("FORMAT", "not in the supported subset"),
    "options": ("OPTION", "not in the supported subset"),
    "hint": ("optimizer hint", "not in the supported subset"),
    "exclude": ("EXCLUDE", "SELECT * is not supported"),
    "operation_modifiers": ("SELECT modifier", "not in the supported subset"),
    "kind": ("SELECT AS STRUCT/VALUE", "not in the supported subset"),
}
_ALLOWED_SELECT_ARGS = {"expressions", "from_", "where", "group"}

_FLIP = {"=": "=", "<>": "<>", "<": ">", "<=": ">=", ">": "<", ">=": "<="}
_CMP: dict[type[exp.Expression], str] = {
    exp.EQ: "=", exp.NEQ: "<>", exp.LT: "<", exp.LTE: "<=", exp.GT: ">", exp.GTE: ">=",
}
_INT_TEXT = re.compile(r"^[0-9]+$")
_TOKEN_REPR = re.compile(r"<Token token_type: [^,]+, text: (.*?), line: \d+, col: \d+, start: \d+, end: \d+, comments: \[.*?\]>")
_MISSING_ARG = re.compile(r"Required keyword: '\w+' missing for <class '[\w.]+\.(\w+)'>")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclass(frozen=True)
class ParsedAggregate:
    """One aggregate in SELECT: ``kind`` in count/sum/avg/variance/stddev; ``column`` None for COUNT(*)."""

    kind: str
    column: str | None
    function: str
    alias: str | None


@dataclass(frozen=True)
class ParsedGroupRef:
    """A raw group column in SELECT (allowed only because it is in GROUP BY)."""

    column: str
    alias: str | None


@dataclass(frozen=True)
class ParsedQuery:
    """The checked query, with every column resolved to its manifest spelling."""

    dataset: str
    select: tuple[ParsedAggregate | ParsedGroupRef, ...]
    group_by: tuple[str, ...]
    where: Predicate | None


# ---------------------------------------------------------------------------------------------
# error helpers


def _offset(node: exp.Expression) -> int | None:
    """Smallest character offset any token under ``node`` carries (sqlglot keeps it in ``meta``)."""
    starts = [n.meta["start"] for n in node.walk() if isinstance(n, exp.Expression) and "start" in n.meta]
    return min(starts) if starts else None


def _fragment(node: exp.Expression) -> str:
    try:
        text = node.sql(dialect=READ_DIALECT)
    except Exception:  # noqa: BLE001 - only for a message
        text = type(node).__name__
    return text if len(text) <= 80 else text[:77] + "..."


def _at(node: exp.Expression, clause: str) -> str:
    off = _offset(node)
    where = f"in {clause}" + (f" at offset {off}" if off is not None else "")
    return f"{where} (`{_fragment(node)}`)"


def _refuse(what: str, node: exp.Expression, clause: str, why: str) -> InvalidQuery:
    return InvalidQuery(f"{what} is not supported {_at(node, clause)}: {why}",
                        construct=what, clause=clause, offset=_offset(node))


def _readable_parse_error(e: ParseError | TokenError) -> InvalidQuery:
    errors = getattr(e, "errors", None) or []
    if errors:
        first = errors[0]
        desc = _TOKEN_REPR.sub(lambda m: f"'{m.group(1)}'", str(first.get("description") or "invalid syntax"))
        desc = _MISSING_ARG.sub(lambda m: f"incomplete {m.group(1).upper()} (something is missing here)", desc)
        near = _ANSI.sub("", str(first.get("highlight") or ""))
        line, col = first.get("line"), first.get("col")
        msg = f"SQL syntax error at line {line}, column {col}"
        if near:
            msg += f" near '{near}'"
        return InvalidQuery(f"{msg}: {desc}", construct="syntax", line=line, column=col)
    text = _ANSI.sub("", str(e)).strip().splitlines()[0] if str(e).strip() else "invalid syntax"
    if isinstance(e, TokenError):
        text += " (an unterminated string or quoted name?)"
    return InvalidQuery(f"SQL syntax error: {text}", construct="syntax")


# ---------------------------------------------------------------------------------------------
# statement and FROM


def _statement(sql: str, *, allow_join: bool = False) -> exp.Select:
    if not isinstance(sql, str) or not sql.strip():
        raise InvalidQuery("empty query: expected SELECT ... FROM dataset", construct="syntax")
    if len(sql) > MAX_SQL_CHARS:
        raise InvalidQuery(f"query is {len(sql)} characters long; at most {MAX_SQL_CHARS}", construct="size")
    try:
        statements = [s for s in sqlglot.parse(sql, read=READ_DIALECT) if s is not None]
    except (ParseError, TokenError) as e:
        raise _readable_parse_error(e) from None
    except RecursionError:
        raise InvalidQuery("query is nested too deeply", construct="size") from None
    if not statements:
        raise InvalidQuery("empty query: expected SELECT ... FROM dataset", construct="syntax")
    if len(statements) > 1:
        raise InvalidQuery(f"multiple statements are not supported ({len(statements)} found): "
                           "submit exactly one SELECT", construct="multiple statements")
    stmt = statements[0]
    if isinstance(stmt, exp.SetOperation):
        op = type(stmt).__name__.upper()
        raise _refuse(op, stmt, "query", "a query reads one dataset with one SELECT")
    if isinstance(stmt, exp.Subquery):
        raise _refuse("parenthesised subquery", stmt, "query", "submit a plain SELECT")
    if not isinstance(stmt, exp.Select):
        # sqlglot parses statements it does not model (SET, PRAGMA, ...) as a generic Command
        kind = str(stmt.this).upper() if isinstance(stmt, exp.Command) else stmt.key.upper()
        raise InvalidQuery(f"{kind} statements are not supported: only read-only SELECT aggregates are "
                           f"(found `{_fragment(stmt)}`)", construct=kind, clause="query")
    for key, value in stmt.args.items():
        if key in _ALLOWED_SELECT_ARGS or value in (None, False, [], ""):
            continue
        if key == "joins":
            refuse_join(stmt, allowed=allow_join)  # every shape refused with its own reason (issue #16)
            continue
        name, why = _CLAUSE_NAMES.get(key, (key.upper().rstrip("_"), "not in the supported subset"))
        node = value[0] if isinstance(value, list) else value
        if isinstance(node, exp.Expression):
            raise _refuse(name, node, "query", why)
        raise InvalidQuery(f"{name} is not supported: {why}", construct=name, clause="query")
    return stmt


def _from_table(stmt: exp.Select) -> tuple[str, str | None]:
    """The dataset name as written and its alias (if any)."""
    frm = stmt.args.get("from_")
    if frm is None:
        raise InvalidQuery("query has no FROM clause: expected SELECT ... FROM dataset", construct="FROM")
    src = frm.this
    if isinstance(src, exp.Subquery | exp.Select):
        raise _refuse("subquery", src, "FROM", "queries run directly over one dataset")
    if isinstance(src, exp.Values):
        raise _refuse("VALUES", src, "FROM", "queries run directly over one dataset")
    if not isinstance(src, exp.Table) or not isinstance(src.this, exp.Identifier):
        raise _refuse("table function", src, "FROM", "name a dataset, e.g. FROM people")
    if src.args.get("db") or src.args.get("catalog"):
        raise _refuse("qualified table name", src, "FROM", "name the dataset alone, e.g. FROM people")
    for key, value in src.args.items():
        if key in ("this", "alias") or value in (None, False, [], ""):
            continue
        node = value[0] if isinstance(value, list) else value
        name = {"joins": "JOIN", "laterals": "LATERAL", "pivots": "PIVOT", "sample": "TABLESAMPLE",
                "version": "time travel (AT/AS OF)"}.get(key, key.upper())
        if isinstance(node, exp.Expression):
            raise _refuse(name, node, "FROM", "queries run over one dataset as it is")
        raise InvalidQuery(f"{name} is not supported in FROM", construct=name, clause="FROM")
    alias = src.args.get("alias")
    alias_name: str | None = None
    if isinstance(alias, exp.TableAlias):
        if alias.args.get("columns"):
            raise _refuse("column aliases on the table", alias, "FROM", "refer to columns by their names")
        alias_name = alias.name or None
    return src.this.name, alias_name


def parse_statement(sql: str, *, allow_join: bool = False) -> exp.Select:
    """Parse ``sql`` once into its shape-checked SELECT; every later step takes this tree.

    ``allow_join``: let an inner join of two datasets through, for ``query.joins.check_join``.
    """
    return _statement(sql, allow_join=allow_join)


def referenced_dataset(sql: str | exp.Select) -> str:
    """The dataset name the query reads (as written), after checking the statement shape.

    The gateway calls this first to look the dataset up (unknown dataset is the caller's 404);
    dataset names are identifiers, compare them case-insensitively.
    """
    stmt = sql if isinstance(sql, exp.Select) else _statement(sql)
    name, _ = _from_table(stmt)
    return name


# ---------------------------------------------------------------------------------------------
# column resolution


class _Resolver:
    def __init__(self, dataset: DatasetSpec, table_names: set[str]) -> None:
        self.dataset = dataset
        self.table_names = table_names

    def column(self, node: exp.Column, clause: str) -> ColumnSpec:
        if isinstance(node.this, exp.Star):
            raise _refuse("SELECT *", node, clause, "name group columns and aggregates explicitly; "
                          "raw rows are never released")
        if node.args.get("db") or node.args.get("catalog"):
            raise _refuse("qualified column name", node, clause, "use column or dataset.column")
        table = node.table
        if table and table.lower() not in self.table_names:
            raise InvalidQuery(f"unknown table '{table}' {_at(node, clause)}: the query reads dataset "
                               f"'{self.dataset.name}' only", construct="unknown table", clause=clause)
        spec = self.dataset.column(node.name)
        if spec is None:
            raise InvalidQuery(f"unknown column '{node.name}' {_at(node, clause)}: dataset "
                               f"'{self.dataset.name}' declares no such column",
                               construct="unknown column", clause=clause, column=node.name)
        return spec


def _require_use(spec: ColumnSpec, use: str, node: exp.Expression, clause: str, verb: str) -> None:
    if use not in spec.uses:
        allowed = ", ".join(spec.uses) if spec.uses else "none"
        raise InvalidQuery(f"column '{spec.name}' may not be {verb} {_at(node, clause)}: the holder allows "
                           f"only these uses: {allowed}", construct="column use", clause=clause,
                           column=spec.name, use=use)


def aggregatable(spec: ColumnSpec) -> bool:
    """Numeric, bool (0/1) or two-valued category (second declared value = 1)."""
    if spec.numeric:
        return spec.min is not None and spec.max is not None
    if spec.type == "bool":
        return True
    return spec.type == "category" and spec.values is not None and len(spec.values) == 2


def groupable(spec: ColumnSpec) -> bool:
    """Category or bool with declared values."""
    return spec.type in ("category", "bool") and bool(spec.values)


# ---------------------------------------------------------------------------------------------
# SELECT


def _describe(node: exp.Expression) -> tuple[str, str]:
    """Name an unsupported expression and say why."""
    if isinstance(node, exp.Window):
        return "window function (OVER)", "only plain aggregates over the (filtered) dataset are supported"
    if isinstance(node, exp.Subquery | exp.Select | exp.Exists):
        return "subquery", "queries run directly over one dataset"
    if isinstance(node, exp.Anonymous):
        return f"function {node.name.upper()}()", "only COUNT, SUM, AVG, VARIANCE and STDDEV are supported"
    if isinstance(node, exp.Case | exp.If):
        return "CASE expression", "only plain columns and literals are supported"
    if isinstance(node, exp.Cast | exp.TryCast):
        return "CAST", "columns are used with their declared types"
    if isinstance(node, exp.Func):
        return f"function {node.sql_name()}()", "only COUNT, SUM, AVG, VARIANCE and STDDEV are supported"
    if isinstance(node, exp.Binary | exp.Neg | exp.BitwiseNot):
        return "arithmetic on columns", "aggregate plain columns; AVG, VARIANCE and STDDEV are built in"
    if isinstance(node, exp.Literal | exp.Boolean | exp.Null):
        return "constant", "select group columns or aggregates only"
    if isinstance(node, exp.Placeholder | exp.Parameter):
        return "query parameter", "write literals inline"
    return f"expression `{_fragment(node)}`", "not in the supported subset"


def _alias_text(node: exp.Alias) -> str:
    alias = node.alias
    if not alias or len(alias) > MAX_ALIAS_CHARS or not alias.isprintable():
        raise InvalidQuery(f"alias {_at(node, 'SELECT')} must be 1..{MAX_ALIAS_CHARS} printable characters",
                           construct="alias", clause="SELECT")
    return alias


def _aggregate(node: exp.Expression, kind: str, res: _Resolver, alias: str | None) -> ParsedAggregate:
    function = node.sql_name() if isinstance(node, exp.Func) else kind.upper()
    extra = [k for k, v in node.args.items() if k not in ("this", "big_int") and v not in (None, False, [])]
    if extra:
        raise _refuse(f"{function} with more than one argument", node, "SELECT",
                      "aggregates take one column (or * for COUNT)")
    arg = node.this
    while isinstance(arg, exp.Paren):
        arg = arg.this
    if isinstance(arg, exp.Star):
        if kind != "count":
            raise _refuse(f"{function}(*)", node, "SELECT", "only COUNT takes *")
        return ParsedAggregate("count", None, function, alias)
    if isinstance(arg, exp.Distinct):
        raise _refuse(f"{function}(DISTINCT ...)", node, "SELECT",
                      "distinct counts are not supported (their sensitivity is unbounded per row)")
    if kind == "count" and isinstance(arg, exp.Literal) and not arg.is_string:
        # COUNT(1) is the common spelling of COUNT(*): a non-null constant counts every row.
        return ParsedAggregate("count", None, function, alias)
    if not isinstance(arg, exp.Column):
        what, why = _describe(arg) if arg is not None else ("empty aggregate", "name a column")
        raise _refuse(f"{what} inside {function}", arg if arg is not None else node, "SELECT", why)
    spec = res.column(arg, "SELECT")
    _require_use(spec, "aggregate", arg, "SELECT", "aggregated")
    if not aggregatable(spec):
        raise InvalidQuery(f"column '{spec.name}' ({spec.type}) cannot be aggregated {_at(arg, 'SELECT')}: only "
                           "numeric, bool or two-valued category columns can", construct="column type",
                           clause="SELECT", column=spec.name)
    return ParsedAggregate(kind, spec.name, function, alias)


def _select_item(item: exp.Expression, res: _Resolver, group_by: tuple[str, ...]
                 ) -> ParsedAggregate | ParsedGroupRef:
    alias: str | None = None
    node = item
    if isinstance(node, exp.Alias):
        alias = _alias_text(node)
        node = node.this
    while isinstance(node, exp.Paren):
        node = node.this
    if isinstance(node, exp.Star):
        raise _refuse("SELECT *", node, "SELECT", "name group columns and aggregates explicitly; "
                      "raw rows are never released")
    if isinstance(node, exp.Column):
        spec = res.column(node, "SELECT")
        if spec.name not in group_by:
            raise InvalidQuery(f"raw column '{spec.name}' {_at(node, 'SELECT')} is neither aggregated nor in "
                               "GROUP BY: raw values are never released", construct="raw column",
                               clause="SELECT", column=spec.name)
        return ParsedGroupRef(spec.name, alias)
    if isinstance(node, exp.Filter):
        raise _refuse("aggregate FILTER (WHERE ...)", node, "SELECT", "put the condition in WHERE")
    for cls, kind in _AGGREGATES.items():
        if type(node) is cls:
            return _aggregate(node, kind, res, alias)
    what, why = _describe(node)
    raise _refuse(what, node, "SELECT", why)


# ---------------------------------------------------------------------------------------------
# GROUP BY


def _group_by(stmt: exp.Select, res: _Resolver) -> tuple[str, ...]:
    group = stmt.args.get("group")
    if group is None:
        return ()
    for key in ("grouping_sets", "cube", "rollup", "totals", "all"):
        val = group.args.get(key)
        if val not in (None, False, []):
            name = {"all": "GROUP BY ALL", "totals": "WITH TOTALS"}.get(key, key.upper().replace("_", " "))
            node = val[0] if isinstance(val, list) else group
            raise _refuse(name, node if isinstance(node, exp.Expression) else group, "GROUP BY",
                          "list the group columns explicitly")
    out: list[str] = []
    for node in group.expressions:
        while isinstance(node, exp.Paren):
            node = node.this
        if isinstance(node, exp.Rollup | exp.Cube | exp.GroupingSets):
            raise _refuse(type(node).__name__.upper(), node, "GROUP BY", "list the group columns explicitly")
        if isinstance(node, exp.Literal):
            raise _refuse("positional GROUP BY", node, "GROUP BY", "name the group columns")
        if not isinstance(node, exp.Column):
            what, _ = _describe(node)
            raise _refuse(what, node, "GROUP BY", "group by plain declared columns only")
        spec = res.column(node, "GROUP BY")
        _require_use(spec, "group", node, "GROUP BY", "grouped by")
        if not groupable(spec):
            raise InvalidQuery(f"column '{spec.name}' ({spec.type}) cannot be grouped by {_at(node, 'GROUP BY')}: "
                               "only category or bool columns with declared values can",
                               construct="column type", clause="GROUP BY", column=spec.name)
        if spec.name not in out:
            out.append(spec.name)
    return tuple(out)


# ---------------------------------------------------------------------------------------------
# WHERE


class _WhereBuilder:
    def __init__(self, res: _Resolver) -> None:
        self.res = res
        self.size = 0

    def build(self, node: exp.Expression, depth: int = 0) -> Predicate:
        self.size += 1
        if self.size > MAX_PREDICATE_NODES:
            raise InvalidQuery(f"WHERE clause is too large: at most {MAX_PREDICATE_NODES} conditions",
                               construct="size", clause="WHERE")
        if depth > MAX_PREDICATE_DEPTH:
            raise InvalidQuery("WHERE clause is nested too deeply", construct="size", clause="WHERE")
        while isinstance(node, exp.Paren):
            node = node.this
        if isinstance(node, exp.And | exp.Or):
            items = tuple(self.build(part, depth + 1) for part in node.flatten())
            return And(items) if isinstance(node, exp.And) else Or(items)
        if isinstance(node, exp.Not):
            inner = self.build(node.this, depth + 1)
            if isinstance(inner, InList | Between | IsNull) and not inner.negated:
                return type(inner)(**{**inner.__dict__, "negated": True})
            return Not(inner)
        if type(node) in _CMP:
            return self._compare(node, _CMP[type(node)])
        if isinstance(node, exp.In):
            return self._in(node)
        if isinstance(node, exp.Between):
            return self._between(node)
        if isinstance(node, exp.Is):
            return self._is(node)
        if isinstance(node, exp.Column):
            spec = self._column(node, "filtered on")
            if spec.type != "bool":
                raise _refuse(f"bare column '{spec.name}' as a condition", node, "WHERE",
                              "only a bool column can stand alone; compare the column with a literal")
            return Compare(spec.name, "=", True)
        if isinstance(node, exp.Like | exp.ILike | exp.SimilarTo | exp.RegexpLike | exp.Glob):
            name = {exp.Like: "LIKE", exp.ILike: "ILIKE", exp.SimilarTo: "SIMILAR TO",
                    exp.RegexpLike: "regular expression match", exp.Glob: "GLOB"}[type(node)]
            raise _refuse(name, node, "WHERE", "use =, <>, IN, BETWEEN or IS NULL on declared columns")
        if isinstance(node, exp.NullSafeEQ | exp.NullSafeNEQ):
            raise _refuse("IS [NOT] DISTINCT FROM", node, "WHERE", "use =, <> or IS NULL")
        if isinstance(node, exp.Boolean | exp.Literal | exp.Null):
            raise _refuse("constant condition", node, "WHERE", "compare a declared column with a literal")
        what, _ = _describe(node)
        raise _refuse(what, node, "WHERE", "conditions compare a declared column with literals only")

    # -- pieces

    def _column(self, node: exp.Column, verb: str) -> ColumnSpec:
        spec = self.res.column(node, "WHERE")
        _require_use(spec, "filter", node, "WHERE", verb)
        if spec.type == "text":
            raise InvalidQuery(f"text column '{spec.name}' cannot be filtered on {_at(node, 'WHERE')}",
                               construct="column type", clause="WHERE", column=spec.name)
        return spec

    def _as_column(self, node: exp.Expression) -> exp.Column:
        while isinstance(node, exp.Paren):
            node = node.this
        if isinstance(node, exp.Column):
            return node
        what, _ = _describe(node)
        raise _refuse(what, node, "WHERE", "conditions compare a declared column with literals only")

    def _literal(self, node: exp.Expression, spec: ColumnSpec, whole: exp.Expression) -> Scalar:
        raw = node
        negative = False
        while True:
            if isinstance(node, exp.Paren):
                node = node.this
            elif isinstance(node, exp.Neg):
                negative = not negative
                node = node.this
            else:
                break
        if isinstance(node, exp.Null):
            raise _refuse("comparison with NULL", whole, "WHERE", "it is never true; use IS NULL or IS NOT NULL")
        if isinstance(node, exp.Column):
            raise _refuse("column-to-column comparison", whole, "WHERE", "compare a column with a literal")
        if isinstance(node, exp.Placeholder | exp.Parameter):
            raise _refuse("query parameter", node, "WHERE", "write literals inline")
        if not isinstance(node, exp.Literal | exp.Boolean):
            what, _ = _describe(node)
            raise _refuse(what, raw, "WHERE", "compare a declared column with a literal")
        if spec.numeric:
            if not isinstance(node, exp.Literal) or node.is_string:
                raise InvalidQuery(f"numeric column '{spec.name}' must be compared with a number "
                                   f"{_at(whole, 'WHERE')}", construct="literal type", clause="WHERE",
                                   column=spec.name)
            return _number(node, negative, whole)
        if negative:
            raise InvalidQuery(f"column '{spec.name}' ({spec.type}) cannot be compared with a negative number "
                               f"{_at(whole, 'WHERE')}", construct="literal type", clause="WHERE",
                               column=spec.name)
        if spec.type == "bool":
            if isinstance(node, exp.Boolean):
                return bool(node.this)
            text = str(node.this).strip().lower()
            if text in ("true", "1"):
                return True
            if text in ("false", "0"):
                return False
            raise InvalidQuery(f"bool column '{spec.name}' must be compared with TRUE or FALSE "
                               f"{_at(whole, 'WHERE')}", construct="literal type", clause="WHERE",
                               column=spec.name)
        # category: the literal must be one of the declared values
        text = ("true" if node.this else "false") if isinstance(node, exp.Boolean) else str(node.this)
        if spec.values is None or text not in spec.values:
            raise InvalidQuery(f"value '{text}' is not a declared value of column '{spec.name}' "
                               f"{_at(whole, 'WHERE')}", construct="undeclared value", clause="WHERE",
                               column=spec.name, value=text)
        return text

    def _compare(self, node: exp.Binary, op: str) -> Predicate:
        left, right = node.this, node.expression
        while isinstance(left, exp.Paren):
            left = left.this
        while isinstance(right, exp.Paren):
            right = right.this
        if isinstance(left, exp.Column) and isinstance(right, exp.Column):
            raise _refuse("column-to-column comparison", node, "WHERE", "compare a column with a literal")
        if isinstance(left, exp.Column):
            col_node, lit_node = left, right
        elif isinstance(right, exp.Column):
            col_node, lit_node, op = right, left, _FLIP[op]
        else:
            bad = left if not _is_literalish(left) else right
            what, _ = _describe(bad)
            raise _refuse(what, bad, "WHERE", "conditions compare a declared column with literals only")
        spec = self._column(col_node, "filtered on")
        value = self._literal(lit_node, spec, node)
        if not spec.numeric and op not in ("=", "<>"):
            raise _refuse(f"ordering comparison '{op}' on {spec.type} column '{spec.name}'", node, "WHERE",
                          "use =, <>, IN or IS NULL on category and bool columns")
        return Compare(spec.name, op, value)

    def _in(self, node: exp.In) -> Predicate:
        if node.args.get("query") is not None:
            raise _refuse("subquery", node.args["query"], "WHERE", "IN takes a list of literals")
        for key in ("unnest", "field"):
            if node.args.get(key) is not None:
                raise _refuse("IN over an expression", node, "WHERE", "IN takes a list of literals")
        col = self._as_column(node.this)
        spec = self._column(col, "filtered on")
        if not node.expressions:
            raise _refuse("empty IN list", node, "WHERE", "list at least one literal")
        if len(node.expressions) > MAX_IN_LIST:
            raise _refuse(f"IN list of {len(node.expressions)} values", node, "WHERE",
                          f"at most {MAX_IN_LIST} values")
        values = tuple(self._literal(v, spec, node) for v in node.expressions)
        return InList(spec.name, values)

    def _between(self, node: exp.Between) -> Predicate:
        if node.args.get("symmetric"):
            raise _refuse("BETWEEN SYMMETRIC", node, "WHERE", "use BETWEEN low AND high")
        col = self._as_column(node.this)
        spec = self._column(col, "filtered on")
        if not spec.numeric:
            raise _refuse(f"BETWEEN on {spec.type} column '{spec.name}'", node, "WHERE",
                          "BETWEEN needs a numeric column")
        return Between(spec.name, self._literal(node.args["low"], spec, node),
                       self._literal(node.args["high"], spec, node))

    def _is(self, node: exp.Is) -> Predicate:
        if not isinstance(node.expression, exp.Null):
            raise _refuse(f"IS {_fragment(node.expression)}", node, "WHERE", "only IS NULL / IS NOT NULL")
        col = self._as_column(node.this)
        spec = self._column(col, "filtered on")
        return IsNull(spec.name)


def _is_literalish(node: exp.Expression) -> bool:
    while isinstance(node, exp.Paren | exp.Neg):
        node = node.this
    return isinstance(node, exp.Literal | exp.Boolean | exp.Null)


def _number(node: exp.Literal, negative: bool, whole: exp.Expression) -> int | float:
    text = str(node.this).strip()
    value: int | float
    try:
        value = int(text) if _INT_TEXT.match(text) else float(text)
    except ValueError:
        raise InvalidQuery(f"'{text}' is not a number {_at(whole, 'WHERE')}", construct="literal",
                           clause="WHERE") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidQuery(f"number '{text}' is out of range {_at(whole, 'WHERE')}", construct="literal",
                           clause="WHERE")
    if isinstance(value, int) and abs(value) > 2**63:
        value = float(value)
    return -value if negative else value


# ---------------------------------------------------------------------------------------------
# entry point


def parse_query(sql: str | exp.Select, dataset: DatasetSpec) -> ParsedQuery:
    """Check ``sql`` (text, or the tree ``parse_statement`` made of it) against ``dataset``'s
    manifest; raise ``InvalidQuery`` otherwise."""
    stmt = sql if isinstance(sql, exp.Select) else _statement(sql)
    name, alias = _from_table(stmt)
    if name.lower() != dataset.name.lower():
        raise InvalidQuery(f"query reads dataset '{name}' but was planned against '{dataset.name}'",
                           construct="dataset", clause="FROM")
    tables = {dataset.name.lower(), name.lower()}
    if alias:
        tables.add(alias.lower())
    res = _Resolver(dataset, tables)
    group_by = _group_by(stmt, res)
    items = stmt.expressions
    if not items:
        raise InvalidQuery("SELECT lists nothing: select at least one aggregate", construct="SELECT")
    if len(items) > MAX_SELECT_ITEMS:
        raise InvalidQuery(f"SELECT lists {len(items)} items; at most {MAX_SELECT_ITEMS}", construct="size",
                           clause="SELECT")
    select = tuple(_select_item(i, res, group_by) for i in items)
    if not any(isinstance(s, ParsedAggregate) for s in select):
        raise InvalidQuery("SELECT has no aggregate: select at least one of COUNT, SUM, AVG, VARIANCE, STDDEV "
                           "(raw values are never released)", construct="no aggregate", clause="SELECT")
    where_node = stmt.args.get("where")
    where: Predicate | None = None
    if where_node is not None:
        where = _WhereBuilder(res).build(where_node.this)
        if predicate_size(where) > MAX_PREDICATE_NODES:
            raise InvalidQuery(f"WHERE clause is too large: at most {MAX_PREDICATE_NODES} conditions",
                               construct="size", clause="WHERE")
    return ParsedQuery(dataset=dataset.name, select=select, group_by=group_by, where=where)
