"""Private joins in the analyst's SQL (issue #16, docs/private-joins.md): shapes and manifest checks.

``join_shape`` refuses every JOIN shape but an inner join of two datasets ON a.key = b.key, each
with its own reason (``_JOIN_REFUSALS``, the join part of ``parse``'s refusal table);
``check_join`` checks that shape against both manifests (use ``join``, the same ``join_domain``)
once the gateway has looked both datasets up and returns the shape, which
``query.plan.plan_join`` turns into a ``JoinPlan`` (the protocol of docs/private-joins.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from sqlglot import exp

from xdp_compute.domain.manifest import ColumnSpec, DatasetSpec
from xdp_compute.errors import InvalidQuery

# This module sits under query.parse (which calls ``refuse_join`` while it checks a statement's
# shape), so it repeats parse's three lines of message formatting rather than importing them.
_DIALECT = "duckdb"  # parse.READ_DIALECT

__all__ = ["JoinShape", "check_join", "join_shape", "refuse_join"]

# Every JOIN shape but one is refused, each with its reason; the one shape, an inner join of two
# datasets ON a.key = b.key over "join" columns of the same join_domain, is planned by
# ``query.plan.plan_join`` (a parse without ``allow_join`` still refuses it: single-dataset paths).
_JOIN_SUPPORTED = ("a private join runs only as a query over two datasets through the gateway's join path "
                   "(docs/private-joins.md)")
_JOIN_ON = "a join needs ON a.key = b.key, one equality between a join column of each dataset"
_JOIN_OUTER = ("only inner joins: an outer join releases a function of which rows did not match, which no "
               "holder may learn")
_JOIN_REFUSALS = {
    # join side, kind or method -> (what the analyst wrote, why it is refused)
    "LEFT": ("LEFT JOIN (outer join)", _JOIN_OUTER),
    "RIGHT": ("RIGHT JOIN (outer join)", _JOIN_OUTER),
    "FULL": ("FULL JOIN (outer join)", _JOIN_OUTER),
    "OUTER": ("OUTER JOIN", _JOIN_OUTER),
    "SEMI": ("SEMI JOIN", "only inner joins: a semi join filters one holder's rows by the other's keys"),
    "ANTI": ("ANTI JOIN", "only inner joins: an anti join selects exactly the rows that did not match"),
    "CROSS": ("CROSS JOIN", f"{_JOIN_ON}; a cross product pairs every person with every other"),
    "NATURAL": ("NATURAL JOIN", f"{_JOIN_ON}, written out"),
    "ASOF": ("ASOF JOIN", f"{_JOIN_ON}; inexact matches are not supported"),
    "POSITIONAL": ("POSITIONAL JOIN", f"{_JOIN_ON}; row order is not a key"),
    "USING": ("JOIN ... USING", f"{_JOIN_ON}, with both columns named"),
    "comma": ("CROSS JOIN (FROM a, b)", f"{_JOIN_ON}; a cross product pairs every person with every other"),
    "many": ("JOIN of more than two datasets", "a private join reads exactly two datasets"),
    "self": ("self-JOIN", "a private join reads two different datasets"),
}

@dataclass(frozen=True)
class JoinShape:
    """An inner join of two datasets ON one equality, as written (names not yet checked)."""

    left: str
    left_alias: str | None
    left_key: str
    right: str
    right_alias: str | None
    right_key: str
    node: exp.Join


def _offset(node: exp.Expression) -> int | None:
    starts = [n.meta["start"] for n in node.walk() if isinstance(n, exp.Expression) and "start" in n.meta]
    return min(starts) if starts else None


def _at(node: exp.Expression, clause: str) -> str:
    text = node.sql(dialect=_DIALECT)
    text = text if len(text) <= 80 else text[:77] + "..."
    off = _offset(node)
    return f"in {clause}" + (f" at offset {off}" if off is not None else "") + f" (`{text}`)"


def _refuse(what: str, node: exp.Expression, clause: str, why: str) -> InvalidQuery:
    return InvalidQuery(f"{what} is not supported {_at(node, clause)}: {why}",
                        construct=what, clause=clause, offset=_offset(node))


def _dataset(node: exp.Expression | None, clause: str) -> tuple[str, str | None]:
    """One side of the join: a dataset named alone, and its alias."""
    if isinstance(node, exp.Subquery | exp.Select | exp.Values):
        raise _refuse("subquery", node, clause, "a join reads two datasets by name")
    if not isinstance(node, exp.Table) or not isinstance(node.this, exp.Identifier):
        raise InvalidQuery(f"a join reads two datasets by name, e.g. FROM hospital h JOIN insurer i "
                           f"ON h.citizen = i.citizen ({clause})", construct="table function", clause=clause)
    if node.args.get("db") or node.args.get("catalog"):
        raise _refuse("qualified table name", node, clause, "name the dataset alone, e.g. JOIN claims")
    alias = node.args.get("alias")
    if isinstance(alias, exp.TableAlias) and alias.args.get("columns"):
        raise _refuse("column aliases on the table", alias, clause, "refer to columns by their names")
    return node.this.name, (alias.name or None) if isinstance(alias, exp.TableAlias) else None


def _join_refusal(kind: str, node: exp.Expression) -> InvalidQuery:
    what, why = _JOIN_REFUSALS[kind]
    return _refuse(what, node, "FROM", why)


def join_shape(stmt: exp.Select) -> JoinShape:
    """The join of ``stmt`` if it has the one shape a private join may take; else ``InvalidQuery``
    naming the shape and why (``_JOIN_REFUSALS``). Needs no manifest: ``check_join`` does the rest."""
    joins = stmt.args.get("joins") or []
    if not joins:
        raise InvalidQuery("query has no JOIN", construct="JOIN", clause="FROM")
    if len(joins) > 1:
        raise _join_refusal("many", joins[1])
    join: exp.Join = joins[0]
    for arg in ("side", "kind", "method"):
        word = str(join.args.get(arg) or "").upper()
        if word and word != "INNER":
            raise _join_refusal(word if word in _JOIN_REFUSALS else "CROSS", join)
    if join.args.get("using"):
        raise _join_refusal("USING", join)
    on = join.args.get("on")
    if on is None:
        raise _join_refusal("comma", join)
    frm = stmt.args.get("from_")
    left, left_alias = _dataset(frm.this if frm is not None else None, "FROM")
    right_name, r_alias = _dataset(join.this, "JOIN")
    if left.lower() == right_name.lower():
        raise _join_refusal("self", join)
    while isinstance(on, exp.Paren):
        on = on.this
    if not (isinstance(on, exp.EQ) and isinstance(on.this, exp.Column) and isinstance(on.expression, exp.Column)):
        raise _refuse("JOIN condition", on, "ON", _JOIN_ON)
    left_names = {left.lower()} | ({left_alias.lower()} if left_alias else set())
    right_names = {right_name.lower()} | ({r_alias.lower()} if r_alias else set())
    sides: dict[str, str] = {}
    for col in (on.this, on.expression):
        table = (col.table or "").lower()
        if col.args.get("db") or col.args.get("catalog") or isinstance(col.this, exp.Star):
            raise _refuse("JOIN condition", on, "ON", _JOIN_ON)
        if not table:
            raise _refuse("unqualified column in JOIN condition", col, "ON",
                          "name each key with its dataset, e.g. ON a.key = b.key")
        side = "left" if table in left_names else "right" if table in right_names else None
        if side is None:
            raise InvalidQuery(f"unknown table '{col.table}' {_at(col, 'ON')}: the join reads '{left}' and "
                               f"'{right_name}'", construct="unknown table", clause="ON")
        if side in sides:
            raise _refuse("JOIN condition", on, "ON", _JOIN_ON)
        sides[side] = col.name
    return JoinShape(left=left, left_alias=left_alias, left_key=sides["left"], right=right_name,
                     right_alias=r_alias, right_key=sides["right"], node=join)


def check_join(stmt: exp.Select, datasets: Mapping[str, DatasetSpec]) -> JoinShape:
    """Check a join against both datasets' manifests (``datasets``: name -> spec, any case).

    Refuses a key column that is not declared with use ``join`` and keys of different
    ``join_domain``s, each with its own message; returns the shape of a join that passes (the
    gateway then plans it with ``query.plan.plan_join``). The gateway calls it once it has looked
    both datasets up, with the statement ``parse_statement(sql, allow_join=True)`` made.
    """
    shape = join_shape(stmt)
    specs = {k.lower(): v for k, v in datasets.items()}
    cols: list[ColumnSpec] = []
    for name, key in ((shape.left, shape.left_key), (shape.right, shape.right_key)):
        spec = specs.get(name.lower())
        if spec is None:
            raise InvalidQuery(f"unknown dataset '{name}' in JOIN", construct="dataset", clause="FROM")
        col = spec.column(key)
        if col is None:
            raise InvalidQuery(f"unknown column '{key}' {_at(shape.node, 'ON')}: dataset '{spec.name}' declares "
                               "no such column", construct="unknown column", clause="ON", column=key)
        if "join" not in col.uses or col.join_domain is None:
            raise InvalidQuery(f"column '{spec.name}.{col.name}' is not a join key {_at(shape.node, 'ON')}: its "
                               "holder has not declared it with use \"join\" and a join_domain",
                               construct="column use", clause="ON", column=col.name, use="join")
        cols.append(col)
    if cols[0].join_domain != cols[1].join_domain:
        raise InvalidQuery(f"join keys of different domains {_at(shape.node, 'ON')}: '{shape.left}.{cols[0].name}' "
                           f"is a {cols[0].join_domain!r} key, '{shape.right}.{cols[1].name}' a "
                           f"{cols[1].join_domain!r} key; keys of different identifier spaces never match",
                           construct="join domain", clause="ON")
    return shape


def refuse_join(stmt: exp.Select, *, allowed: bool) -> None:
    """The parser's hook: refuse a bad join shape; refuse the good one too unless ``allowed``."""
    shape = join_shape(stmt)
    if not allowed:
        raise _refuse("inner JOIN of two datasets", shape.node, "FROM", _JOIN_SUPPORTED)
