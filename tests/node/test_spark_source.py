"""A Spark source (issue #18): the same pushdown over the same data through Spark and through DuckDB
gives the same node vector; only the aggregate rows cross from the engine into the node's process;
the session stays on loopback, refuses SQL on files and never passes on an engine message; bad
``[datasets.spark]`` tables and Trino sources are refused with clear messages.

One Spark session for the whole module (it is the process's, started by the first test that opens
a Spark dataset), as a node keeps one for its worker's life.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import duckdb
import numpy as np

# Not importorskip: CI installs the spark extra (make install), and these tests must not skip there.
import pyspark  # noqa: F401
import pytest
from test_sources_local import MANIFEST, QUERIES, _make_rows, _write_csv

from xdp_compute.domain.manifest import load_manifest, parse_declaration, parse_manifest_text
from xdp_compute.domain.spark import SparkOptions
from xdp_compute.errors import ManifestError
from xdp_compute.node.sources import SourceError, open_source, run_local_query
from xdp_compute.node.validate import validate_source
from xdp_compute.query import QueryPlan, decode_totals, plan_query
from xdp_compute.query.rows import rows_sql

slow = pytest.mark.slow  # each test that opens a Spark dataset (the session takes seconds to start)

SPARK_BLOCK = '\n[datasets.spark]\npath = "{path}"\n'

PQ_MANIFEST = """
[node]
name = "n1"
region = "CN-FJ"

[[datasets]]
name = "sales"
source = "{source}"
classification = "internal"
epsilon_budget = 10
{spark}
[datasets.columns]
year   = {{ type = "int", min = 2020, max = 2025, uses = ["filter"] }}
month  = {{ type = "category", values = ["01", "02", "03"], uses = ["group", "filter"] }}
amount = {{ type = "float", min = 0, max = 100, uses = ["aggregate", "filter"] }}
paid   = {{ type = "bool", uses = ["group", "aggregate", "filter"] }}
"""
PQ_QUERIES = [
    "SELECT month, COUNT(*), SUM(amount), AVG(paid) FROM sales GROUP BY month",
    "SELECT month, paid, COUNT(*), VARIANCE(amount) FROM sales WHERE year = 2024 GROUP BY month, paid",
    "SELECT COUNT(*), SUM(amount) FROM sales WHERE amount > 50 AND month IN ('01', '03')",
]


def spark_manifest(folder: Path, csv_name: str = "people.csv") -> Path:
    """tests/node/test_sources_local.py's manifest, read by Spark instead of DuckDB."""
    text = MANIFEST.format(source="spark://local[2]").replace(
        "epsilon_budget = 10\n", "epsilon_budget = 10\n" + SPARK_BLOCK.format(path=csv_name), 1)
    p = folder / "spark.toml"
    p.write_text(text)
    return p


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, list[list[str]]]]:
    d = tmp_path_factory.mktemp("sparksrc")
    rows = _make_rows(3000, seed=20240601)  # bad numbers, NaN, undeclared values, empty cells
    _write_csv(d / "people.csv", rows)
    (d / "duck.toml").write_text(MANIFEST.format(source="people.csv"))
    spark_manifest(d)
    # A hive-partitioned Parquet folder with typed columns (int year, double amount, bool paid).
    rng = np.random.default_rng(7)
    n = 4000
    con = duckdb.connect()
    con.execute("CREATE TABLE t (year VARCHAR, month VARCHAR, amount DOUBLE, paid BOOLEAN)")
    con.executemany("INSERT INTO t VALUES (?, ?, ?, ?)", [
        (str(rng.choice(["2023", "2024"])), str(rng.choice(["01", "02", "03", "04"])),
         None if rng.random() < 0.03 else float(rng.uniform(-20, 130)), bool(rng.random() < 0.3))
        for _ in range(n)])
    con.execute(f"COPY t TO '{d / 'sales'}' (FORMAT parquet, PARTITION_BY (year, month))")
    con.close()
    (d / "pq-duck.toml").write_text(PQ_MANIFEST.format(source="sales/", spark=""))
    (d / "pq-spark.toml").write_text(PQ_MANIFEST.format(source="spark://local[2]",
                                                        spark=SPARK_BLOCK.format(path="sales/")))
    yield d, rows


# -- the same answers as DuckDB ------------------------------------------------------------------


@slow
@pytest.mark.parametrize("sql", QUERIES)
def test_spark_csv_gives_the_duckdb_vector(sql: str, data: tuple[Path, list[list[str]]]) -> None:
    d, _ = data
    duck, spark = load_manifest(d / "duck.toml"), load_manifest(d / "spark.toml")
    assert spark.datasets[0].source_kind == "spark" and spark.datasets[0].spark is not None
    plan = QueryPlan.from_dict(plan_query(sql, duck.datasets[0]).to_dict())
    want = run_local_query(plan, duck, duck.datasets[0])
    got = run_local_query(plan, spark, spark.datasets[0])
    # Same clipping, casts, NaN and NULL handling, declared-values filter: the same fixed-point
    # vector, up to the float summation order of the two engines.
    diff = np.abs(decode_totals(plan, got) - decode_totals(plan, want))
    assert np.all(diff <= 1e-6), (sql, diff.max())


@slow
@pytest.mark.parametrize("sql", PQ_QUERIES)
def test_spark_parquet_folder_gives_the_duckdb_vector(sql: str, data: tuple[Path, list[list[str]]]) -> None:
    d, _ = data
    duck, spark = load_manifest(d / "pq-duck.toml"), load_manifest(d / "pq-spark.toml")
    plan = plan_query(sql, duck.datasets[0])
    want = decode_totals(plan, run_local_query(plan, duck, duck.datasets[0]))
    got = decode_totals(plan, run_local_query(plan, spark, spark.datasets[0]))
    assert np.abs(want).sum() > 0  # the partition columns were read (a broken filter gives zeros)
    assert np.all(np.abs(got - want) <= 1e-6), (sql, np.abs(got - want).max())


# -- what crosses from the engine ---------------------------------------------------------------


class CollectSpy:
    """Counts every row Spark hands to this process; any other way out of a DataFrame fails."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, session: Any) -> None:
        self.rows: list[int] = []
        cls = type(session.sql("SELECT 1"))
        real = cls.collect

        def collect(df: Any) -> list[Any]:
            out = real(df)
            self.rows.append(len(out))
            return out

        def refuse(*_: Any, **__: Any) -> None:
            raise AssertionError("rows left Spark by another way than collect")

        monkeypatch.setattr(cls, "collect", collect)
        for name in ("toPandas", "toLocalIterator", "take", "head", "first", "tail", "toArrow", "toJSON"):
            if hasattr(cls, name):
                monkeypatch.setattr(cls, name, refuse)


def _session() -> Any:
    from xdp_compute.node import spark_source

    assert spark_source._session is not None
    return spark_source._session


@slow
def test_only_the_aggregate_rows_reach_the_node_process(data: tuple[Path, list[list[str]]],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    d, rows = data
    spark = load_manifest(d / "spark.toml")
    ds = spark.datasets[0]
    with open_source(spark, ds) as src:
        spy = CollectSpy(monkeypatch, _session())
        plan = plan_query("SELECT region, smoker, COUNT(*), SUM(income) FROM people GROUP BY region, smoker", ds)
        run_local_query(plan, spark, ds, source=src)
        # One row per present group cell: declared region x bool smoker the data holds.
        smoker = {"true": "true", "1": "true", "false": "false", "0": "false"}
        present = {(r[2], smoker[r[3]]) for r in rows if r[2] in ("north", "south", "east", "west") and r[3] in smoker}
        assert spy.rows == [len(present)] and len(present) <= len(plan.cells) == 8
        plan = plan_query("SELECT COUNT(*), SUM(age) FROM people", ds)
        run_local_query(plan, spark, ds, source=src)
        assert spy.rows == [len(present), 1]  # one cell: one row, never the data's 3000
        assert src.collected_rows == len(present) + 1  # type: ignore[attr-defined]
        assert len(rows) == 3000


@slow
def test_validation_counts_cross_as_one_row_and_match_duckdb(data: tuple[Path, list[list[str]]],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    d, _ = data
    duck, spark = load_manifest(d / "duck.toml"), load_manifest(d / "spark.toml")
    want = validate_source(duck, duck.datasets[0])
    with open_source(spark, spark.datasets[0]):
        spy = CollectSpy(monkeypatch, _session())
    got = validate_source(spark, spark.datasets[0])
    assert spy.rows == [1]
    assert got["source_kind"] == "spark" and got["rows"] == want["rows"] == 3000
    assert got["columns"] == want["columns"]
    assert got["ok"] is False and any(c["type_violations"] for c in got["columns"].values())


@slow
def test_training_rows_read_through_spark_equal_duckdb(data: tuple[Path, list[list[str]]]) -> None:
    # DP-SGD runs in the node's worker on its rows (as for every source): the same rows either way.
    d, _ = data
    duck, spark = load_manifest(d / "duck.toml"), load_manifest(d / "spark.toml")
    cols = ["age", "income", "smoker"]
    out = []
    for m in (duck, spark):
        with open_source(m, m.datasets[0]) as src:
            cmap = {c.lower(): c for c in src.column_names()}
            sql = rows_sql(m.datasets[0], cols, src.relation_sql(), src.dialect,
                           column_map={c: cmap[c.lower()] for c in cols})
            out.append(sorted(src.execute(sql), key=repr))
    assert out[0] == out[1] and len(out[0]) > 1000


# -- the session: one per process, loopback, no SQL on files, no engine messages ---------------


@slow
def test_one_session_on_loopback_without_sql_on_files(data: tuple[Path, list[list[str]]]) -> None:
    d, _ = data
    spark = load_manifest(d / "spark.toml")
    with open_source(spark, spark.datasets[0]):
        first = _session()
    with open_source(spark, spark.datasets[0]):
        assert _session() is first  # reused, not restarted
    conf = first.sparkContext.getConf()
    assert conf.get("spark.driver.host") == "127.0.0.1" and conf.get("spark.driver.bindAddress") == "127.0.0.1"
    assert conf.get("spark.ui.enabled") == "false" and conf.get("spark.master") == "local[2]"
    assert first.conf.get("spark.sql.runSQLOnFiles") == "false"
    with pytest.raises(Exception, match="TABLE_OR_VIEW_NOT_FOUND"):
        first.sql(f"SELECT * FROM csv.`{d / 'people.csv'}`").collect()
    # Another master or conf in the same process is refused, not silently ignored.
    other = replace(spark.datasets[0], spark=SparkOptions(master="local[1]", path="people.csv", format="csv"))
    with pytest.raises(SourceError, match="one Spark session"):
        open_source(spark, other)


@slow
def test_engine_messages_never_reach_the_caller_or_the_log(data: tuple[Path, list[list[str]]],
                                                            capfd: pytest.CaptureFixture[str]) -> None:
    d, _ = data
    spark = load_manifest(d / "spark.toml")
    with open_source(spark, spark.datasets[0]) as src:
        capfd.readouterr()
        # A strict cast of a text column: Spark's error quotes the first value that fails.
        with pytest.raises(SourceError) as e:
            src.execute(f"SELECT SUM(CAST(`region` AS INT)) FROM {src.relation_sql()}")
    out = capfd.readouterr()
    assert "could not be read (" in str(e.value)
    for value in ("north", "south", "east", "mars"):
        assert value not in str(e.value) and value not in out.out and value not in out.err


@slow
def test_missing_file_and_links_out_of_the_folder_are_source_errors(tmp_path: Path,
                                                                    data: tuple[Path, list[list[str]]]) -> None:
    d, _ = data
    m = load_manifest(spark_manifest(d))
    (d / "spark-gone.csv").write_text("Age\n1\n")
    gone = load_manifest(spark_manifest(d, "spark-gone.csv"))
    (d / "spark-gone.csv").unlink()
    with pytest.raises(SourceError, match="source file not found"):
        open_source(gone, gone.datasets[0])
    folder = tmp_path / "pq"
    folder.mkdir()
    (folder / "escape.parquet").symlink_to(next((d / "sales").rglob("*.parquet")))  # a file outside pq/
    (tmp_path / "spark.toml").write_text(PQ_MANIFEST.format(source="spark://local[2]",
                                                            spark=SPARK_BLOCK.format(path="pq/")))
    linked = load_manifest(tmp_path / "spark.toml")
    with pytest.raises(SourceError, match="resolves outside its folder"):
        open_source(linked, linked.datasets[0])
    assert m.datasets[0].spark is not None


# -- manifests and registration -----------------------------------------------------------------


def _manifest(source: str, spark: str = "", extra: str = "") -> str:
    return PQ_MANIFEST.format(source=source, spark=spark).replace("epsilon_budget = 10\n",
                                                                 f"epsilon_budget = 10\n{extra}", 1)


BAD = [
    (_manifest("spark://local"), "datasets[sales].spark: a spark:// source needs a [datasets.spark] table"),
    (_manifest("sales.csv", SPARK_BLOCK.format(path="sales.csv")),
     "datasets[sales].spark: only a spark:// source takes a [datasets.spark] table"),
    (_manifest("spark://reader:hunter2@10.0.0.5:7077", SPARK_BLOCK.format(path="sales/")),
     "unsupported Spark master: only local mode runs here"),
    (_manifest("spark://local", SPARK_BLOCK.format(path="sales/"), 'table = "sales"\n'),
     "datasets[sales].table: a Spark source takes no table: catalog tables are not supported"),
    (_manifest("spark://local", '\n[datasets.spark]\ntable = "warehouse.sales"\n'),
     "datasets[sales].spark.table: catalog tables are not supported"),
    (_manifest("spark://local", SPARK_BLOCK.format(path="sales/") + 'master = "yarn"\n'),
     "datasets[sales].spark.master: unknown key (allowed: conf, format, path)"),
    (_manifest("spark://local", '\n[datasets.spark]\nformat = "parquet"\n'), "datasets[sales].spark.path: required"),
    (_manifest("spark://local", SPARK_BLOCK.format(path="sales/*.parquet")), "spark.path: no wildcards"),
    (_manifest("spark://local", SPARK_BLOCK.format(path="sales/") + 'format = "csv"\n'),
     "spark.format: a CSV source is one .csv file"),
    (_manifest("spark://local", SPARK_BLOCK.format(path="sales.json")), "spark.path: unsupported file type '.json'"),
    (_manifest("spark://local", SPARK_BLOCK.format(path="sales.csv") + 'format = "parquet"\n'),
     "spark.format: 'parquet' does not match the file's suffix '.csv'"),
    (_manifest("spark://local", SPARK_BLOCK.format(path="sales/") + 'conf = { "spark.jars.packages" = "x:y:1" }\n'),
     "spark.conf: setting 'spark.jars.packages' is not allowed"),
    (_manifest("spark://local", SPARK_BLOCK.format(path="sales/") + 'conf = { "spark.driver.memory" = "2g; x" }\n'),
     "spark.conf: setting 'spark.driver.memory' must be a number or a short word"),
    (_manifest("trino://analyst@warehouse:8080/hive/sales", "", 'table = "sales"\n'),
     "unsupported source 'trino://' (Trino is not supported: no Trino server can be run or tested here"),
]


@pytest.mark.parametrize(("text", "message"), BAD, ids=[m[:40] for _, m in BAD])
def test_malformed_spark_manifests_are_refused_in_one_line(text: str, message: str) -> None:
    with pytest.raises(ManifestError) as e:
        parse_manifest_text(text, file="node.toml", check_files=False)
    assert message in str(e.value), str(e.value)
    assert "\n" not in str(e.value) and "hunter2" not in str(e.value)


def test_a_missing_spark_path_and_two_sessions_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match=r"spark\.path: folder not found"):
        parse_manifest_text(_manifest("spark://local", SPARK_BLOCK.format(path="nowhere/")), base_dir=tmp_path)
    first = _manifest("spark://local[2]", SPARK_BLOCK.format(path="a/"))
    second = first.split("[[datasets]]", 1)[1].replace('name = "sales"', 'name = "sales2"').replace(
        "local[2]", "local[1]")
    with pytest.raises(ManifestError, match=r"datasets\[sales2\]\.spark: every Spark dataset of a node shares one "
                                            r"Spark session"):
        parse_manifest_text(first + "\n[[datasets]]" + second, check_files=False)
    ok = parse_manifest_text(first + "\n[[datasets]]" + second.replace("local[1]", "local[2]"), check_files=False)
    assert [d.spark.master for d in ok.datasets] == ["local[2]", "local[2]"]  # type: ignore[union-attr]
    assert ok.datasets[0].spark.path == "a/" and ok.datasets[0].spark.format == "parquet"  # type: ignore[union-attr]


def test_the_gateway_accepts_spark_and_refuses_trino_at_register() -> None:
    spec = parse_manifest_text(_manifest("spark://local", SPARK_BLOCK.format(path="sales/")),
                               check_files=False).datasets[0]
    decl = spec.to_dict()
    # Only the kind leaves the node: never the path or the session settings.
    assert decl["source_kind"] == "spark" and "spark" not in decl and "sales/" not in str(decl)
    assert parse_declaration(decl).name == "sales"
    with pytest.raises(ManifestError, match=r"source_kind: unsupported source kind 'trino' \(Trino is not "
                                            r"supported: no Trino server can be run or tested here"):
        parse_declaration({**decl, "source_kind": "trino"})
