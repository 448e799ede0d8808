"""Fixed-point sizing, sensitivities, the plan's wire form and the node-side re-validation."""

from __future__ import annotations

import copy
import dataclasses
import json
from fractions import Fraction

import numpy as np
import pytest

from xdp_compute.domain.manifest import ColumnSpec, DatasetSpec, parse_manifest_text
from xdp_compute.errors import InvalidQuery
from xdp_compute.query import (
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

SQL = ("SELECT region, COUNT(*), AVG(age) AS mean_age, STDDEV(income) FROM people "
       "WHERE age BETWEEN 18 AND 65 AND NOT smoker GROUP BY region")


@pytest.fixture(scope="module")
def ds() -> DatasetSpec:
    return parse_manifest_text(MANIFEST, check_files=False).datasets[0]


@pytest.fixture(scope="module")
def plan(ds: DatasetSpec) -> QueryPlan:
    return plan_query(SQL, ds)


def _with_column(ds: DatasetSpec, name: str, **changes: object) -> DatasetSpec:
    cols = tuple(dataclasses.replace(c, **changes) if c.name == name else c for c in ds.columns)
    return dataclasses.replace(ds, columns=cols)


# -- fixed point ------------------------------------------------------------------------------


@pytest.mark.parametrize(("bound", "expected"), [(1.0, 22), (120.0, 16), (100000.0, 6), (1e10, 0), (0.0, 24)])
def test_frac_bits_default_parameters(bound: float, expected: int) -> None:
    assert frac_bits_for(bound) == expected


@pytest.mark.parametrize("bound", [0.5, 1.0, 3.0, 120.0, 2.5e4, 1e5, 2.0**20])
@pytest.mark.parametrize(("rows", "parties"), [(2**32, 128), (10**6, 16), (2**20, 1000)])
def test_frac_bits_is_the_largest_that_fits(bound: float, rows: int, parties: int) -> None:
    f = frac_bits_for(bound, max_rows_per_node=rows, max_parties=parties)
    assert 0 <= f <= 24
    fits = Fraction(rows) * bound * 2**f * parties < 2**62
    assert fits == headroom_guaranteed(bound, f, max_rows_per_node=rows, max_parties=parties)
    if f > 0:
        assert fits
    if f < 24:
        assert not Fraction(rows) * bound * 2 ** (f + 1) * parties < 2**62


def test_plan_measurements_carry_frac_bits_and_sensitivity(plan: QueryPlan) -> None:
    m = {x.key: x for x in plan.measurements}
    assert m["count"].frac_bits == 0 and m["count"].sensitivity == 1
    assert m["count(age)"].sensitivity == 1
    # Sized by the dataset's declared max_rows (default 10^6) x 128 parties below 2^62.
    assert plan.max_rows_per_node == 1_000_000
    assert m["sum(age)"].frac_bits == 24
    assert m["sum(age)"].sensitivity == 120 * 2**24 + 1
    assert m["sum(income)"].sensitivity == 100000 * 2**18 + 1
    assert m["sumsq(income)"].bound == 1e10 and m["sumsq(income)"].frac_bits == 1
    assert plan.sensitivities() == tuple(x.sensitivity for x in plan.measurements)
    assert plan.frac_bits_vector()[: len(plan.measurements)] == tuple(x.frac_bits for x in plan.measurements)


def test_a_worst_case_that_could_overflow_is_refused_at_plan_time(ds: DatasetSpec) -> None:
    # STDDEV(income): 2^32 rows x 128 parties x 1e10 per row > 2^62. Refused from public inputs,
    # so no node can fail on (and reveal) its true totals (issue #11).
    with pytest.raises(InvalidQuery, match=r"SUMSQ\(income\) could overflow.*max_rows"):
        plan_query(SQL, ds, max_rows_per_node=2**32)
    with pytest.raises(InvalidQuery, match="could overflow"):
        plan_query(SQL, dataclasses.replace(ds, max_rows=2**32))
    # The dataset's declared max_rows is the default, and a smaller one buys precision.
    assert plan_query(SQL, dataclasses.replace(ds, max_rows=1000)).max_rows_per_node == 1000
    for rows in (1, 1000, 10**6):
        for m in plan_query(SQL, ds, max_rows_per_node=rows).measurements:
            assert headroom_guaranteed(m.bound, m.frac_bits, max_rows_per_node=rows, max_parties=128)


def test_smaller_row_cap_buys_precision(ds: DatasetSpec) -> None:
    p = plan_query(SQL, ds, max_rows_per_node=2**20, max_parties=16)
    assert {x.key: x.frac_bits for x in p.measurements}["sum(age)"] == 24


def test_ring_encoding_round_trips_negative_values() -> None:
    assert to_ring(-1) == 2**64 - 1
    assert from_ring(to_ring(-12345)) == -12345
    assert encode_fixed(-1.5, 4) == -24
    assert encode_fixed(0.03125, 4) == 0  # 0.5 rounds to even
    vec = np.array([to_ring(encode_fixed(-2.25, 8))], dtype=np.uint64)
    assert int(vec[0].view(np.int64)) == -576


def test_decode_totals(ds: DatasetSpec) -> None:
    # The decoding half of the former test_decode_and_derive; the deriving half is in
    # test_query_finalize.py, on finalize_rows.
    p = plan_query("SELECT smoker, COUNT(*), SUM(income), AVG(age), VARIANCE(age), STDDEV(age) FROM people "
                   "GROUP BY smoker", ds)
    idx = {m.key: i for i, m in enumerate(p.measurements)}
    totals = {  # per cell: (count, count(age), sum(age), sumsq(age), sum(income))
        0: {"count": 4, "count(age)": 4, "sum(age)": 100.0, "sumsq(age)": 2600.0, "sum(income)": -10.5},
        1: {"count": 0, "count(age)": 0, "sum(age)": 0.0, "sumsq(age)": 0.0, "sum(income)": 0.0},
    }
    vec = np.zeros(p.vector_length, dtype=np.uint64)
    for ci, vals in totals.items():
        for key, v in vals.items():
            m = p.measurements[idx[key]]
            vec[p.index(ci, idx[key])] = to_ring(encode_fixed(v, m.frac_bits))
    dec = decode_totals(p, vec)
    assert dec.shape == (2, len(p.measurements))
    assert dec[0, idx["sum(income)"]] == -10.5


# -- wire form ----------------------------------------------------------------------------------


def test_round_trip_through_json(plan: QueryPlan) -> None:
    wire = json.loads(json.dumps(plan.to_dict()))
    back = QueryPlan.from_dict(wire)
    assert back == plan
    assert back.digest() == plan.digest()


def test_digest_changes_with_the_plan(ds: DatasetSpec, plan: QueryPlan) -> None:
    assert len(plan.digest()) == 64
    assert plan_query(SQL, ds).digest() == plan.digest()  # deterministic
    other = plan_query(SQL.replace("65", "66"), ds)
    assert other.digest() != plan.digest()
    assert plan_query(SQL, ds, max_parties=64).digest() != plan.digest()


@pytest.mark.parametrize("mutate", [
    lambda d: d.pop("cells"),
    lambda d: d.__setitem__("version", 99),
    lambda d: d.__setitem__("max_parties", 0),
    lambda d: d.__setitem__("max_rows_per_node", True),
    lambda d: d["measurements"][0].__setitem__("kind", "max"),
    lambda d: d["measurements"][1].__setitem__("frac_bits", 40),
    lambda d: d["measurements"][1].__setitem__("bound", float("nan")),
    lambda d: d["outputs"][1].__setitem__("inputs", [99]),
    lambda d: d.__setitem__("where", {"op": "drop_table"}),
    lambda d: d.__setitem__("where", {"op": "compare", "column": "age", "cmp": "~", "value": 1}),
    lambda d: d.__setitem__("where", {"op": "and", "items": [{"op": "is_null", "column": "age"}]}),
    lambda d: d.__setitem__("cells", [["north", "extra"]]),
    lambda d: d.__setitem__("columns", [{"name": "age"}]),
    lambda d: d.__setitem__("sql", None),
])
def test_malformed_wire_plans_are_invalid_query(plan: QueryPlan, mutate: object) -> None:
    d = copy.deepcopy(plan.to_dict())
    mutate(d)  # type: ignore[operator]
    with pytest.raises(InvalidQuery, match="plan"):
        QueryPlan.from_dict(d)


def test_from_dict_rejects_non_object() -> None:
    with pytest.raises(InvalidQuery):
        QueryPlan.from_dict([1, 2, 3])


# -- node-side re-validation -------------------------------------------------------------------


def test_validate_plan_for_accepts_same_manifest(ds: DatasetSpec, plan: QueryPlan) -> None:
    wire = QueryPlan.from_dict(json.loads(json.dumps(plan.to_dict())))
    assert validate_plan_for(wire, ds) == plan


def test_validate_plan_for_refuses_different_bounds(ds: DatasetSpec, plan: QueryPlan) -> None:
    mine = _with_column(ds, "age", max=100.0)
    with pytest.raises(InvalidQuery, match="column 'age' max differs"):
        validate_plan_for(plan, mine)


def test_validate_plan_for_applies_own_uses(ds: DatasetSpec, plan: QueryPlan) -> None:
    mine = _with_column(ds, "smoker", uses=("group", "aggregate"))  # this holder forbids filtering on it
    with pytest.raises(InvalidQuery, match="column 'smoker' may not be filtered on"):
        validate_plan_for(plan, mine)


def test_validate_plan_for_refuses_tampered_plan(ds: DatasetSpec, plan: QueryPlan) -> None:
    d = plan.to_dict()
    d["measurements"][2]["bound"] = 1.0  # understate a sensitivity
    with pytest.raises(InvalidQuery, match="'measurements' differs"):
        validate_plan_for(QueryPlan.from_dict(d), ds)
    d = plan.to_dict()
    d["where"] = None  # drop the analyst's filter
    with pytest.raises(InvalidQuery, match="'where' differs"):
        validate_plan_for(QueryPlan.from_dict(d), ds)
    d = plan.to_dict()
    d["cells"] = d["cells"][:1]
    with pytest.raises(InvalidQuery, match="'cells' differs"):
        validate_plan_for(QueryPlan.from_dict(d), ds)


def test_validate_plan_for_refuses_other_dataset(plan: QueryPlan, ds: DatasetSpec) -> None:
    with pytest.raises(InvalidQuery, match="not 'other'"):
        validate_plan_for(plan, dataclasses.replace(ds, name="other"))


def test_validate_plan_for_refuses_unknown_column_here(ds: DatasetSpec, plan: QueryPlan) -> None:
    mine = dataclasses.replace(ds, columns=tuple(c for c in ds.columns if c.name != "income")
                               + (ColumnSpec("salary", "float", 0, 1, uses=("aggregate",)),))
    with pytest.raises(InvalidQuery, match="unknown column 'income'"):
        validate_plan_for(plan, mine)


@pytest.mark.parametrize("text", ["age > 0 GROUP BY sick", "age > 0 --", "age > 0; DROP TABLE x",
                                  "age > 0 /* hidden */", "x) OR (1=1", "", "age > 0 LIMIT 1"])
def test_a_where_text_is_one_condition_or_refused(text: str) -> None:
    # Scores and trainings take a WHERE as text; it used to be spliced into the SQL, so
    # "age > 0 --" commented out the GROUP BY the gateway appended (issue #12).
    from xdp_compute.query.statement import where_condition

    with pytest.raises(InvalidQuery):
        where_condition(text)


def test_a_where_text_is_re_rendered_in_parentheses() -> None:
    from xdp_compute.query.score import score_sql
    from xdp_compute.query.statement import where_condition

    assert where_condition("clinic = 'a--b' OR age > 3") == "(clinic = 'a--b' OR age > 3)"
    assert score_sql("visits", ["age"], "age > 1 OR age < 0", ["clinic"]).endswith(
        "WHERE (age > 1 OR age < 0) GROUP BY clinic")
