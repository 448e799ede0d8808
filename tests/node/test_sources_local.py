"""Node-local execution over CSV and Parquet against a brute-force Python computation."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pytest

from xdp_compute.domain.manifest import DatasetSpec, Manifest, load_manifest
from xdp_compute.node.sources import FixedPointOverflow, SourceError, open_source, run_local_query
from xdp_compute.query import QueryPlan, decode_totals, plan_query
from xdp_compute.query.where import And, Between, Compare, InList, IsNull, Not, Or, Predicate

MANIFEST = """
[node]
name = "n1"
region = "CN-FJ"

[[datasets]]
name = "people"
source = "{source}"
classification = "internal"
epsilon_budget = 10

[datasets.columns]
age = {{ type = "int", min = 0, max = 100, uses = ["aggregate", "filter"] }}
income = {{ type = "float", min = -50, max = 1000, uses = ["aggregate", "filter"] }}
region = {{ type = "category", values = ["north", "south", "east", "west"], uses = ["group", "filter"] }}
smoker = {{ type = "bool", uses = ["group", "filter", "aggregate"] }}
sex = {{ type = "category", values = ["f", "m"], uses = ["aggregate", "group", "filter"] }}
"""

HEADER = ["Age", "income", "region", "smoker", "sex", "note"]  # 'Age': the file's own spelling


def _make_rows(n: int, seed: int) -> list[list[str]]:
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        r = rng.random()
        age = "" if r < 0.05 else ("abc" if r < 0.08 else str(int(rng.integers(-20, 151))))  # some out of bounds
        r = rng.random()
        income = "" if r < 0.05 else ("nan" if r < 0.07 else f"{rng.uniform(-200, 1500):.3f}")
        region = str(rng.choice(["north", "south", "east", "", "mars"], p=[0.4, 0.3, 0.2, 0.05, 0.05]))
        smoker = str(rng.choice(["true", "false", "1", "0", "", "maybe"], p=[0.3, 0.4, 0.1, 0.1, 0.05, 0.05]))
        sex = str(rng.choice(["f", "m", "x", ""], p=[0.45, 0.45, 0.05, 0.05]))
        rows.append([age, income, region, smoker, sex, "free, text \"quoted\""])
    return rows


def _write_csv(path: Path, rows: list[list[str]]) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(HEADER)
        w.writerows(rows)


def _load(tmp_path: Path, source: str) -> tuple[Manifest, DatasetSpec]:
    mpath = tmp_path / "node.toml"
    mpath.write_text(MANIFEST.format(source=source))
    m = load_manifest(mpath)
    return m, m.datasets[0]


# -- brute force --------------------------------------------------------------------------------


def _typed(spec_type: str, raw: str) -> Any:
    if raw == "":
        return None
    if spec_type in ("int", "float"):
        try:
            v = float(raw)
        except ValueError:
            return None
        return None if math.isnan(v) else v
    if spec_type == "bool":
        return {"true": True, "false": False, "1": True, "0": False}.get(raw.lower())
    return raw


def _eval(p: Predicate, row: dict[str, Any]) -> bool | None:
    """Kleene three-valued logic, as SQL."""
    if isinstance(p, And | Or):
        vals = [_eval(i, row) for i in p.items]
        if isinstance(p, And):
            return False if False in vals else (None if None in vals else True)
        return True if True in vals else (None if None in vals else False)
    if isinstance(p, Not):
        v = _eval(p.item, row)
        return None if v is None else not v
    x = row[p.column]
    if isinstance(p, IsNull):
        return (x is not None) if p.negated else (x is None)
    if x is None:
        return None
    if isinstance(p, Compare):
        return {"=": x == p.value, "<>": x != p.value, "<": x < p.value, "<=": x <= p.value,
                ">": x > p.value, ">=": x >= p.value}[p.op]
    if isinstance(p, InList):
        return (x not in p.values) if p.negated else (x in p.values)
    if isinstance(p, Between):
        inside = p.low <= x <= p.high
        return not inside if p.negated else inside
    raise TypeError(p)


def _brute_force(plan: QueryPlan, ds: DatasetSpec, rows: list[list[str]]) -> np.ndarray:
    cols = {c.name: c for c in ds.columns}
    out = np.zeros((len(plan.cells), len(plan.measurements)))
    cell_index = {c: i for i, c in enumerate(plan.cells)}
    for raw in rows:
        row = {name.lower(): _typed(cols[name.lower()].type, raw[i])
               for i, name in enumerate(HEADER) if name.lower() in cols}
        if plan.where is not None and _eval(plan.where, row) is not True:
            continue
        key = tuple("true" if row[g] is True else "false" if row[g] is False else row[g]
                    for g in plan.group_columns)
        if key not in cell_index:
            continue  # undeclared or NULL group value
        ci = cell_index[key]
        for j, m in enumerate(plan.measurements):
            if m.column is None:
                out[ci, j] += 1
                continue
            spec = cols[m.column]
            x = row[m.column]
            if spec.numeric:
                v = None if x is None else min(max(x, spec.min), spec.max)
            elif spec.type == "bool":
                v = None if x is None else float(x)
            else:
                v = {spec.values[0]: 0.0, spec.values[1]: 1.0}.get(x)
            if v is None:
                continue
            out[ci, j] += 1 if m.kind == "count" else (v if m.kind == "sum" else v * v)
    return out


def _check(plan: QueryPlan, vec: np.ndarray, expected: np.ndarray) -> None:
    assert vec.dtype == np.uint64 and vec.shape == (plan.vector_length,)
    got = decode_totals(plan, vec)
    for j, m in enumerate(plan.measurements):
        if m.kind == "count":
            assert np.array_equal(got[:, j], expected[:, j]), m.key
        else:
            # one rounding of the float sum: within half a unit, plus float summation noise
            tol = 0.5 / m.scale + 1e-9 * np.abs(expected[:, j]).max(initial=1.0)
            assert np.all(np.abs(got[:, j] - expected[:, j]) <= tol), m.key


QUERIES = [
    "SELECT COUNT(*) FROM people",
    ("SELECT region, smoker, COUNT(*), SUM(age), AVG(income), VARIANCE(income), STDDEV(age), COUNT(age) "
     "FROM people GROUP BY region, smoker"),
    ("SELECT sex, AVG(smoker), SUM(sex), COUNT(sex) FROM people "
     "WHERE (age >= 30 AND region <> 'east') OR income < 0 GROUP BY sex"),
    ("SELECT region, SUM(income), COUNT(*) FROM people "
     "WHERE region IN ('north', 'south') AND NOT smoker AND age IS NOT NULL GROUP BY region"),
    "SELECT COUNT(*), SUM(age), VARIANCE(income) FROM people WHERE age > 1000",
    ("SELECT smoker, COUNT(*), SUM(income) FROM people "
     "WHERE income NOT BETWEEN 0 AND 500 OR age IS NULL OR sex NOT IN ('m') GROUP BY smoker"),
]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[list[str]]]:
    d = tmp_path_factory.mktemp("csvsrc")
    rows = _make_rows(3000, seed=20240601)
    _write_csv(d / "people.csv", rows)
    return d, rows


@pytest.mark.parametrize("sql", QUERIES)
def test_csv_matches_brute_force(sql: str, data: tuple[Path, list[list[str]]]) -> None:
    d, rows = data
    m, ds = _load(d, "people.csv")
    plan = plan_query(sql, ds)
    vec = run_local_query(QueryPlan.from_dict(plan.to_dict()), m, ds)
    expected = _brute_force(plan, ds, rows)
    _check(plan, vec, expected)


def test_absent_groups_are_zero(data: tuple[Path, list[list[str]]]) -> None:
    d, _ = data
    m, ds = _load(d, "people.csv")
    plan = plan_query("SELECT region, COUNT(*), SUM(income) FROM people "
                      "WHERE region IN ('north', 'south') GROUP BY region", ds)
    vec = run_local_query(plan, m, ds).reshape(len(plan.cells), -1)
    regions = [c[0] for c in plan.cells]
    assert np.all(vec[regions.index("east")] == 0)  # filtered out
    assert np.all(vec[regions.index("west")] == 0)  # declared, never present in the data
    assert np.all(vec[regions.index("north")] > 0)


def test_clipping_is_applied(data: tuple[Path, list[list[str]]]) -> None:
    d, rows = data
    m, ds = _load(d, "people.csv")
    plan = plan_query("SELECT SUM(age) FROM people", ds)
    got = decode_totals(plan, run_local_query(plan, m, ds))[0, 0]
    ages = [float(r[0]) for r in rows if r[0] not in ("", "abc")]
    assert any(a > 100 or a < 0 for a in ages)
    assert got == pytest.approx(sum(min(max(a, 0.0), 100.0) for a in ages), abs=1e-3)
    assert got != pytest.approx(sum(ages), abs=1.0)


def test_negative_sums_are_twos_complement(tmp_path: Path) -> None:
    _write_csv(tmp_path / "people.csv", [["1", "-40", "north", "true", "f", ""]] * 3)
    m, ds = _load(tmp_path, "people.csv")
    plan = plan_query("SELECT SUM(income) FROM people", ds)
    vec = run_local_query(plan, m, ds)
    f = plan.measurements[0].frac_bits
    assert int(vec[0]) == 2**64 - 120 * 2**f
    assert decode_totals(plan, vec)[0, 0] == -120.0


def test_parquet_source_matches_brute_force(data: tuple[Path, list[list[str]]], tmp_path: Path) -> None:
    d, rows = data
    pq = tmp_path / "people.parquet"
    con = duckdb.connect()
    con.execute("SET disabled_optimizers = 'type_pushdown'")  # duckdb/duckdb#23818
    con.execute(
        f"COPY (SELECT TRY_CAST(Age AS BIGINT) AS Age, TRY_CAST(income AS DOUBLE) AS income, region, "
        f"TRY_CAST(smoker AS BOOLEAN) AS smoker, sex FROM read_csv('{d / 'people.csv'}', header = true, "
        f"all_varchar = true)) TO '{pq}' (FORMAT parquet)")
    con.close()
    m, ds = _load(tmp_path, "people.parquet")
    src = open_source(m, ds)
    assert src.dialect == "duckdb" and "read_parquet" in src.relation_sql().lower()
    src.close()
    for sql in QUERIES[1:3]:
        plan = plan_query(sql, ds)
        _check(plan, run_local_query(plan, m, ds), _brute_force(plan, ds, rows))


def test_duckdb_is_sandboxed_to_the_declared_file(data: tuple[Path, list[list[str]]]) -> None:
    d, _ = data
    m, ds = _load(d, "people.csv")
    (d / "other.csv").write_text("a\n1\n")
    with open_source(m, ds) as src:
        assert src.execute(f"SELECT COUNT(*) FROM {src.relation_sql()}") == [(3000,)]
        with pytest.raises(SourceError):
            src.execute(f"SELECT * FROM read_csv('{d / 'other.csv'}')")
        with pytest.raises(SourceError):
            src.execute("INSTALL httpfs")
        with pytest.raises(SourceError):
            src.execute("SET enable_external_access = true")


def test_missing_file_and_missing_column_are_source_errors(tmp_path: Path) -> None:
    from xdp_compute.domain.manifest import parse_manifest_text

    m = parse_manifest_text(MANIFEST.format(source="absent.csv"), base_dir=tmp_path, check_files=False)
    ds = m.datasets[0]
    plan = plan_query("SELECT COUNT(*) FROM people", ds)
    with pytest.raises(SourceError, match="source file not found"):
        run_local_query(plan, m, ds)
    (tmp_path / "absent.csv").write_text("Age,income\n1,2\n")
    plan = plan_query("SELECT region, SUM(age) FROM people GROUP BY region", ds)
    with pytest.raises(SourceError, match="column 'region' missing"):
        run_local_query(plan, m, ds)


def test_malformed_csv_never_leaks_the_line(tmp_path: Path) -> None:
    _write_csv(tmp_path / "people.csv", [["1", "2", "north", "true", "f", ""]] * 5)
    with (tmp_path / "people.csv").open("a") as f:
        f.write("7,SECRET_VALUE_42,north\n")  # too few fields
    m, ds = _load(tmp_path, "people.csv")
    plan = plan_query("SELECT COUNT(*) FROM people", ds)
    with pytest.raises(SourceError) as info:
        run_local_query(plan, m, ds)
    assert "SECRET_VALUE_42" not in info.value.detail and "could not be read" in info.value.detail
    with open_source(m, ds, skip_malformed_lines=True) as src:
        vec = run_local_query(plan, m, ds, source=src)
    assert int(vec[0]) == 5


def test_node_refuses_plan_its_manifest_forbids(data: tuple[Path, list[list[str]]]) -> None:
    from xdp_compute.errors import InvalidQuery

    d, _ = data
    m, ds = _load(d, "people.csv")
    plan = plan_query("SELECT SUM(age) FROM people", ds)
    d2 = plan.to_dict()
    d2["measurements"][0]["bound"] = 1.0
    with pytest.raises(InvalidQuery):
        run_local_query(QueryPlan.from_dict(d2), m, ds)


def test_overflow_is_refused_not_wrapped(tmp_path: Path) -> None:
    _write_csv(tmp_path / "people.csv", [["100", "1000", "north", "true", "f", ""]] * 5000)
    m, ds = _load(tmp_path, "people.csv")
    # 2^16 parties leave |v| < 2^46 per node. sumsq(income) (bound 1e6, f = 0) totals 5e9: fine.
    plan = plan_query("SELECT VARIANCE(income) FROM people", ds, max_parties=2**16)
    run_local_query(plan, m, ds)
    # A (wrong) row cap of 1 buys f = 24: 5000 rows * 1000 * 2^24 = 8.4e13 > 2^46 = 7.0e13.
    plan = plan_query("SELECT SUM(income) FROM people", ds, max_rows_per_node=1, max_parties=2**16)
    assert plan.measurements[0].frac_bits == 24
    with pytest.raises(FixedPointOverflow, match=r"sum\(income\)"):
        run_local_query(plan, m, ds)
