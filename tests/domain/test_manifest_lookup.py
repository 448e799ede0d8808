"""The hidden-lookup opt-in of a manifest: ``[datasets.lookup]`` (issue #17)."""

from __future__ import annotations

import pytest
from conftest import example_manifest

from xdp_compute.domain.manifest import DatasetSpec, LookupSpec, parse_declaration, parse_manifest_text
from xdp_compute.errors import ManifestError


def with_lookup(table: str, classification: str = "sensitive") -> str:
    text = example_manifest().replace("[datasets.columns]", f"[datasets.lookup]\n{table}\n\n[datasets.columns]")
    return text.replace('classification = "sensitive"', f'classification = "{classification}"')


def spec(table: str, **kw: str) -> DatasetSpec:
    return parse_manifest_text(with_lookup(table, **kw), check_files=False).datasets[0]


def test_opt_in_is_parsed_and_travels_in_the_declaration() -> None:
    ds = spec('key = "name"\ncolumns = ["AGE", "district"]\ncapacity = 500')
    assert ds.lookup == LookupSpec(key="name", columns=("age", "district"), capacity=500, label_bytes=128)
    assert ds.to_dict()["lookup"] == {"key": "name", "columns": ["age", "district"], "capacity": 500,
                                      "label_bytes": 128}
    assert parse_declaration(ds.to_dict()).lookup == ds.lookup == DatasetSpec.from_dict(ds.to_dict()).lookup


def test_without_opt_in_the_declaration_is_unchanged() -> None:
    ds = parse_manifest_text(example_manifest(), check_files=False).datasets[0]
    assert ds.lookup is None and "lookup" not in ds.to_dict()


@pytest.mark.parametrize(("table", "key", "words"), [
    ('columns = ["age"]\ncapacity = 5', "lookup.key", "required"),
    ('key = "income"\ncolumns = ["age"]\ncapacity = 5', "lookup.key", "text or int"),
    ('key = "nobody"\ncolumns = ["age"]\ncapacity = 5', "lookup.key", "required"),
    ('key = "name"\ncapacity = 5', "lookup.columns", "non-empty"),
    ('key = "name"\ncolumns = ["age", "salary"]\ncapacity = 5', "lookup.columns", "'salary'"),
    ('key = "name"\ncolumns = ["age", "Age"]\ncapacity = 5', "lookup.columns", "distinct"),
    ('key = "name"\ncolumns = ["age"]', "lookup.capacity", "required"),
    ('key = "name"\ncolumns = ["age"]\ncapacity = 0', "lookup.capacity", "integer"),
    ('key = "name"\ncolumns = ["age"]\ncapacity = 5\nlabel_bytes = 8', "lookup.label_bytes", "16"),
    ('key = "name"\ncolumns = ["age"]\ncapacity = 5\nrows = 1', "lookup.rows", "unknown key"),
])
def test_bad_opt_in_names_the_key(table: str, key: str, words: str) -> None:
    with pytest.raises(ManifestError) as e:
        spec(table)
    assert key in str(e.value) and words in str(e.value)


def test_core_datasets_cannot_opt_in() -> None:
    with pytest.raises(ManifestError, match="core dataset is never released"):
        spec('key = "name"\ncolumns = ["age"]\ncapacity = 5', classification="core")
