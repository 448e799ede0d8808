"""Parsing and planning of the supported SQL shapes."""

from __future__ import annotations

import pytest

from xdp_compute.domain.manifest import DatasetSpec, parse_manifest_text
from xdp_compute.errors import InvalidQuery
from xdp_compute.query import (
    And,
    Between,
    Compare,
    InList,
    IsNull,
    Not,
    Or,
    plan_query,
    referenced_dataset,
)

MANIFEST = """
[node]
name = "n1"
region = "CN-FJ"

[[datasets]]
name = "people"
source = "people.csv"
classification = "internal"
epsilon_budget = 10

[datasets.columns]
age = { type = "int", min = 0, max = 120, uses = ["aggregate", "filter"] }
income = { type = "float", min = -1000, max = 100000, uses = ["aggregate", "filter"] }
region = { type = "category", values = ["north", "south", "east"], uses = ["group", "filter"] }
smoker = { type = "bool", uses = ["group", "filter", "aggregate"] }
sex = { type = "category", values = ["f", "m"], uses = ["aggregate", "group"] }
name = { type = "text", uses = [] }
"""


@pytest.fixture(scope="module")
def ds() -> DatasetSpec:
    return parse_manifest_text(MANIFEST, check_files=False).datasets[0]


def test_referenced_dataset_returns_name_as_written() -> None:
    assert referenced_dataset("select count(*) from People where age > 3") == "People"
    assert referenced_dataset("SELECT COUNT(*) FROM people AS p") == "people"


def test_referenced_dataset_refuses_bad_shapes_before_lookup() -> None:
    with pytest.raises(InvalidQuery, match="JOIN"):
        referenced_dataset("SELECT COUNT(*) FROM a JOIN b ON a.x = b.x")
    with pytest.raises(InvalidQuery, match="syntax"):
        referenced_dataset("SELECT COUNT(* FROM a")


def test_count_star_without_groups(ds: DatasetSpec) -> None:
    p = plan_query("SELECT COUNT(*) FROM people", ds)
    assert p.dataset == "people"
    assert p.group_columns == ()
    assert p.cells == ((),)
    assert [(m.kind, m.column, m.bound, m.frac_bits) for m in p.measurements] == [("count", None, 1.0, 0)]
    assert [(o.alias, o.kind, o.column, o.inputs) for o in p.outputs] == [("count", "count", None, (0,))]
    assert p.where is None
    assert p.vector_length == 1


def test_count_one_is_count_star(ds: DatasetSpec) -> None:
    p = plan_query("SELECT COUNT(1) FROM people", ds)
    assert [(m.kind, m.column) for m in p.measurements] == [("count", None)]


def test_all_aggregates_share_deduplicated_measurements(ds: DatasetSpec) -> None:
    p = plan_query(
        "SELECT COUNT(*), COUNT(age), SUM(age), AVG(age), VARIANCE(age), VAR_SAMP(age), VAR_POP(age), "
        "STDDEV(age), STDDEV_POP(age), STDDEV_SAMP(age), SUM(income) FROM people", ds)
    keys = [m.key for m in p.measurements]
    assert keys == ["count", "count(age)", "sum(age)", "sumsq(age)", "sum(income)"]
    kinds = [o.kind for o in p.outputs]
    assert kinds == ["count", "count", "sum", "avg"] + ["variance"] * 3 + ["stddev"] * 3 + ["sum"]
    by_alias = {o.alias: o for o in p.outputs}
    assert by_alias["avg_age"].inputs == (1, 2)
    assert by_alias["variance_age"].inputs == (1, 2, 3)
    assert by_alias["stddev_age"].inputs == (1, 2, 3)
    # default aliases are deterministic, lower-case and unique
    assert [o.alias for o in p.outputs] == [
        "count", "count_age", "sum_age", "avg_age", "variance_age", "variance_age_2", "variance_age_3",
        "stddev_age", "stddev_age_2", "stddev_age_3", "sum_income"]


def test_bounds_per_measurement(ds: DatasetSpec) -> None:
    p = plan_query("SELECT VARIANCE(income), STDDEV(smoker), AVG(sex) FROM people", ds)
    b = {m.key: m.bound for m in p.measurements}
    assert b["count(income)"] == 1.0
    assert b["sum(income)"] == 100000.0  # max(|-1000|, |100000|)
    assert b["sumsq(income)"] == 1e10
    assert b["sum(smoker)"] == 1.0 and b["sumsq(smoker)"] == 1.0
    assert b["sum(sex)"] == 1.0


def test_explicit_aliases_and_default_collisions(ds: DatasetSpec) -> None:
    p = plan_query("SELECT COUNT(*) AS sum_age, SUM(age), AVG(age) AS \"Mean Age\" FROM people", ds)
    assert [o.alias for o in p.outputs] == ["sum_age", "sum_age_2", "Mean Age"]


def test_group_by_cells_are_cross_product_of_declared_values(ds: DatasetSpec) -> None:
    p = plan_query("SELECT Region, smoker, COUNT(*) FROM PEOPLE GROUP BY region, SMOKER", ds)
    assert p.group_columns == ("region", "smoker")
    assert p.cells == (("north", "false"), ("north", "true"), ("south", "false"), ("south", "true"),
                       ("east", "false"), ("east", "true"))
    assert [(o.alias, o.kind, o.column) for o in p.outputs[:2]] == [("region", "group", "region"),
                                                                    ("smoker", "group", "smoker")]
    assert p.vector_length == 6
    assert p.index(2, 0) == 2


def test_group_column_need_not_be_selected(ds: DatasetSpec) -> None:
    p = plan_query("SELECT SUM(age) FROM people GROUP BY sex", ds)
    assert p.cells == (("f",), ("m",))


def test_table_alias_and_qualified_columns(ds: DatasetSpec) -> None:
    p = plan_query("SELECT p.region, SUM(people.age) FROM people p WHERE p.age > 3 GROUP BY p.region", ds)
    assert p.group_columns == ("region",)
    assert p.where == Compare("age", ">", 3)


def test_where_normalisation(ds: DatasetSpec) -> None:
    p = plan_query(
        "SELECT COUNT(*) FROM people WHERE (18 <= age AND NOT region IN ('north', 'east')) "
        "OR income NOT BETWEEN -5.5 AND 1e3 OR smoker OR age IS NOT NULL OR NOT (region = 'south') "
        "OR age != 7 OR region IS NULL OR smoker = false", ds)
    assert p.where == Or((
        And((Compare("age", ">=", 18), InList("region", ("north", "east"), negated=True))),
        Between("income", -5.5, 1000.0, negated=True),
        Compare("smoker", "=", True),
        IsNull("age", negated=True),
        Not(Compare("region", "=", "south")),
        Compare("age", "<>", 7),
        IsNull("region"),
        Compare("smoker", "=", False),
    ))


def test_long_and_chain_is_flattened(ds: DatasetSpec) -> None:
    cond = " AND ".join(f"age <> {i}" for i in range(200))
    p = plan_query(f"SELECT COUNT(*) FROM people WHERE {cond}", ds)
    assert isinstance(p.where, And) and len(p.where.items) == 200


def test_columns_snapshot_holds_referenced_columns_only(ds: DatasetSpec) -> None:
    p = plan_query("SELECT region, AVG(age) FROM people WHERE income > 0 GROUP BY region", ds)
    assert [c.name for c in p.columns] == ["age", "income", "region"]
    assert p.column("age").max == 120


def test_identifiers_are_case_insensitive_quoted_or_not(ds: DatasetSpec) -> None:
    p = plan_query('SELECT SUM("AGE") FROM "People" WHERE "Region" = \'north\'', ds)
    assert p.measurements[0].column == "age"
    assert p.where == Compare("region", "=", "north")


def test_category_literal_must_be_declared_exactly(ds: DatasetSpec) -> None:
    with pytest.raises(InvalidQuery, match="'North' is not a declared value of column 'region'"):
        plan_query("SELECT COUNT(*) FROM people WHERE region = 'North'", ds)
    with pytest.raises(InvalidQuery, match="'west' is not a declared value"):
        plan_query("SELECT COUNT(*) FROM people WHERE region IN ('north', 'west')", ds)
