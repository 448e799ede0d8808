"""Folders and globs of Parquet files (issue #14): hive partitions as columns, the same totals as a
brute-force count over the rows written, a cache that follows the set of files, and a sandbox
that reads the listed files only."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pytest

from xdp_compute.domain.manifest import DatasetSpec, Manifest, load_manifest
from xdp_compute.node.sources import SourceCache, SourceError, open_source, run_local_query
from xdp_compute.node.validate import validate_source
from xdp_compute.query import decode_totals, plan_query

MANIFEST = """
[node]
name = "n1"
region = "CN-FJ"

[[datasets]]
name = "sales"
source = "{source}"
classification = "internal"
epsilon_budget = 10

[datasets.columns]
year   = {{ type = "int", min = 2020, max = 2025, uses = ["aggregate", "filter"] }}
month  = {{ type = "category", values = ["01", "02", "03"], uses = ["group", "filter"] }}
amount = {{ type = "float", min = 0, max = 100, uses = ["aggregate", "filter"] }}
region = {{ type = "category", values = ["north", "south"], uses = ["group", "filter"] }}
"""

Row = dict[str, Any]


def _write(path: Path, rows: list[tuple[float, str]]) -> None:
    """One Parquet file of (amount, region) rows; the partition values live in the folder names."""
    path.parent.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect()
    con.execute("CREATE TABLE t (amount DOUBLE, region VARCHAR)")
    if rows:
        con.executemany("INSERT INTO t VALUES (?, ?)", rows)
    con.execute(f"COPY t TO '{path}' (FORMAT parquet)")
    con.close()


def _hive(root: Path, seed: int = 1, parts: tuple[tuple[str, str], ...] = (
        ("2023", "01"), ("2023", "02"), ("2024", "01"), ("2024", "02"), ("2024", "03"))) -> list[Row]:
    rng = np.random.default_rng(seed)
    out: list[Row] = []
    for year, month in parts:
        rows = [(round(float(rng.uniform(-10, 120)), 3), str(rng.choice(["north", "south", "west"])))
                for _ in range(int(rng.integers(20, 60)))]
        _write(root / f"year={year}" / f"month={month}" / "part-0.parquet", rows)
        out += [{"year": year, "month": month, "amount": a, "region": r} for a, r in rows]
    return out


def _load(tmp_path: Path, source: str) -> tuple[Manifest, DatasetSpec]:
    p = tmp_path / "node.toml"
    p.write_text(MANIFEST.format(source=source))
    m = load_manifest(p)
    return m, m.datasets[0]


def _clip(x: float) -> float:
    return min(max(x, 0.0), 100.0)


# Each query with its brute force: {cell: [count, sum]} over the rows written.
QUERIES: list[tuple[str, Any]] = [
    ("SELECT month, COUNT(*), SUM(amount) FROM sales WHERE year = 2024 GROUP BY month",
     lambda r: (r["month"],) if r["year"] == "2024" else None),
    ("SELECT region, COUNT(*), SUM(amount) FROM sales WHERE month IN ('01', '02') AND year >= 2023 GROUP BY region",
     lambda r: (r["region"],) if r["month"] in ("01", "02") and r["region"] in ("north", "south") else None),
    ("SELECT COUNT(*), SUM(amount) FROM sales WHERE year < 2024", lambda r: () if r["year"] < "2024" else None),
]


def _expected(plan: Any, rows: list[Row], key: Any) -> np.ndarray:
    out = np.zeros((len(plan.cells), 2))
    index = {c: i for i, c in enumerate(plan.cells)}
    for r in rows:
        k = key(r)
        if k is None or k not in index:
            continue
        out[index[k]] += (1, _clip(r["amount"]))
    return out


def _check(got: np.ndarray, expected: np.ndarray) -> None:
    assert np.array_equal(got[:, 0], expected[:, 0])
    assert np.allclose(got[:, 1], expected[:, 1], atol=1e-3)


@pytest.mark.parametrize("materialise", [True, False])
@pytest.mark.parametrize("source", ["sales/", "sales", "sales/**/*.parquet", "sales/year=*/month=*/*.parquet"])
def test_hive_folder_and_globs_match_brute_force(tmp_path: Path, source: str, materialise: bool) -> None:
    rows = _hive(tmp_path / "sales")
    (tmp_path / "sales" / "_SUCCESS").write_text("")  # a writer's marker, not data
    m, ds = _load(tmp_path, source)
    # Small Parquet is loaded into a table of the kept engine (issue #13); above the limit, scanned.
    cache = SourceCache() if materialise else SourceCache(materialise_max_bytes=0)
    with cache.open(m, ds) as src:
        assert ("read_parquet" not in src.relation_sql().lower()) is materialise
    try:
        for sql, key in QUERIES:
            plan = plan_query(sql, ds)
            expected = _expected(plan, rows, key)
            assert expected[:, 0].sum() > 0
            _check(decode_totals(plan, run_local_query(plan, m, ds)), expected)  # a fresh engine
            for _ in range(2):  # the kept engine
                _check(decode_totals(plan, run_local_query(plan, m, ds, sources=cache)), expected)
    finally:
        cache.close()


def test_partition_columns_keep_their_folder_spelling(tmp_path: Path) -> None:
    _hive(tmp_path / "sales", parts=(("2024", "01"),))
    m, ds = _load(tmp_path, "sales/")
    with open_source(m, ds) as src:
        assert sorted(src.column_names()) == ["amount", "month", "region", "year"]
        # '01' stays '01' (a declared category value), not the number 1.
        assert src.execute(f"SELECT DISTINCT month, typeof(year) FROM {src.relation_sql()}") == [("01", "VARCHAR")]


def test_a_glob_takes_only_what_it_matches(tmp_path: Path) -> None:
    _write(tmp_path / "flat" / "a.parquet", [(1.0, "north")] * 3)
    _write(tmp_path / "flat" / "b.parquet", [(2.0, "south")] * 4)
    _write(tmp_path / "flat" / "older" / "c.parquet", [(5.0, "north")] * 50)  # '*' does not span folders
    _write(tmp_path / "flat" / ".hidden.parquet", [(5.0, "north")] * 50)  # nor match hidden names
    (tmp_path / "flat" / "notes.csv").write_text("amount,region\n1,north\n")
    text = MANIFEST.replace('year   = {{ type = "int", min = 2020, max = 2025, uses = ["aggregate", "filter"] }}\n'
                            'month  = {{ type = "category", values = ["01", "02", "03"], uses = ["group", "filter"] }}\n',
                            "")
    (tmp_path / "node.toml").write_text(text.format(source="flat/*.parquet"))
    m = load_manifest(tmp_path / "node.toml")
    ds = m.datasets[0]
    plan = plan_query("SELECT region, COUNT(*), SUM(amount) FROM sales GROUP BY region", ds)
    got = decode_totals(plan, run_local_query(plan, m, ds))
    assert {c[0]: list(got[i]) for i, c in enumerate(plan.cells)} == {"north": [3, 3.0], "south": [4, 8.0]}


def test_the_cache_follows_the_set_of_files(tmp_path: Path) -> None:
    rows = _hive(tmp_path / "sales", parts=(("2024", "01"), ("2024", "02")))
    m, ds = _load(tmp_path, "sales/")
    plan = plan_query("SELECT COUNT(*), SUM(amount) FROM sales", ds)
    cache = SourceCache()

    def count() -> int:
        return int(decode_totals(plan, run_local_query(plan, m, ds, sources=cache))[0, 0])

    try:
        assert count() == len(rows)
        with cache.open(m, ds) as old:
            # 1. A new partition: a new engine, sandboxed to the new set; the query in flight
            #    keeps reading the old set on the old engine until it is done.
            _write(tmp_path / "sales" / "year=2024" / "month=03" / "part-0.parquet", [(1.0, "north")] * 7)
            assert count() == len(rows) + 7
            assert old.execute(f"SELECT COUNT(*) FROM {old.relation_sql()}") == [(len(rows),)]
            (shared,) = cache._sources.values()
        with pytest.raises(SourceError, match="closed"):  # the superseded engine closed after its last query
            old.execute("SELECT 1")
        assert shared.execute("SELECT 1") == [(1,)]
        # 2. A file rewritten in place (same name, same set): seen.
        _write(tmp_path / "sales" / "year=2024" / "month=03" / "part-0.parquet", [(1.0, "north")] * 2)
        assert count() == len(rows) + 2
        # 3. A partition removed.
        (tmp_path / "sales" / "year=2024" / "month=03" / "part-0.parquet").unlink()
        assert count() == len(rows)
        assert len(cache._sources) == 1
        # 4. Every file gone.
        for f in (tmp_path / "sales").rglob("*.parquet"):
            f.unlink()
        with pytest.raises(SourceError, match="no .parquet files in the source folder"):
            count()
    finally:
        cache.close()


def test_the_engine_reads_the_listed_files_only(tmp_path: Path) -> None:
    _hive(tmp_path / "sales", parts=(("2024", "01"),))
    _write(tmp_path / "sales" / "_staging.parquet", [(99.0, "north")])  # skipped by the folder rule
    _write(tmp_path / "outside.parquet", [(99.0, "north")])
    m, ds = _load(tmp_path, "sales/")
    cache = SourceCache()
    try:
        with cache.open(m, ds) as src:
            assert src.execute(f"SELECT COUNT(*) FROM {src.relation_sql()}")[0][0] > 0
            for sql in (f"SELECT * FROM read_parquet('{tmp_path / 'sales' / '_staging.parquet'}')",
                        f"SELECT * FROM read_parquet('{tmp_path / 'outside.parquet'}')",
                        f"SELECT * FROM read_parquet('{tmp_path / 'sales'}/**/*.parquet')",
                        "SET allowed_paths = ['/']", "SET enable_external_access = true", "INSTALL httpfs"):
                with pytest.raises(SourceError):
                    src.execute(sql)
    finally:
        cache.close()


def test_a_link_out_of_the_folder_is_refused(tmp_path: Path) -> None:
    _hive(tmp_path / "sales", parts=(("2024", "01"),))
    _write(tmp_path / "secret" / "other.parquet", [(42.0, "north")])
    os.symlink(tmp_path / "secret" / "other.parquet", tmp_path / "sales" / "year=2024" / "month=01" / "x.parquet")
    m, ds = _load(tmp_path, "sales/")
    plan = plan_query("SELECT COUNT(*) FROM sales", ds)
    with pytest.raises(SourceError, match="resolves outside its folder"):
        run_local_query(plan, m, ds, sources=SourceCache())
    report = validate_source(m, ds)
    assert report["ok"] is False and any("resolves outside its folder" in p for p in report["problems"])


def test_a_link_inside_the_folder_is_read(tmp_path: Path) -> None:
    _hive(tmp_path / "sales", parts=(("2024", "01"),))
    (tmp_path / "sales" / "year=2024" / "month=02").mkdir()
    os.symlink(tmp_path / "sales" / "year=2024" / "month=01" / "part-0.parquet",
               tmp_path / "sales" / "year=2024" / "month=02" / "part-0.parquet")
    m, ds = _load(tmp_path, "sales/")
    plan = plan_query("SELECT month, COUNT(*) FROM sales GROUP BY month", ds)
    got = decode_totals(plan, run_local_query(plan, m, ds))
    assert got[0, 0] == got[1, 0] > 0 and got[2, 0] == 0


@pytest.mark.parametrize("layout, words", [
    (["year=2024/a.parquet", "b.parquet"], "not all in one partition layout"),
    (["year=2024/a.parquet", "month=01/b.parquet"], "not all in one partition layout"),
    (["year=2024/misc/a.parquet"], "not all in one partition layout"),
    (["year=2024/year=2025/a.parquet"], "not all in one partition layout"),
    ([], "no .parquet files in the source folder"),
])
def test_a_folder_that_is_not_one_table_is_refused(tmp_path: Path, layout: list[str], words: str) -> None:
    (tmp_path / "sales").mkdir()
    for name in layout:
        _write(tmp_path / "sales" / name, [(1.0, "north")])
    m, ds = _load(tmp_path, "sales/")
    with pytest.raises(SourceError, match=words) as e:
        open_source(m, ds)
    assert "2024" not in e.value.detail  # partition values are the holder's data
    report = validate_source(m, ds)
    assert report["ok"] is False and any(words in p for p in report["problems"])


def test_validate_counts_partition_values_like_columns(tmp_path: Path) -> None:
    rows = _hive(tmp_path / "sales", parts=(("2024", "01"), ("2024", "02")))
    m, ds = _load(tmp_path, "sales/")
    report = validate_source(m, ds)
    assert report["source_kind"] == "parquet" and report["rows"] == len(rows) and report["files"] == 2
    assert report["problems"] == []
    for col in ("year", "month"):
        assert report["columns"][col] == {"present": True, "nulls": 0, "type_violations": 0, "out_of_bounds": 0,
                                          "undeclared_values": 0}
    # _hive writes amounts in [-10, 120] and a region 'west': both counted against the declaration.
    assert report["columns"]["amount"]["out_of_bounds"] == sum(not 0 <= r["amount"] <= 100 for r in rows) > 0
    assert report["columns"]["region"]["undeclared_values"] == sum(r["region"] == "west" for r in rows) > 0
    # A year past the declared max and a month not declared: counted, never shown.
    _write(tmp_path / "sales" / "year=2031" / "month=01" / "part-0.parquet", [(1.0, "north")] * 3)
    _write(tmp_path / "sales" / "year=2024" / "month=13" / "part-0.parquet", [(1.0, "north")] * 5)
    report = validate_source(m, ds)
    assert report["ok"] is False and report["files"] == 4
    assert report["columns"]["year"]["out_of_bounds"] == 3
    assert report["columns"]["month"]["undeclared_values"] == 5
    assert "2031" not in str(report) and "13" not in str(report)


def test_a_file_name_duckdb_would_read_as_a_wildcard_is_refused(tmp_path: Path) -> None:
    # DuckDB expands each listed path as a glob: 'part?.parquet' would read 'part1.parquet' twice.
    _write(tmp_path / "flat" / "part1.parquet", [(1.0, "north")])
    _write(tmp_path / "flat" / "part?.parquet", [(1.0, "north")])
    m, ds = _load(tmp_path, "flat/")
    with pytest.raises(SourceError, match="reads as a wildcard"):
        open_source(m, ds)
