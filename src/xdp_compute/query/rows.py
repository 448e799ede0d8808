"""Node-local row selection: a dataset's declared columns, filtered by a plan's WHERE.

DP training reads rows, not totals, but it must see exactly the rows a query with the same WHERE
would count. ``rows_sql`` therefore builds the filter with the pushdown's own predicate
(``pushdown._Columns.predicate``: typed, unclipped comparisons, literals quoted by sqlglot) over
the same source relation, as sqlglot expressions — never by splicing or re-parsing SQL text::

    SELECT src."c1", src."c2", .. FROM <source_sql> AS src [WHERE <plan's WHERE>]

Values come back as the source holds them (not cast, not clipped): the caller checks them
against the declared types and bounds. Only columns the dataset declares can be selected.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from sqlglot import exp

from xdp_compute.domain.manifest import DatasetSpec
from xdp_compute.errors import InvalidQuery
from xdp_compute.query.plan import QueryPlan
from xdp_compute.query.pushdown import DIALECTS, _Columns, _source_relation


def rows_sql(dataset: DatasetSpec, columns: Sequence[str], source_sql: str, dialect: str, *,
             plan: QueryPlan | None = None, column_map: Mapping[str, str] | None = None) -> str:
    """The rows of ``dataset`` that pass ``plan``'s WHERE (all rows without a plan), ``columns`` only.

    ``plan`` must already be validated against this node's manifest (``validate_plan_for``); only
    its WHERE is used. ``columns`` are declared names, selected in order; ``column_map`` maps
    declared names (case-insensitively) to the source's actual spelling, for the selected and the
    filtered columns alike. ``source_sql`` and ``dialect`` are as for ``local_sql``. Raises
    ``InvalidQuery`` for an undeclared column or a plan of another dataset.
    """
    if dialect not in DIALECTS:
        raise ValueError(f"dialect must be one of {DIALECTS}")
    if not columns:
        raise InvalidQuery("select at least one column")
    undeclared = [c for c in columns if dataset.column(c) is None]
    if undeclared:
        raise InvalidQuery(f"column {undeclared[0]!r} is not declared for dataset '{dataset.name}'")
    if plan is not None and plan.dataset != dataset.name:
        raise InvalidQuery(f"plan is for dataset '{plan.dataset}', not '{dataset.name}'")
    actual = {k.lower(): v for k, v in (column_map or {}).items()}
    select = [exp.column(actual.get(c.lower(), c), table="src", quoted=True) for c in columns]
    query = exp.Select(expressions=select).from_(_source_relation(source_sql, dialect), copy=False)
    if plan is not None and plan.where is not None:
        query = query.where(_Columns(plan, column_map).predicate(plan.where), copy=False)
    return query.sql(dialect=dialect)


__all__ = ["rows_sql"]
