"""Which sources a manifest may name (issue #14): the supported kinds, and every other one refused
at load with the list of supported ones; the kind (never the path or URL) in the declaration the
gateway re-checks at Register."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import example_manifest

from xdp_compute.domain.manifest import (
    SOURCE_KINDS,
    SUPPORTED_SOURCES,
    SourceRef,
    load_manifest,
    parse_declaration,
    parse_manifest_text,
    parse_source,
)
from xdp_compute.errors import ManifestError


def _manifest(tmp_path: Path, source: str, table: str | None = None) -> Path:
    text = example_manifest().replace('source = "patients.csv"',
                                      f'source = "{source}"' + (f'\ntable = "{table}"' if table else ""))
    p = tmp_path / "node.toml"
    p.write_text(text)
    return p


@pytest.mark.parametrize("source, why", [
    ("mysql://reader:hunter2@db.internal:3306/clinic", "MySQL and MariaDB are not supported"),
    ("mariadb://reader:hunter2@db.internal/clinic", "MySQL and MariaDB are not supported"),
    ("s3://hunter2-bucket/sales/part-0.parquet", "local files only"),
    ("https://files.internal/hunter2/visits.csv", "local files only"),
    ("http://files.internal/visits.csv", "local files only"),
    ("file:///srv/visits.csv", "without file://"),
    ("oracle+cx://reader:hunter2@db/clinic", "unknown scheme"),
])
def test_unsupported_source_is_refused_at_load_with_the_supported_list(tmp_path: Path, source: str,
                                                                       why: str) -> None:
    # A table is declared, as a SQL source would: mysql:// used to pass here and fail at query time.
    p = _manifest(tmp_path, source, table="visits")
    with pytest.raises(ManifestError) as e:
        load_manifest(p)
    msg = str(e.value)
    scheme = source.split("://")[0].lower()
    assert f"datasets[patients].source: unsupported source '{scheme}://'" in msg and why in msg
    assert SUPPORTED_SOURCES in msg and "\n" not in msg
    assert "needs table" not in msg  # s3:// used to get "a SQL source needs table"
    assert "hunter2" not in msg and "db.internal" not in msg  # user, password, host never echoed


def test_s3_without_a_table_is_not_told_it_needs_one(tmp_path: Path) -> None:
    with pytest.raises(ManifestError) as e:
        load_manifest(_manifest(tmp_path, "s3://bucket/sales/"))
    msg = str(e.value)
    assert "source: unsupported source 's3://'" in msg and "needs table" not in msg and ".table" not in msg


@pytest.mark.parametrize("source, ref", [
    ("visits.csv", SourceRef("csv", "file", root="visits.csv")),
    ("data/visits.PARQUET", SourceRef("parquet", "file", root="data/visits.PARQUET")),
    ("data/sales/", SourceRef("parquet", "folder", root="data/sales")),
    ("data/sales/*.parquet", SourceRef("parquet", "glob", root="data/sales", pattern="*.parquet")),
    ("data/sales/**/*.parquet", SourceRef("parquet", "glob", root="data/sales", pattern="**/*.parquet")),
    ("../shared/sales/year=*/*.parquet", SourceRef("parquet", "glob", root="../shared/sales",
                                                    pattern="year=*/*.parquet")),
    ("part-?.parquet", SourceRef("parquet", "glob", root=".", pattern="part-?.parquet")),
    ("postgresql://reader@db/clinic", SourceRef("postgresql", "database")),
    ("postgres://reader@db/clinic", SourceRef("postgresql", "database")),
])
def test_supported_sources_are_classified(source: str, ref: SourceRef) -> None:
    assert parse_source(source) == ref
    assert ref.kind in SOURCE_KINDS


@pytest.mark.parametrize("source, words", [
    ("data/*/../../etc/*.parquet", "'..' may not follow a wildcard"),
    ("data/sales/*.csv", "a glob must match .parquet files"),
    ("data/sales/*", "a glob must match .parquet files"),
    ("data/sales", "unsupported file type '(none)'"),  # neither a folder here nor spelled as one
    ("visits.xlsx", "unsupported file type '.xlsx'"),
])
def test_bad_paths_are_refused(source: str, words: str) -> None:
    with pytest.raises(ValueError, match="supported" if "'..'" not in words else "wildcard") as e:
        parse_source(source)
    assert words in str(e.value)


def test_folder_and_glob_sources_load(tmp_path: Path) -> None:
    (tmp_path / "sales" / "year=2024").mkdir(parents=True)
    for source, layout in (("sales/", "folder"), ("sales", "folder"), ("sales/*/*.parquet", "glob"),
                           (str(tmp_path / "sales") + "/", "folder")):
        ds = load_manifest(_manifest(tmp_path, source)).datasets[0]
        assert ds.source_ref.layout == layout and ds.source_kind == "parquet"
        assert ds.source.endswith("/") or layout == "glob"  # an existing folder is spelled as one


@pytest.mark.parametrize("source", ["missing/", "missing/*.parquet"])
def test_missing_folder_is_refused_at_load(tmp_path: Path, source: str) -> None:
    with pytest.raises(ManifestError, match="folder not found"):
        load_manifest(_manifest(tmp_path, source))


def test_the_declaration_carries_the_kind_never_the_path() -> None:
    for source, kind in (("patients.csv", "csv"), ("sales/", "parquet"), ("s/*.parquet", "parquet"),
                         ("postgresql://reader:pw@db/clinic", "postgresql")):
        text = example_manifest().replace('source = "patients.csv"', f'source = "{source}"'
                                          + ('\ntable = "visits"' if "://" in source else ""))
        ds = parse_manifest_text(text, check_files=False).datasets[0]
        d = ds.to_dict()
        assert d["source_kind"] == kind and "source" not in d and "table" not in d
        assert "pw" not in str(d) and "sales" not in str(d)
        # The gateway's re-check accepts it, and what it stores has no source at all.
        spec = parse_declaration(d, origin="node n1")
        assert spec.source == "" and "source_kind" not in spec.to_dict()
        assert spec.schema() == ds.schema()


@pytest.mark.parametrize("kind", ["mysql", "s3", "", None, 3, ["csv"]])
def test_gateway_refuses_a_declaration_of_an_unsupported_kind(kind: object) -> None:
    d = parse_manifest_text(example_manifest(), check_files=False).datasets[0].to_dict()
    if kind is None:
        d.pop("source_kind")
    else:
        d["source_kind"] = kind
    with pytest.raises(ManifestError) as e:
        parse_declaration(d, origin="node n1")
    msg = str(e.value)
    assert msg.startswith("node n1: datasets[patients].source_kind: unsupported source kind")
    assert "supported: csv, parquet, postgresql" in msg and SUPPORTED_SOURCES in msg
