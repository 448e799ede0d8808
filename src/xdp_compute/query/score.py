"""The federated query behind a linear score: per group, COUNT(*) and the SUM of each feature.

Shared by the gateway (which plans and releases it) and the SDK (which applies the weights to
what is released), so both name the released columns the same way.
"""

from __future__ import annotations

import re

from xdp_compute.errors import InvalidSpec
from xdp_compute.query.statement import where_condition

MAX_FEATURES = 64
COUNT_ALIAS = "n"
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


def feature_alias(feature: str) -> str:
    """The released column holding a feature's noisy clipped group sum."""
    return f"sum_{feature}"


def score_sql(dataset: str, features: list[str], where: str | None, group_by: list[str]) -> str:
    """``SELECT groups, COUNT(*) AS n, SUM(f) AS sum_f, ... FROM dataset [WHERE] [GROUP BY]``."""
    for name in [dataset, *features, *group_by]:
        if not isinstance(name, str) or not _IDENT.match(name):
            raise InvalidSpec(f"{name!r} is not a column or dataset identifier")
    if not 1 <= len(features) <= MAX_FEATURES:
        raise InvalidSpec(f"give 1..{MAX_FEATURES} features")
    lowered = {f.lower() for f in features}
    if len(lowered) != len(features):
        raise InvalidSpec("features must be distinct")
    if any(g.lower() in lowered for g in group_by):
        raise InvalidSpec("a group column cannot also be a feature")
    cols = ", ".join([*group_by, f"COUNT(*) AS {COUNT_ALIAS}", *(f"SUM({f}) AS {feature_alias(f)}" for f in features)])
    sql = f"SELECT {cols} FROM {dataset}"
    if where:
        sql += f" WHERE {where_condition(where)}"
    if group_by:
        sql += " GROUP BY " + ", ".join(group_by)
    return sql
