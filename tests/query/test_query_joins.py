"""JOIN refusals (issue #16): every shape but one refused with its own reason; the one shape checked
against both manifests (use "join", same join_domain) and planned as a private join; a
single-dataset path refuses it and names the join path."""

from __future__ import annotations

import pytest

from xdp_compute.domain.manifest import DatasetSpec, parse_manifest_text
from xdp_compute.errors import BadRequest, InvalidQuery
from xdp_compute.query import plan_query, referenced_dataset
from xdp_compute.query.joins import check_join, join_shape
from xdp_compute.query.parse import parse_statement

MANIFEST = """
[node]
name = "n1"
region = "CN-FJ"

[[datasets]]
name = "{name}"
source = "x.csv"
classification = "internal"
epsilon_budget = 10

[datasets.columns]
citizen = {{ type = "text", uses = ["join"], join_domain = "{domain}" }}
phone = {{ type = "text", uses = ["join"], join_domain = "phone" }}
age = {{ type = "int", min = 0, max = 120, uses = ["aggregate", "filter"] }}
"""


def _spec(name: str, domain: str = "citizen-id") -> DatasetSpec:
    return parse_manifest_text(MANIFEST.format(name=name, domain=domain), check_files=False).datasets[0]


SPECS = {"hospital": _spec("hospital"), "insurer": _spec("insurer"), "bank": _spec("bank", "passport")}
NOT_YET = ("a private join runs only as a query over two datasets through the gateway's join path "
           "(docs/private-joins.md)")


def _check(sql: str) -> None:
    check_join(parse_statement(sql, allow_join=True), SPECS)


def _refused(sql: str) -> str:
    with pytest.raises(InvalidQuery) as e:
        referenced_dataset(sql)
    return str(e.value)


@pytest.mark.parametrize("sql, words", [
    ("SELECT COUNT(*) FROM hospital h LEFT JOIN insurer i ON h.citizen = i.citizen",
     ["LEFT JOIN (outer join)", "only inner joins", "rows did not match"]),
    ("SELECT COUNT(*) FROM hospital h RIGHT OUTER JOIN insurer i ON h.citizen = i.citizen",
     ["RIGHT JOIN (outer join)", "only inner joins"]),
    ("SELECT COUNT(*) FROM hospital h FULL OUTER JOIN insurer i ON h.citizen = i.citizen",
     ["FULL JOIN (outer join)", "only inner joins"]),
    ("SELECT COUNT(*) FROM hospital h ANTI JOIN insurer i ON h.citizen = i.citizen", ["ANTI JOIN", "did not match"]),
    ("SELECT COUNT(*) FROM hospital h SEMI JOIN insurer i ON h.citizen = i.citizen", ["SEMI JOIN", "only inner"]),
    ("SELECT COUNT(*) FROM hospital CROSS JOIN insurer", ["CROSS JOIN", "ON a.key = b.key", "cross product"]),
    ("SELECT COUNT(*) FROM hospital, insurer", ["CROSS JOIN (FROM a, b)", "ON a.key = b.key"]),
    ("SELECT COUNT(*) FROM hospital NATURAL JOIN insurer", ["NATURAL JOIN", "ON a.key = b.key"]),
    ("SELECT COUNT(*) FROM hospital ASOF JOIN insurer ON hospital.citizen = insurer.citizen", ["ASOF JOIN"]),
    ("SELECT COUNT(*) FROM hospital POSITIONAL JOIN insurer", ["POSITIONAL JOIN", "row order is not a key"]),
    ("SELECT COUNT(*) FROM hospital JOIN insurer USING (citizen)", ["JOIN ... USING", "both columns named"]),
    ("SELECT COUNT(*) FROM hospital h JOIN insurer i ON h.citizen = i.citizen JOIN bank b ON h.citizen = b.citizen",
     ["JOIN of more than two datasets", "exactly two datasets", "offset"]),
    ("SELECT COUNT(*) FROM hospital a JOIN hospital b ON a.citizen = b.citizen", ["self-JOIN", "two different"]),
    ("SELECT COUNT(*) FROM hospital h JOIN insurer i ON h.citizen = i.citizen AND h.age > 60",
     ["JOIN condition", "in ON", "one equality"]),
    ("SELECT COUNT(*) FROM hospital h JOIN insurer i ON h.citizen < i.citizen", ["JOIN condition"]),
    ("SELECT COUNT(*) FROM hospital h JOIN insurer i ON h.citizen = h.phone", ["JOIN condition"]),
    ("SELECT COUNT(*) FROM hospital h JOIN insurer i ON citizen = i.citizen",
     ["unqualified column in JOIN condition", "ON a.key = b.key"]),
    ("SELECT COUNT(*) FROM hospital h JOIN insurer i ON h.citizen = x.citizen", ["unknown table 'x'", "'insurer'"]),
    ("SELECT COUNT(*) FROM hospital h JOIN (SELECT * FROM insurer) i ON h.citizen = i.citizen", ["subquery"]),
    ("SELECT COUNT(*) FROM hospital h JOIN s.insurer i ON h.citizen = i.citizen", ["qualified table name"]),
    ("SELECT COUNT(*) FROM (SELECT * FROM hospital) h JOIN insurer i ON h.citizen = i.citizen", ["subquery"]),
    ("SELECT COUNT(*) FROM hospital h JOIN insurer i(a, b) ON h.citizen = i.citizen", ["column aliases"]),
])
def test_every_other_join_shape_is_refused_with_its_reason(sql: str, words: list[str]) -> None:
    msg = _refused(sql)
    for w in words:
        assert w in msg, msg
    assert NOT_YET not in msg


def test_a_single_dataset_path_refuses_an_inner_join_and_names_the_join_path() -> None:
    for sql in ("SELECT COUNT(*) FROM hospital h JOIN insurer i ON h.citizen = i.citizen",
                ("SELECT AVG(i.age) FROM hospital INNER JOIN insurer i ON (i.citizen = hospital.citizen) "
                 "WHERE hospital.age > 60")):
        msg = _refused(sql)
        assert msg.startswith("inner JOIN of two datasets is not supported in FROM at offset ") and NOT_YET in msg
        with pytest.raises(InvalidQuery, match="gateway's join path"):
            plan_query(sql, SPECS["hospital"])


def test_the_shape_names_both_datasets_and_keys_in_either_order() -> None:
    shape = join_shape(parse_statement("SELECT COUNT(*) FROM hospital h JOIN insurer i ON i.phone = h.citizen",
                                  allow_join=True))
    assert (shape.left, shape.left_alias, shape.left_key) == ("hospital", "h", "citizen")
    assert (shape.right, shape.right_alias, shape.right_key) == ("insurer", "i", "phone")


def test_check_join_refuses_a_key_without_join_use_on_either_side() -> None:
    for sql, col in (("SELECT COUNT(*) FROM hospital h JOIN insurer i ON h.age = i.citizen", "hospital.age"),
                     ("SELECT COUNT(*) FROM hospital h JOIN insurer i ON h.citizen = i.age", "insurer.age")):
        with pytest.raises(InvalidQuery) as e:
            _check(sql)
        msg = str(e.value)
        assert f"column '{col}' is not a join key" in msg and 'use "join" and a join_domain' in msg
        assert e.value.extra["construct"] == "column use"


def test_check_join_refuses_keys_of_different_domains() -> None:
    with pytest.raises(InvalidQuery) as e:
        _check("SELECT COUNT(*) FROM hospital h JOIN bank b ON h.citizen = b.citizen")
    msg = str(e.value)
    assert "join keys of different domains" in msg and "'citizen-id'" in msg and "'passport'" in msg
    with pytest.raises(InvalidQuery, match="different domains"):
        _check("SELECT COUNT(*) FROM hospital h JOIN insurer i ON h.citizen = i.phone")


def test_check_join_refuses_unknown_datasets_and_columns() -> None:
    with pytest.raises(InvalidQuery, match="unknown dataset 'nowhere'"):
        _check("SELECT COUNT(*) FROM hospital h JOIN nowhere n ON h.citizen = n.citizen")
    with pytest.raises(InvalidQuery, match="unknown column 'nope'"):
        _check("SELECT COUNT(*) FROM hospital h JOIN insurer i ON h.citizen = i.nope")


def test_check_join_on_matching_join_keys_returns_the_shape() -> None:
    shape = check_join(parse_statement("SELECT COUNT(*) FROM Hospital h JOIN INSURER i ON h.CITIZEN = i.citizen",
                                       allow_join=True), SPECS)
    assert (shape.left, shape.left_key, shape.right, shape.right_key) == ("Hospital", "CITIZEN", "INSURER", "citizen")
    assert issubclass(InvalidQuery, BadRequest) and InvalidQuery.status == 400


def test_check_join_applies_the_shape_refusals_too() -> None:
    with pytest.raises(InvalidQuery, match="LEFT JOIN"):
        _check("SELECT COUNT(*) FROM hospital h LEFT JOIN insurer i ON h.citizen = i.citizen")


def test_a_join_key_cannot_be_aggregated_filtered_or_grouped_in_a_single_dataset_query() -> None:
    for sql, verb in (("SELECT COUNT(citizen) FROM hospital", "aggregated"),
                      ("SELECT COUNT(*) FROM hospital WHERE citizen = 'x'", "filtered"),
                      ("SELECT citizen, COUNT(*) FROM hospital GROUP BY citizen", "grouped")):
        with pytest.raises(InvalidQuery, match=f"may not be {verb}.*only these uses: join"):
            plan_query(sql, SPECS["hospital"])
