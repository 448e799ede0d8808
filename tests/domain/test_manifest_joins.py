"""Join keys in the manifest (issue #16): use "join" with a required join_domain, nothing else."""

from __future__ import annotations

import pytest

from xdp_compute.domain.manifest import (
    JOIN_DOMAIN,
    DatasetSpec,
    parse_declaration,
    parse_manifest_text,
    schema_differences,
)
from xdp_compute.errors import ManifestError

BASE = """
[node]
name = "h1"
region = "CN-FJ"

[[datasets]]
name = "patients"
source = "patients.csv"
classification = "sensitive"
epsilon_budget = 5

[datasets.columns]
age = {{ type = "int", min = 0, max = 120, uses = ["aggregate", "filter"] }}
{key}
"""


def _parse(key_line: str) -> DatasetSpec:
    return parse_manifest_text(BASE.format(key=key_line), file="h1.toml", check_files=False).datasets[0]


def _refused(key_line: str) -> str:
    with pytest.raises(ManifestError) as e:
        _parse(key_line)
    return str(e.value)


def test_a_text_join_key_with_its_domain() -> None:
    ds = _parse('citizen = { type = "text", uses = ["join"], join_domain = "citizen-id" }')
    col = ds.column("citizen")
    assert col is not None and col.uses == ("join",) and col.join_domain == "citizen-id"
    assert ds.column("age").join_domain is None  # type: ignore[union-attr]


def test_an_int_join_key_keeps_its_bounds() -> None:
    col = _parse('member = { type = "int", min = 1, max = 99999999, uses = ["join"], join_domain = "member-no" }'
                 ).column("member")
    assert col is not None and (col.min, col.max, col.join_domain) == (1, 99999999, "member-no")


@pytest.mark.parametrize("line, key, words", [
    ('citizen = { type = "text", uses = ["join"] }', "columns.citizen.join_domain", "required for a join column"),
    ('citizen = { type = "text", uses = ["join"], join_domain = "Citizen ID" }', "citizen.join_domain",
     "lower-case identifier"),
    ('citizen = { type = "text", uses = ["join"], join_domain = 7 }', "citizen.join_domain", "lower-case identifier"),
    ('citizen = { type = "text", uses = ["join"], join_domain = "' + "x" * 41 + '" }', "citizen.join_domain",
     "short"),
    ('citizen = { type = "text", uses = [], join_domain = "citizen-id" }', "citizen.join_domain",
     'only a column with use "join"'),
    ('member = { type = "int", min = 0, max = 9, uses = ["join", "aggregate"], join_domain = "m" }', "member.uses",
     "can have no other use: its values leave the node only blinded"),
    ('member = { type = "int", min = 0, max = 9, uses = ["join", "filter"], join_domain = "m" }', "member.uses",
     "cannot also be aggregated, filtered or grouped"),
    ('score = { type = "float", min = 0, max = 1, uses = ["join"], join_domain = "m" }', "score.type",
     "text or int"),
    ('kind = { type = "category", values = ["a", "b"], uses = ["join"], join_domain = "m" }', "kind.type",
     "text or int"),
    ('citizen = { type = "text", min = 0, uses = ["join"], join_domain = "citizen-id" }', "columns.citizen",
     "a text column takes only type and uses"),
    ('member = { type = "int", uses = ["join"], join_domain = "m" }', "columns.member", "needs both min and max"),
    ('citizen = { type = "text", uses = ["group"] }', "citizen.uses", '["join"] with a join_domain'),
])
def test_bad_join_columns_name_file_key_and_problem(line: str, key: str, words: str) -> None:
    msg = _refused(line)
    assert msg.startswith("h1.toml: ") and key in msg and words in msg


def test_join_domain_travels_in_the_declaration_and_the_catalog_dict() -> None:
    ds = _parse('citizen = { type = "text", uses = ["join"], join_domain = "citizen-id" }')
    declared = ds.to_dict()
    col = next(c for c in declared["columns"] if c["name"] == "citizen")
    assert col["join_domain"] == "citizen-id"
    back = parse_declaration(declared)  # what the gateway re-validates at Register
    assert back.column("citizen").join_domain == "citizen-id"  # type: ignore[union-attr]
    assert DatasetSpec.from_dict(declared).column("citizen").join_domain == "citizen-id"  # type: ignore[union-attr]


def test_columns_without_a_join_key_keep_their_exact_dict() -> None:
    # Schemas registered before joins existed compare equal to the same manifest parsed now.
    ds = _parse("")
    assert all("join_domain" not in c.to_dict() for c in ds.columns)
    assert ds.column("age").to_dict() == {  # type: ignore[union-attr]
        "name": "age", "type": "int", "min": 0, "max": 120, "values": None, "uses": ["aggregate", "filter"]}


def test_schema_differences_name_a_different_join_domain() -> None:
    a = _parse('citizen = { type = "text", uses = ["join"], join_domain = "citizen-id" }')
    b = _parse('citizen = { type = "text", uses = ["join"], join_domain = "passport" }')
    diff = schema_differences(a.schema(), b.schema())
    assert diff == ["column 'citizen' join_domain: 'passport' here vs 'citizen-id' registered"]


@pytest.mark.parametrize("name", ["citizen-id", "phone", "email", "eu.vat_id", "id2"])
def test_join_domain_names(name: str) -> None:
    assert JOIN_DOMAIN.fullmatch(name)


@pytest.mark.parametrize("name", ["", "Citizen", "-id", "a b", "id-", "a--b", "\u00e9"])
def test_bad_join_domain_names(name: str) -> None:
    assert not JOIN_DOMAIN.fullmatch(name)
