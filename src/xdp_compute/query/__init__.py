"""Federated DP SQL: parse and plan the analyst's query, node-local pushdown SQL, release rows.

Flow: ``referenced_dataset(sql)`` -> look the dataset up -> ``plan_query(sql, dataset)`` ->
``plan.to_dict()`` to the nodes -> each node ``validate_plan_for`` + ``local_sql`` (see
``xdp_compute.node.sources.run_local_query``) -> secure aggregation + noise of the uint64
vectors -> ``from_ring`` of the noisy total -> ``finalize.finalize_rows`` (estimates and
intervals) -> ``finalize.suppress_small_groups``. ``decode_totals`` reads a vector's real totals
(for checks and tests; the release path stays in integers until ``finalize_rows``).
"""

from xdp_compute.query.parse import referenced_dataset
from xdp_compute.query.plan import (
    CellTotal,
    OutputColumn,
    QueryPlan,
    decode_totals,
    encode_fixed,
    frac_bits_for,
    from_ring,
    headroom_guaranteed,
    plan_query,
    to_ring,
    validate_plan_for,
)
from xdp_compute.query.pushdown import local_sql
from xdp_compute.query.where import And, Between, Compare, InList, IsNull, Not, Or, Predicate

__all__ = [
    "And",
    "Between",
    "CellTotal",
    "Compare",
    "InList",
    "IsNull",
    "Not",
    "Or",
    "OutputColumn",
    "Predicate",
    "QueryPlan",
    "decode_totals",
    "encode_fixed",
    "frac_bits_for",
    "from_ring",
    "headroom_guaranteed",
    "local_sql",
    "plan_query",
    "referenced_dataset",
    "to_ring",
    "validate_plan_for",
]
