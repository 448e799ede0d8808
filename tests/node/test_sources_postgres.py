"""PostgreSQL sources: pushdown results equal DuckDB's on the same rows; validation on typed/text tables.

Uses XDP_TEST_PG_URL when set. Otherwise, when PostgreSQL's ``initdb`` is installed, a throwaway
server is started in a temporary folder on a free loopback port (as the ``postgres`` user when the
tests run as root, since PostgreSQL refuses to run as root) and removed afterwards. Skipped, with
the reason, when neither is possible.
"""

from __future__ import annotations

import csv
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from xdp_compute.domain.manifest import Manifest, parse_manifest_text
from xdp_compute.node.sources import SourceError, open_source, run_local_query
from xdp_compute.node.validate import validate_source
from xdp_compute.query import decode_totals, plan_query

psycopg = pytest.importorskip("psycopg", reason="psycopg (v3) is not installed")

pytestmark = pytest.mark.postgres

COLUMNS = """
age = {{ type = "int", min = 0, max = 100, uses = ["aggregate", "filter"] }}
income = {{ type = "float", min = -50, max = 1000, uses = ["aggregate", "filter"] }}
region = {{ type = "category", values = ["north", "south", "east", "west"], uses = ["group", "filter"] }}
smoker = {{ type = "bool", uses = ["group", "filter", "aggregate"] }}
"""
MANIFEST = """
[node]
name = "n1"
region = "CN-FJ"

[[datasets]]
name = "people"
source = "{source}"
{table}
classification = "internal"
epsilon_budget = 10

[datasets.columns]
""" + COLUMNS


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rows(n: int, seed: int) -> list[tuple[Any, ...]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        age = None if rng.random() < 0.05 else int(rng.integers(-20, 151))
        income = None if rng.random() < 0.05 else round(float(rng.uniform(-200, 1500)), 3)
        region = [None, "north", "south", "east", "mars"][int(rng.integers(0, 5))]
        smoker = [None, True, False][int(rng.integers(0, 3))]
        out.append((age, income, region, smoker))
    return out


@pytest.fixture(scope="module")
def loaded(pg_url: str) -> Iterator[tuple[str, list[tuple[Any, ...]]]]:
    rows = _rows(2000, seed=7)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS xdp_people, xdp_people_txt, xdp_people_bad")
        conn.execute("CREATE TABLE xdp_people (age integer, income double precision, region text, "
                     "smoker boolean, note text)")
        with conn.cursor() as cur, cur.copy("COPY xdp_people (age, income, region, smoker) FROM STDIN") as cp:
            for r in rows:
                cp.write_row(r)
        conn.execute("CREATE TABLE xdp_people_txt (age text, income text, region text, smoker text)")
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO xdp_people_txt VALUES (%s, %s, %s, %s)", [
                ("30", "12.5", "north", "true"),
                ("SECRET_1", "1", "north", "t"),       # age: type
                ("500", "x_SECRET_2", "mars", "yes"),  # age: out of bounds; income: type; region: undeclared
                (" 7 ", "1e9", "south", "maybe_S3"),   # income: out of bounds; smoker: type
                (None, "NaN", None, None),             # nulls; NaN out of bounds
                ("1", "-inf", "south", "F"),           # income: out of bounds
            ])
        conn.execute("CREATE TABLE xdp_people_bad (age date, income double precision, region text, "
                     "smoker integer)")
    yield pg_url, rows
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS xdp_people, xdp_people_txt, xdp_people_bad")


def _pg_manifest(url: str, table: str) -> Manifest:
    return parse_manifest_text(MANIFEST.format(source=url, table=f'table = "{table}"'), check_files=False)


def _csv_manifest(tmp_path: Path, rows: list[tuple[Any, ...]]) -> Manifest:
    with (tmp_path / "p.csv").open("w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["age", "income", "region", "smoker"])
        for r in rows:
            w.writerow(["" if v is None else (str(v).lower() if isinstance(v, bool) else v) for v in r])
    return parse_manifest_text(MANIFEST.format(source="p.csv", table=""), base_dir=tmp_path, check_files=False)


QUERIES = [
    "SELECT COUNT(*) FROM people",
    ("SELECT region, smoker, COUNT(*), SUM(age), AVG(income), VARIANCE(income), AVG(smoker) FROM people "
     "GROUP BY region, smoker"),
    ("SELECT region, SUM(income) FROM people WHERE (age BETWEEN 18 AND 65 OR age IS NULL) AND NOT smoker "
     "AND region IN ('north', 'south') GROUP BY region"),
]


@pytest.mark.parametrize("sql", QUERIES)
def test_postgres_pushdown_equals_duckdb(sql: str, loaded: tuple[str, list[tuple[Any, ...]]],
                                         tmp_path: Path) -> None:
    url, rows = loaded
    pg_m = _pg_manifest(url, "XDP_People")  # resolved to the lower-case table
    csv_m = _csv_manifest(tmp_path, rows)
    plan = plan_query(sql, pg_m.datasets[0])
    assert plan_query(sql, csv_m.datasets[0]) == plan
    with open_source(pg_m, pg_m.datasets[0]) as src:
        assert src.dialect == "postgres" and src.relation_sql() == '"xdp_people"'
    pg_vec = run_local_query(plan, pg_m, pg_m.datasets[0])
    duck_vec = run_local_query(plan, csv_m, csv_m.datasets[0])
    pg_tot, duck_tot = decode_totals(plan, pg_vec), decode_totals(plan, duck_vec)
    for j, m in enumerate(plan.measurements):
        if m.kind == "count":
            assert np.array_equal(pg_tot[:, j], duck_tot[:, j]), m.key
        else:
            assert np.allclose(pg_tot[:, j], duck_tot[:, j], rtol=1e-9, atol=1.0 / m.scale), m.key
    assert pg_tot[:, 0].sum() > 0


def test_postgres_validation_typed_table(loaded: tuple[str, list[tuple[Any, ...]]]) -> None:
    url, rows = loaded
    m = _pg_manifest(url, "xdp_people")
    r = validate_source(m, m.datasets[0])
    assert r["source_kind"] == "postgresql" and r["rows"] == len(rows)
    assert r["columns"]["age"]["nulls"] == sum(x[0] is None for x in rows)
    assert r["columns"]["age"]["out_of_bounds"] == sum(x[0] is not None and not 0 <= x[0] <= 100 for x in rows)
    assert r["columns"]["income"]["out_of_bounds"] == sum(x[1] is not None and not -50 <= x[1] <= 1000
                                                          for x in rows)
    assert r["columns"]["region"]["undeclared_values"] == sum(x[2] == "mars" for x in rows)
    assert r["columns"]["smoker"]["type_violations"] == 0
    assert r["ok"] is False


def test_postgres_validation_text_table_counts_without_values(loaded: tuple[str, list[tuple[Any, ...]]]) -> None:
    url, _ = loaded
    m = _pg_manifest(url, "xdp_people_txt")
    r = validate_source(m, m.datasets[0])
    assert "SECRET" not in str(r) and "mars" not in str(r) and "maybe" not in str(r)
    assert r["rows"] == 6 and r["problems"] == []
    assert r["columns"]["age"]["type_violations"] == 1
    assert r["columns"]["age"]["out_of_bounds"] == 1
    assert r["columns"]["age"]["nulls"] == 1
    assert r["columns"]["income"]["type_violations"] == 1
    assert r["columns"]["income"]["out_of_bounds"] == 3  # 1e9, NaN and -inf
    assert r["columns"]["region"]["undeclared_values"] == 1
    assert r["columns"]["smoker"]["type_violations"] == 1


def test_postgres_validation_incompatible_types(loaded: tuple[str, list[tuple[Any, ...]]]) -> None:
    url, _ = loaded
    m = _pg_manifest(url, "xdp_people_bad")
    r = validate_source(m, m.datasets[0])
    assert r["ok"] is False
    assert "column 'age' has database type date, which cannot hold int values" in r["problems"]
    assert "column 'smoker' has database type integer, which cannot hold bool values" in r["problems"]


def test_postgres_missing_table_and_unreachable_server(loaded: tuple[str, list[tuple[Any, ...]]]) -> None:
    url, _ = loaded
    m = _pg_manifest(url, "no_such_table")
    r = validate_source(m, m.datasets[0])
    assert r["ok"] is False and r["problems"] == ["table not found"]
    dead = _pg_manifest(f"postgresql://postgres:hunter2@127.0.0.1:{_free_port()}/postgres", "xdp_people")
    r = validate_source(dead, dead.datasets[0])
    assert r["problems"] == ["database unreachable"]
    with pytest.raises(SourceError) as info:
        run_local_query(plan_query("SELECT COUNT(*) FROM people", dead.datasets[0]), dead, dead.datasets[0])
    assert "hunter2" not in info.value.detail


def test_a_role_that_can_write_is_warned_about_and_a_read_only_one_is_not(
        loaded: tuple[str, list[tuple[Any, ...]]]) -> None:
    # Issue #12 item 7: a node connects with whatever role its URL holds. The session is read
    # only either way; validation now says when the role itself could write.
    url, _ = loaded
    m = _pg_manifest(url, "xdp_people")
    warned = validate_source(m, m.datasets[0])["warnings"]
    assert warned and "read-only role" in warned[0]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP ROLE IF EXISTS xdp_reader")
        conn.execute("CREATE ROLE xdp_reader LOGIN PASSWORD 'reader'")
        conn.execute("GRANT SELECT ON xdp_people TO xdp_reader")
    try:
        scheme, rest = url.split("://", 1)  # a manifest source is a URL
        ro = _pg_manifest(f"{scheme}://xdp_reader:reader@{rest.split('@', 1)[-1]}", "xdp_people")
        assert validate_source(ro, ro.datasets[0])["warnings"] == []
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("REVOKE ALL ON xdp_people FROM xdp_reader")
            conn.execute("DROP ROLE IF EXISTS xdp_reader")
