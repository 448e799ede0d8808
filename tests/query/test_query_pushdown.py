"""The node-local pushdown SQL: shape, quoting, transpilation and semantics on a tiny DuckDB table."""

from __future__ import annotations

import duckdb
import pytest
import sqlglot

from xdp_compute.domain.manifest import ColumnSpec, DatasetSpec
from xdp_compute.query import local_sql, plan_query

EVIL = "x'); DROP TABLE t; --"


def _ds() -> DatasetSpec:
    return DatasetSpec(
        name="t", source="t.csv", table=None, classification="internal", categories=(), epsilon_budget=1,
        delta=1e-6, min_group_size=0, require_approval=False,
        columns=(
            ColumnSpec("v", "float", -2.0, 10.0, uses=("aggregate", "filter")),
            ColumnSpec("g", "category", values=("o'brien", EVIL, "plain"), uses=("group", "filter")),
            ColumnSpec("b", "bool", values=("false", "true"), uses=("aggregate", "group", "filter")),
            ColumnSpec("two", "category", values=("no", "yes"), uses=("aggregate",)),
        ))


@pytest.fixture()
def con() -> duckdb.DuckDBPyConnection:
    c = duckdb.connect(":memory:")
    c.execute("CREATE TABLE t (v VARCHAR, g VARCHAR, b VARCHAR, two VARCHAR)")
    rows = [
        ("1.5", "o'brien", "true", "yes"),
        ("20", "o'brien", "false", "no"),    # clipped to 10
        ("-7", EVIL, "true", "yes"),         # clipped to -2
        (None, EVIL, "true", "maybe"),       # NULL value: not counted, not summed (not clipped to -2)
        ("abc", "plain", None, None),        # bad value: NULL
        ("nan", "plain", "true", "no"),      # NaN: treated as missing
        ("3", "undeclared", "true", "yes"),  # undeclared group value: excluded
        ("4", None, "false", "yes"),         # NULL group value: excluded
    ]
    c.executemany("INSERT INTO t VALUES (?, ?, ?, ?)", rows)
    return c


def test_sql_parses_in_both_dialects() -> None:
    p = plan_query("SELECT g, b, COUNT(*), VARIANCE(v), AVG(b), SUM(two) FROM t "
                   "WHERE v BETWEEN -1 AND 5 OR g IN ('plain') OR b IS NULL GROUP BY g, b", _ds())
    for dialect in ("duckdb", "postgres"):
        sql = local_sql(p, '"t"', dialect)
        sqlglot.parse_one(sql, read=dialect)  # well-formed
    pg = local_sql(p, '"t"', "postgres")
    assert "TRY_CAST" not in pg and "DOUBLE PRECISION" in pg
    assert "TRY_CAST" in local_sql(p, '"t"', "duckdb")


def test_unknown_dialect_is_refused() -> None:
    p = plan_query("SELECT COUNT(*) FROM t", _ds())
    with pytest.raises(ValueError):
        local_sql(p, "t", "mysql")


def test_grouped_clipped_sums_with_hostile_values(con: duckdb.DuckDBPyConnection) -> None:
    p = plan_query("SELECT g, COUNT(*), COUNT(v), SUM(v), VARIANCE(v) FROM t GROUP BY g", _ds())
    rows = con.execute(local_sql(p, "t", "duckdb")).fetchall()
    # the evil value went through as data, not SQL: the table is still there
    assert con.execute("SELECT COUNT(*) FROM t").fetchone() == (8,)
    got = {r[0]: r[1:] for r in rows}
    assert set(got) == {"o'brien", EVIL, "plain"}
    names = [m.key for m in p.measurements]
    assert names == ["count", "count(v)", "sum(v)", "sumsq(v)"]
    assert got["o'brien"] == (2, 2, 11.5, 1.5**2 + 100.0)
    assert got[EVIL] == (2, 1, -2.0, 4.0)
    assert got["plain"][:2] == (2, 0) and got["plain"][2] is None


def test_bool_and_two_valued_category_contribute_zero_one(con: duckdb.DuckDBPyConnection) -> None:
    p = plan_query("SELECT b, SUM(two), COUNT(two), COUNT(*) FROM t GROUP BY b", _ds())
    rows = {r[0]: r[1:] for r in con.execute(local_sql(p, "t", "duckdb")).fetchall()}
    # b=true rows with a declared g or not (no group on g here): 1.5/yes, -7/yes, None/maybe, nan/no, 3/yes
    assert rows["true"] == (3.0, 4, 5)
    assert rows["false"] == (1.0, 2, 2)
    assert None not in rows


def test_where_uses_unclipped_values_and_three_valued_logic(con: duckdb.DuckDBPyConnection) -> None:
    p = plan_query("SELECT COUNT(*) FROM t WHERE v > 10", _ds())
    assert con.execute(local_sql(p, "t", "duckdb")).fetchall() == [(1,)]  # the 20, not the clipped 10
    p = plan_query("SELECT COUNT(*) FROM t WHERE NOT v > 2", _ds())  # NULL/bad/NaN rows excluded
    assert con.execute(local_sql(p, "t", "duckdb")).fetchall() == [(2,)]  # 1.5 and -7
    p = plan_query("SELECT COUNT(*) FROM t WHERE v IS NULL", _ds())  # missing, bad and NaN
    assert con.execute(local_sql(p, "t", "duckdb")).fetchall() == [(3,)]
    p = plan_query(f"SELECT COUNT(*) FROM t WHERE g = '{EVIL.replace(chr(39), chr(39) * 2)}' AND b", _ds())
    assert con.execute(local_sql(p, "t", "duckdb")).fetchall() == [(2,)]
    p = plan_query("SELECT COUNT(*) FROM t WHERE g NOT IN ('plain') AND v BETWEEN -10 AND 2", _ds())
    assert con.execute(local_sql(p, "t", "duckdb")).fetchall() == [(2,)]  # 1.5 and -7


def test_column_map_renames_to_source_spelling() -> None:
    c = duckdb.connect(":memory:")
    c.execute('CREATE TABLE t ("V" VARCHAR)')
    c.execute("INSERT INTO t VALUES ('2'), ('3')")
    p = plan_query("SELECT SUM(v) FROM t", _ds())
    sql = local_sql(p, "t", "duckdb", column_map={"v": "V"})
    assert '"V"' in sql
    assert c.execute(sql).fetchall() == [(5.0,)]


def test_memoised_sql_is_the_generated_sql_and_keys_on_the_canonical_plan() -> None:
    import dataclasses

    from xdp_compute.query import pushdown

    ds = _ds()
    one = plan_query("SELECT g, SUM(v) FROM t WHERE v > 1 GROUP BY g", ds)
    # Equal as objects (1 == 1.0, same hash), different plans on the wire: each gets its own SQL.
    one_f = dataclasses.replace(plan_query("SELECT g, SUM(v) FROM t WHERE v > 1.0 GROUP BY g", ds), sql=one.sql)
    assert one == one_f and one.to_json() != one_f.to_json()
    for plan in (one, one_f, one, one_f):
        for rel, cmap in (('"t"', None), ('"t"', {"v": "V"}), ("read_parquet('/x.parquet')", None)):
            got = local_sql(plan, rel, "duckdb", column_map=cmap)
            assert got == pushdown._generate_local_sql(plan, rel, "duckdb", cmap)
    assert local_sql(one, '"t"', "duckdb") != local_sql(one_f, '"t"', "duckdb")
    assert local_sql(one, '"t"', "duckdb") != local_sql(one, '"t"', "postgres")
    memo = pushdown._SqlMemo(size=2)
    for rel in ('"a"', '"b"', '"c"'):
        memo.get(one, rel, "duckdb", None)
    assert [k[1] for k in memo._entries] == ['"b"', '"c"']  # bounded: the oldest went first


ENUM_QUERIES = (
    "SELECT g, COUNT(*), COUNT(v), SUM(v), VARIANCE(v) FROM t GROUP BY g",
    "SELECT g, b, COUNT(*), AVG(v), SUM(two) FROM t WHERE v BETWEEN -10 AND 50 OR g IN ('plain') GROUP BY g, b",
    "SELECT b, SUM(two), COUNT(*) FROM t GROUP BY b",
    f"SELECT g, COUNT(*) FROM t WHERE g <> '{EVIL.replace(chr(39), chr(39) * 2)}' GROUP BY g",
    "SELECT COUNT(*), SUM(v) FROM t",
)


def _near_undeclared(c: duckdb.DuckDBPyConnection) -> None:
    """Keys one character or one case away from a declared value, which an ENUM must not match."""
    c.executemany("INSERT INTO t VALUES (?, ?, ?, ?)", [
        ("1", "Plain", "true", "yes"), ("1", "plain ", "true", "yes"), ("1", " plain", "false", "no"),
        ("1", "o'brien'", "true", "yes"), ("1", "", "true", "yes"), ("2", "plain", "true", "yes"),
    ])


@pytest.mark.parametrize("sql", ENUM_QUERIES)
def test_enum_keys_give_the_same_rows_as_the_in_list(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    """Issue #13: category keys as ENUMs of the declared values are a faster spelling of the same
    query; undeclared, near-miss and NULL keys stay out, the evil value stays data."""
    _near_undeclared(con)
    p = plan_query(sql, _ds())
    enum_sql = local_sql(p, "t", "duckdb", enum_keys=True)
    assert ("ENUM(" in enum_sql) is bool(p.group_columns and "g" in p.group_columns)
    want = sorted(con.execute(local_sql(p, "t", "duckdb")).fetchall(), key=repr)
    got = sorted(con.execute(enum_sql).fetchall(), key=repr)
    assert got == want
    assert all(isinstance(r[i], str) for r in got for i in range(len(p.group_columns)))  # keys back as text
    assert con.execute("SELECT COUNT(*) FROM t").fetchone() == (14,)


@pytest.mark.parametrize("dictionary", [True, False])
def test_enum_keys_on_parquet_match_with_and_without_dictionary_encoding(tmp_path, dictionary: bool) -> None:
    """The Parquet scan the node runs (``DuckDBSource.enum_keys``), on a file whose category column
    is dictionary-encoded and on one whose is not, and on a category stored as integers."""
    c = duckdb.connect(":memory:")
    c.execute("CREATE TABLE raw AS SELECT (i % 50)::DOUBLE / 3 AS v, "
              "CASE i % 7 WHEN 0 THEN 'plain' WHEN 1 THEN 'o''brien' WHEN 2 THEN 'PLAIN' WHEN 3 THEN NULL "
              "ELSE 'other' || (i % 5)::VARCHAR END AS g, i % 2 = 0 AS b, "
              "CASE WHEN i % 3 = 0 THEN 'yes' ELSE 'no' END AS two, i % 4 AS n FROM range(5000) r(i)")
    path = tmp_path / "t.parquet"
    opts = "" if dictionary else ", STRING_DICTIONARY_PAGE_SIZE_LIMIT 1"
    c.execute(f"COPY raw TO '{path}' (FORMAT parquet{opts})")
    encodings = {r[0]: r[1] for r in c.execute(f"SELECT path_in_schema, encodings FROM parquet_metadata('{path}')")
                 .fetchall()}
    assert ("DICTIONARY" in encodings["g"]) is dictionary
    ds = DatasetSpec(
        name="t", source="t.parquet", table=None, classification="internal", categories=(), epsilon_budget=1,
        delta=1e-6, min_group_size=0, require_approval=False,
        columns=(
            ColumnSpec("v", "float", 0.0, 10.0, uses=("aggregate", "filter")),
            ColumnSpec("g", "category", values=("o'brien", "plain", "gone"), uses=("group", "filter")),
            ColumnSpec("b", "bool", values=("false", "true"), uses=("aggregate", "group", "filter")),
            ColumnSpec("two", "category", values=("no", "yes"), uses=("aggregate", "group")),
            ColumnSpec("n", "category", values=("1", "3"), uses=("group",)),
        ))
    rel = f"read_parquet('{path}')"
    for sql in ("SELECT g, two, COUNT(*), SUM(v) FROM t GROUP BY g, two", "SELECT n, b, COUNT(*) FROM t GROUP BY n, b",
                "SELECT g, COUNT(v), AVG(v) FROM t WHERE b AND v > 3 GROUP BY g"):
        p = plan_query(sql, ds)
        want = sorted(c.execute(local_sql(p, rel, "duckdb")).fetchall(), key=repr)
        got = sorted(c.execute(local_sql(p, rel, "duckdb", enum_keys=True)).fetchall(), key=repr)
        assert got == want and got
        keys = {r[0] for r in got}
        assert keys <= {"o'brien", "plain", "1", "3"} and "gone" not in keys


def test_enum_keys_are_duckdb_only() -> None:
    p = plan_query("SELECT g, COUNT(*) FROM t GROUP BY g", _ds())
    with pytest.raises(ValueError):
        local_sql(p, '"t"', "postgres", enum_keys=True)
    assert local_sql(p, '"t"', "duckdb", enum_keys=True) != local_sql(p, '"t"', "duckdb")  # memo keys on it
