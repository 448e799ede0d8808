"""One parse of the analyst's SQL on the gateway, and the one rewrite the gateway makes of it.

``parse_statement`` (from ``parse``) turns the text into a shape-checked tree once; the dataset
lookup, the group-size rewrite and the planner all take that tree, so a query is parsed once.
"""

from __future__ import annotations

import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError

from xdp_compute.errors import InvalidQuery
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


_MAX_WHERE = 10_000


def where_condition(text: str) -> str:
    """An analyst's WHERE text (scores, trainings) as exactly one condition, re-rendered.

    The text is parsed on its own and only its condition tree is put back into the SQL the
    gateway builds, in parentheses: a second statement, a comment that would swallow the rest of
    the query, or a clause riding along (``age > 0 GROUP BY sick``) is refused, not spliced.
    """
    if not isinstance(text, str) or not text.strip():
        raise InvalidQuery("where must be a non-empty condition", clause="WHERE")
    if len(text) > _MAX_WHERE:
        raise InvalidQuery(f"where is longer than {_MAX_WHERE} characters", clause="WHERE")
    try:
        tokens = sqlglot.tokenize(text, read=READ_DIALECT)
        statements = sqlglot.parse(f"SELECT 1 FROM t WHERE {text}", read=READ_DIALECT)
    except SqlglotError:
        raise InvalidQuery(f"where {text!r} is not a single SQL condition", clause="WHERE") from None
    if any(t.comments for t in tokens):
        raise InvalidQuery("where may not contain comments", clause="WHERE")
    stmt = statements[0] if len(statements) == 1 else None
    extra = [k for k, v in stmt.args.items() if v and k not in ("expressions", "from_", "from", "where")] \
        if isinstance(stmt, exp.Select) else ["statement"]
    if extra or stmt is None or stmt.args.get("where") is None:
        raise InvalidQuery(f"where {text!r} must be one condition, with nothing after it "
                           f"(found {', '.join(extra) or 'more than one statement'})", clause="WHERE")
    return "(" + stmt.args["where"].this.sql(dialect=READ_DIALECT, comments=False) + ")"


__all__ = ["parse_statement", "sql_text", "where_condition", "with_group_size"]
