"""The node's kept DuckDB sources (``SourceCache``): same results as a fresh engine, never stale,
a bad cell still a NULL, the sandbox intact, safe under concurrent queries."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest
from test_sources_local import QUERIES, _brute_force, _check, _load, _make_rows, _write_csv

from xdp_compute.node.sources import DuckDBSource, SourceCache, SourceError, run_local_query
from xdp_compute.query import decode_totals, plan_query


@pytest.fixture(params=["materialised", "scanned"])
def cache(request: pytest.FixtureRequest) -> SourceCache:
    # "scanned": a file above the size limit is read by every query, on the kept engine.
    c = SourceCache() if request.param == "materialised" else SourceCache(materialise_max_bytes=0)
    yield c  # type: ignore[misc]
    c.close()


def _tables(cache: SourceCache) -> list[str]:
    (src,) = cache._sources.values()
    return [r[0] for r in src.execute("SELECT table_name FROM duckdb_tables()")]


@pytest.mark.parametrize("sql", QUERIES)
def test_cached_source_matches_brute_force_with_malformed_cells(tmp_path: Path, cache: SourceCache,
                                                               sql: str) -> None:
    # _make_rows puts 'abc' in int cells, 'nan' in float cells, 'maybe' in bool cells: each
    # must be a NULL (not counted, not summed), never a failed query.
    rows = _make_rows(2000, seed=7)
    _write_csv(tmp_path / "people.csv", rows)
    m, ds = _load(tmp_path, "people.csv")
    plan = plan_query(sql, ds)
    for _ in range(2):  # the second run is served by the kept engine (and table)
        _check(plan, run_local_query(plan, m, ds, sources=cache), _brute_force(plan, ds, rows))


def test_every_cell_malformed_is_null_not_a_failure(tmp_path: Path, cache: SourceCache) -> None:
    _write_csv(tmp_path / "people.csv", [["x1", "1e999x", "north", "perhaps", "f", ""]] * 4
               + [["5", "10", "north", "true", "f", ""]])
    m, ds = _load(tmp_path, "people.csv")
    plan = plan_query("SELECT COUNT(*), COUNT(age), SUM(age), SUM(income), COUNT(smoker) FROM people", ds)
    got = decode_totals(plan, run_local_query(plan, m, ds, sources=cache))[0]
    assert list(got) == [5, 1, 5, 10, 1]


def test_cache_is_not_stale_after_the_file_changes(tmp_path: Path, cache: SourceCache) -> None:
    path = tmp_path / "people.csv"
    _write_csv(path, [["10", "1", "north", "true", "f", ""]] * 3)
    m, ds = _load(tmp_path, "people.csv")
    plan = plan_query("SELECT COUNT(*), SUM(age) FROM people", ds)

    def totals() -> list[float]:
        return list(decode_totals(plan, run_local_query(plan, m, ds, sources=cache))[0])

    assert totals() == [3, 30]
    # 1. Same size, same mtime restored: only the content (and ctime) differ.
    st = path.stat()
    _write_csv(path, [["20", "1", "north", "true", "f", ""]] * 3)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns
    assert totals() == [3, 60]
    # 2. Rows appended.
    with path.open("a") as f:
        f.write("30,1,north,true,f,\n")
    assert totals() == [4, 90]
    # 3. Replaced by rename (another inode), with a column renamed in its header.
    other = tmp_path / "new.csv"
    other.write_text("AGE,income,region,smoker,sex\n40,1,north,true,f\n")
    other.replace(path)
    assert totals() == [1, 40]
    # 4. A column dropped: the query is refused as for a fresh engine, not answered from the old file.
    path.write_text("income,region\n1,north\n")
    with pytest.raises(SourceError, match="column 'age' missing"):
        totals()
    # 5. Removed.
    path.unlink()
    with pytest.raises(SourceError, match="source file not found"):
        totals()


def test_superseded_tables_are_dropped(tmp_path: Path) -> None:
    cache = SourceCache()
    path = tmp_path / "people.csv"
    path.write_text("")
    m, ds = _load(tmp_path, "people.csv")
    plan = plan_query("SELECT COUNT(*) FROM people", ds)
    for n in range(1, 5):
        _write_csv(path, [["1", "1", "north", "true", "f", ""]] * n)
        assert int(run_local_query(plan, m, ds, sources=cache)[0]) == n
        assert len(_tables(cache)) == 1
    cache.close()


def test_a_table_in_use_survives_a_reload(tmp_path: Path) -> None:
    cache = SourceCache()
    path = tmp_path / "people.csv"
    _write_csv(path, [["1", "1", "north", "true", "f", ""]] * 2)
    m, ds = _load(tmp_path, "people.csv")
    with cache.open(m, ds) as old:
        _write_csv(path, [["1", "1", "north", "true", "f", ""]] * 7)
        with cache.open(m, ds) as new:
            assert new.execute(f"SELECT COUNT(*) FROM {new.relation_sql()}") == [(7,)]
            assert old.execute(f"SELECT COUNT(*) FROM {old.relation_sql()}") == [(2,)]
        assert len(_tables(cache)) == 2
    assert len(_tables(cache)) == 1
    cache.close()


def test_kept_engine_stays_sandboxed(tmp_path: Path, cache: SourceCache) -> None:
    _write_csv(tmp_path / "people.csv", [["1", "1", "north", "true", "f", ""]])
    (tmp_path / "other.csv").write_text("a\nSECRET\n")
    m, ds = _load(tmp_path, "people.csv")
    plan = plan_query("SELECT COUNT(*) FROM people", ds)
    run_local_query(plan, m, ds, sources=cache)
    with cache.open(m, ds) as src:
        for sql in (f"SELECT * FROM read_csv('{tmp_path / 'other.csv'}')", "INSTALL httpfs",
                    "SET enable_external_access = true", "SET allowed_paths = ['/']",
                    "SET disabled_optimizers = ''"):
            with pytest.raises(SourceError) as info:
                src.execute(sql)
            assert "SECRET" not in info.value.detail


def test_malformed_line_fails_without_its_text_and_is_not_cached(tmp_path: Path, cache: SourceCache) -> None:
    path = tmp_path / "people.csv"
    _write_csv(path, [["1", "2", "north", "true", "f", ""]] * 5)
    with path.open("a") as f:
        f.write("7,SECRET_VALUE_42,north\n")  # too few fields
    m, ds = _load(tmp_path, "people.csv")
    plan = plan_query("SELECT COUNT(*) FROM people", ds)
    for _ in range(2):
        with pytest.raises(SourceError) as info:
            run_local_query(plan, m, ds, sources=cache)
        assert "SECRET_VALUE_42" not in info.value.detail and "could not be read" in info.value.detail
    _write_csv(path, [["1", "2", "north", "true", "f", ""]] * 5)  # the holder fixes the file
    assert int(run_local_query(plan, m, ds, sources=cache)[0]) == 5


def test_parquet_is_kept_and_sees_changes(tmp_path: Path, cache: SourceCache) -> None:
    import duckdb

    path = tmp_path / "people.parquet"

    def write(n: int) -> None:
        duckdb.execute(f"COPY (SELECT 10 AS age, 1.5 AS income, 'north' AS region, true AS smoker, 'f' AS sex "
                       f"FROM range({n})) TO '{path}' (FORMAT parquet)")

    write(3)
    m, ds = _load(tmp_path, "people.parquet")
    plan = plan_query("SELECT COUNT(*), SUM(age) FROM people", ds)
    assert list(decode_totals(plan, run_local_query(plan, m, ds, sources=cache))[0]) == [3, 30]
    write(5)
    assert list(decode_totals(plan, run_local_query(plan, m, ds, sources=cache))[0]) == [5, 50]
    assert len(cache._sources) == 1


@pytest.mark.parametrize("sql", QUERIES)
def test_parquet_matches_brute_force_loaded_or_scanned_with_enum_keys(tmp_path: Path, cache: SourceCache,
                                                                       sql: str) -> None:
    """Issue #13: a Parquet source above the table limit is scanned with its group keys as ENUMs
    (``local_sql(enum_keys=True)``); below it, loaded into a table with the IN list. Both give
    what a brute force over the rows gives, malformed cells (stored as text) included."""
    import duckdb

    rows = _make_rows(2000, seed=5)
    _write_csv(tmp_path / "people.csv", rows)
    duckdb.execute(f"COPY (SELECT * FROM read_csv('{tmp_path / 'people.csv'}', all_varchar=true)) "
                   f"TO '{tmp_path / 'people.parquet'}' (FORMAT parquet)")
    m, ds = _load(tmp_path, "people.parquet")
    plan = plan_query(sql, ds)
    with cache.open(m, ds) as src:
        scanned = "read_parquet" in src.relation_sql().lower()
        assert src.enum_keys is scanned
        assert scanned is (cache.materialise_max_bytes == 0)
    for _ in range(2):
        _check(plan, run_local_query(plan, m, ds, sources=cache), _brute_force(plan, ds, rows))


def test_parquet_above_a_mebibyte_is_scanned_not_loaded(tmp_path: Path) -> None:
    import duckdb

    from xdp_compute.node.sources import PARQUET_TABLE_MAX_BYTES

    path = tmp_path / "people.parquet"
    duckdb.execute(f"COPY (SELECT (random() * 100)::INT AS age, random() * 1e5 AS income, 'north' AS region, "
                   f"true AS smoker, 'f' AS sex FROM range(300000)) TO '{path}' (FORMAT parquet)")
    assert path.stat().st_size > PARQUET_TABLE_MAX_BYTES
    m, ds = _load(tmp_path, "people.parquet")
    cache = SourceCache()  # the default limit (256 MiB) would have loaded it before
    try:
        with cache.open(m, ds) as src:
            assert "read_parquet" in src.relation_sql().lower() and src.enum_keys
        plan = plan_query("SELECT region, COUNT(*) FROM people GROUP BY region", ds)
        assert list(decode_totals(plan, run_local_query(plan, m, ds, sources=cache))[0]) == [300000]
    finally:
        cache.close()


def test_concurrent_queries_on_one_kept_source(tmp_path: Path, cache: SourceCache) -> None:
    rows = _make_rows(3000, seed=11)
    _write_csv(tmp_path / "people.csv", rows)
    m, ds = _load(tmp_path, "people.csv")
    plans = [plan_query(q, ds) for q in QUERIES]
    expected = [_brute_force(p, ds, rows) for p in plans]
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            for i in range(6):
                j = (k + i) % len(plans)
                _check(plans[j], run_local_query(plans[j], m, ds, sources=cache), expected[j])
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(cache._sources) == 1


def test_column_names_follow_the_file(tmp_path: Path) -> None:
    path = tmp_path / "f.csv"
    path.write_text("a,b\n1,2\n")
    with DuckDBSource(path, "d") as src:
        assert src.column_names() == ["a", "b"]
        path.write_text("a,c\n1,2\n")
        assert src.column_names() == ["a", "c"]
        assert np.array_equal(src.execute(f"SELECT COUNT(*) FROM {src.relation_sql()}"), [(1,)])
