from __future__ import annotations

from pathlib import Path

import pytest
from conftest import example_manifest

from xdp_compute.domain.manifest import load_manifest, parse_manifest_text, schema_differences
from xdp_compute.errors import ManifestError


def write(tmp_path: Path, text: str, csv: bool = True) -> Path:
    if csv:
        (tmp_path / "patients.csv").write_text("age,income,district,name\n1,2,Huli,x\n")
    p = tmp_path / "node.toml"
    p.write_text(text)
    return p


def test_example_from_the_issue_parses(tmp_path: Path) -> None:
    m = load_manifest(write(tmp_path, example_manifest()))
    ds = m.datasets[0]
    assert m.node_name == "siming-hospital" and m.region == "CN-FJ"
    assert ds.column("district").values == ("Siming", "Huli", "Jimei")
    assert ds.column("income").max == 500000 and ds.column("name").uses == ()
    assert m.source_path(ds) == tmp_path.resolve() / "patients.csv"


@pytest.mark.parametrize("mutate, key, words", [
    (lambda t: t.replace('[node]', '[node'), None, "not valid TOML"),
    (lambda t: t.replace('type = "int"', 'type = "integer"'), "datasets[patients].columns.age.type", "unknown column type"),
    (lambda t: t.replace('classification = "sensitive"', 'classification = "secret"'), "classification", "must be one of"),
    (lambda t: t.replace('min = 0, max = 120', 'min = 130, max = 120'), "columns.age.min", "above max"),
    (lambda t: t.replace('epsilon_budget = 10.0', 'epsilon_budget = -1'), "epsilon_budget", "positive"),
    (lambda t: t.replace('uses = ["group", "filter"]', 'uses = ["group", "sell"]'), "district.uses", "unknown use"),
    (lambda t: t.replace('values = ["Siming", "Huli", "Jimei"], ', ''), "district.values", "non-empty"),
    (lambda t: t.replace('name     = { type = "text",     uses = [] }', 'name = { type = "text", uses = ["aggregate"] }'),
     "name.uses", "text column"),
    (lambda t: t.replace('region = "CN-FJ"', 'colour = "red"'), "node.colour", "unknown key"),
    (lambda t: t.replace('source = "patients.csv"', 'source = "patients.xlsx"'), "source", "unsupported file type"),
])
def test_bad_manifest_names_file_key_and_problem(tmp_path: Path, mutate, key, words) -> None:  # type: ignore[no-untyped-def]
    p = write(tmp_path, mutate(example_manifest()))
    with pytest.raises(ManifestError) as e:
        load_manifest(p)
    msg = str(e.value)
    assert str(p) in msg and words in msg
    if key:
        assert key in msg


def test_missing_source_file_is_refused(tmp_path: Path) -> None:
    p = write(tmp_path, example_manifest(), csv=False)
    with pytest.raises(ManifestError, match="file not found"):
        load_manifest(p)


def test_schema_differences_name_the_difference() -> None:
    a = parse_manifest_text(example_manifest(), check_files=False).datasets[0]
    b = parse_manifest_text(example_manifest().replace("max = 120", "max = 100"), check_files=False).datasets[0]
    diffs = schema_differences(a.schema(), b.schema())
    assert diffs and "age" in diffs[0] and "max" in diffs[0]
    assert schema_differences(a.schema(), a.schema()) == []
