"""validate_source: exact violation counts on planted problems, and never a data value in the report."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import duckdb
import pytest

from xdp_compute.domain.manifest import Manifest, parse_manifest_text
from xdp_compute.node.validate import validate_source

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
age = {{ type = "int", min = 0, max = 120, uses = ["aggregate", "filter"] }}
income = {{ type = "float", min = -10, max = 1000, uses = ["aggregate"] }}
region = {{ type = "category", values = ["north", "south"], uses = ["group"] }}
smoker = {{ type = "bool", uses = ["group"] }}
note = {{ type = "text", uses = [] }}
{extra}
"""

HEADER = ["age", "income", "region", "smoker", "note"]
CLEAN = ["30", "12.5", "north", "true", "hello"]
# Planted problems; every string marked SECRET must never appear in a report.
PLANTED = [
    ["abc_SECRET_A", "1", "north", "true", "x"],   # age: type
    ["3.5", "1", "north", "true", "x"],            # age: type (not integral)
    ["-1", "1", "north", "true", "x"],             # age: out of bounds
    ["121", "1", "north", "true", "x"],            # age: out of bounds
    ["", "1", "north", "true", "x"],               # age: null
    ["1", "n/a_SECRET_B", "north", "true", "x"],   # income: type
    ["1", "nan", "north", "true", "x"],            # income: out of bounds (NaN)
    ["1", "1e9", "north", "true", "x"],            # income: out of bounds
    ["1", "1", "mars_SECRET_C", "true", "x"],      # region: undeclared
    ["1", "1", "North", "true", "x"],              # region: undeclared (case matters)
    ["1", "1", "", "true", "x"],                   # region: null
    ["1", "1", "south", "maybe_SECRET_D", "x"],    # smoker: type
    ["1", "1", "south", "", "SECRET_E_text"],      # smoker: null; text column: anything goes
]


def _manifest(tmp_path: Path, source: str, extra: str = "") -> Manifest:
    return parse_manifest_text(MANIFEST.format(source=source, extra=extra), base_dir=tmp_path, check_files=False)


def _write(path: Path, rows: list[list[str]], header: list[str] = HEADER) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)


def _assert_no_values(report: dict[str, object]) -> None:
    text = json.dumps(report)
    for marker in ("SECRET", "mars", "maybe", "n/a", "abc", "3.5", "1e9", "North"):
        assert marker not in text


def test_planted_violations_are_counted(tmp_path: Path) -> None:
    _write(tmp_path / "p.csv", [CLEAN] * 20 + PLANTED)
    m = _manifest(tmp_path, "p.csv")
    r = validate_source(m, m.datasets[0])
    _assert_no_values(r)
    assert r["ok"] is False
    assert r["rows"] == 20 + len(PLANTED)
    assert r["problems"] == []
    assert r["columns"]["age"] == {"present": True, "nulls": 1, "type_violations": 2, "out_of_bounds": 2,
                                   "undeclared_values": 0}
    assert r["columns"]["income"] == {"present": True, "nulls": 0, "type_violations": 1, "out_of_bounds": 2,
                                      "undeclared_values": 0}
    assert r["columns"]["region"] == {"present": True, "nulls": 1, "type_violations": 0, "out_of_bounds": 0,
                                      "undeclared_values": 2}
    assert r["columns"]["smoker"] == {"present": True, "nulls": 1, "type_violations": 1, "out_of_bounds": 0,
                                      "undeclared_values": 0}
    assert r["columns"]["note"]["type_violations"] == 0


def test_clean_file_is_ok(tmp_path: Path) -> None:
    _write(tmp_path / "p.csv", [CLEAN] * 5 + [["", "", "", "", ""]])  # NULLs alone are not violations
    m = _manifest(tmp_path, "p.csv")
    r = validate_source(m, m.datasets[0])
    assert r["ok"] is True and r["rows"] == 6 and r["problems"] == []
    assert r["columns"]["age"]["nulls"] == 1


def test_missing_column_is_a_problem_naming_the_column(tmp_path: Path) -> None:
    _write(tmp_path / "p.csv", [CLEAN] * 3)
    m = _manifest(tmp_path, "p.csv", extra='zip = { type = "category", values = ["1"], uses = [] }')
    r = validate_source(m, m.datasets[0])
    assert r["ok"] is False
    assert r["problems"] == ["column 'zip' missing"]
    assert r["columns"]["zip"]["present"] is False and r["columns"]["zip"]["nulls"] is None
    assert r["columns"]["age"]["present"] is True


def test_missing_file_is_reported_not_raised(tmp_path: Path) -> None:
    m = _manifest(tmp_path, "absent.csv")
    r = validate_source(m, m.datasets[0])
    assert r["ok"] is False and r["problems"] == ["source file not found"] and r["rows"] is None


def test_malformed_lines_are_counted_without_their_text(tmp_path: Path) -> None:
    _write(tmp_path / "p.csv", [CLEAN] * 10)
    with (tmp_path / "p.csv").open("a") as f:
        f.write("5,SECRET_F_short_line\n")
        f.write("5,1,north,true,x,SECRET_G_extra_field\n")
    m = _manifest(tmp_path, "p.csv")
    r = validate_source(m, m.datasets[0])
    _assert_no_values(r)
    assert r["malformed_lines"] == 2
    assert r["rows"] == 10
    assert r["ok"] is False and any("2 CSV line(s)" in p for p in r["problems"])


def test_unreadable_file_is_reported_not_raised(tmp_path: Path) -> None:
    (tmp_path / "p.csv").write_bytes(b"\x00\xff\xfe SECRET_H \x00\x01" * 50)
    m = _manifest(tmp_path, "p.csv")
    r = validate_source(m, m.datasets[0])
    _assert_no_values(r)
    assert r["ok"] is False and r["problems"]


def test_parquet_types_are_checked(tmp_path: Path) -> None:
    con = duckdb.connect()
    con.execute(f"""COPY (SELECT * FROM (VALUES
        (30.0, 12.5, 'north', true, 'a'),
        (2.5, 12.5, 'south', false, 'b'),
        (500.0, -20.0, 'mars', NULL, 'c')) v(age, income, region, smoker, note))
        TO '{tmp_path / "p.parquet"}' (FORMAT parquet)""")
    con.close()
    m = _manifest(tmp_path, "p.parquet")
    r = validate_source(m, m.datasets[0])
    _assert_no_values(r)
    assert r["source_kind"] == "parquet" and r["rows"] == 3
    assert r["columns"]["age"]["type_violations"] == 1  # 2.5 in an int column
    assert r["columns"]["age"]["out_of_bounds"] == 1
    assert r["columns"]["income"]["out_of_bounds"] == 1
    assert r["columns"]["region"]["undeclared_values"] == 1
    assert r["columns"]["smoker"]["nulls"] == 1


@pytest.mark.parametrize("header", [["AGE", "Income", "REGION", "smoker", "note"]])
def test_header_case_does_not_matter(tmp_path: Path, header: list[str]) -> None:
    _write(tmp_path / "p.csv", [CLEAN] * 2, header=header)
    m = _manifest(tmp_path, "p.csv")
    assert validate_source(m, m.datasets[0])["ok"] is True


def test_more_rows_than_the_declared_max_rows_is_a_problem(tmp_path: Path) -> None:
    import dataclasses

    _write(tmp_path / "p.csv", [CLEAN] * 6)
    m = _manifest(tmp_path, "p.csv")
    ok = validate_source(m, dataclasses.replace(m.datasets[0], max_rows=6))
    assert ok["ok"] is True
    over = validate_source(m, dataclasses.replace(m.datasets[0], max_rows=5))
    assert over["ok"] is False and over["problems"] == ["6 rows exceed the declared max_rows 5"]
