"""The gateway parses a query once: planning from the tree equals planning from the text."""

from __future__ import annotations

import pytest

from xdp_compute.domain.manifest import DatasetSpec, parse_manifest_text
from xdp_compute.query import plan_query, referenced_dataset, validate_plan_for
from xdp_compute.query.finalize import GROUP_SIZE_ALIAS
from xdp_compute.query.statement import parse_statement, sql_text, with_group_size

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
"""

QUERIES = [
    "SELECT COUNT(*) FROM people",
    "SELECT region, AVG(age) AS a FROM People WHERE age BETWEEN 18 AND 65 AND NOT smoker GROUP BY region",
    "select smoker, sum(income), variance(age) from people p where p.region in ('north', 'east') group by smoker",
    "SELECT region, smoker, STDDEV(income) FROM people WHERE income > -5.5 OR age IS NULL GROUP BY region, smoker",
]


@pytest.fixture(scope="module")
def ds() -> DatasetSpec:
    return parse_manifest_text(MANIFEST, check_files=False).datasets[0]


@pytest.mark.parametrize("sql", QUERIES)
def test_one_parse_plans_like_the_text_and_nodes_rederive_it(ds: DatasetSpec, sql: str) -> None:
    stmt = parse_statement(sql)
    assert referenced_dataset(stmt).lower() == "people"
    tree, hidden = with_group_size(stmt)
    text = sql_text(tree) if hidden else sql
    from_tree = plan_query(text, ds, statement=tree)
    assert from_tree.to_dict() == plan_query(text, ds).to_dict()
    # A node re-plans from the recorded text; the gateway's one-parse plan must match it exactly.
    assert validate_plan_for(from_tree, ds).to_dict() == from_tree.to_dict()
    assert hidden == ("COUNT(*)" not in sql.upper())
    if hidden:
        assert GROUP_SIZE_ALIAS in text and GROUP_SIZE_ALIAS not in sql
