"""One parse of the analyst's SQL on the gateway, and the one rewrite the gateway makes of it.

``parse_statement`` (from ``parse``) turns the text into a shape-checked tree once; the dataset
lookup, the group-size rewrite and the planner all take that tree, so a query is parsed once.
"""

from __future__ import annotations

from sqlglot import exp

from xdp_compute.query.finalize import GROUP_SIZE_ALIAS
from xdp_compute.query.parse import READ_DIALECT, parse_statement


def with_group_size(stmt: exp.Select) -> tuple[exp.Select, bool]:
    """Make sure the query measures COUNT(*) per group (small-cell suppression needs it);
    returns the statement (a copy if changed) and whether the count was added, hidden."""
    for e in stmt.expressions:
        inner = e.this if isinstance(e, exp.Alias) else e
        if isinstance(inner, exp.Count) and isinstance(inner.this, exp.Star):
            return stmt, False
    return stmt.select(exp.alias_(exp.Count(this=exp.Star()), GROUP_SIZE_ALIAS), copy=True), True


def sql_text(stmt: exp.Select) -> str:
    """The statement as the planner records it (and nodes re-plan it from)."""
    return stmt.sql(dialect=READ_DIALECT)


__all__ = ["parse_statement", "sql_text", "with_group_size"]
