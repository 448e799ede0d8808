"""The JoinPlan (issue #16): sides, cells, measurements, dummies, digest, and the join-only refusals."""

from __future__ import annotations

import pytest
from join_data import HOSPITAL, INSURER

from xdp_compute.domain.manifest import parse_manifest_text
from xdp_compute.errors import InvalidQuery
from xdp_compute.query.join_plan import (
    JoinPlan,
    dummy_shift_for,
    join_cost,
    pack_slots,
    plan_join,
    unpack_slots,
)
from xdp_compute.query.joins import check_join
from xdp_compute.query.parse import parse_statement

H = parse_manifest_text(HOSPITAL.format(node="h", budget=10, max_rows=100, approval="false"),
                        check_files=False).datasets[0]
I = parse_manifest_text(INSURER.format(node="i", budget=10, max_rows=200, approval="false"),
                        check_files=False).datasets[0]


def plan(sql: str, epsilon: float = 1.0, delta: float = 1e-6) -> JoinPlan:
    stmt = parse_statement(sql, allow_join=True)
    s = check_join(stmt, {"hospital": H, "insurer": I})
    specs = {"hospital": H, "insurer": I}
    return plan_join(sql, stmt, specs[s.left], specs[s.right], s.left_key, s.right_key, epsilon, delta,
                     left_alias=s.left_alias, right_alias=s.right_alias)


def test_sides_cells_and_measurements() -> None:
    p = plan("SELECT h.district, i.tier, AVG(i.claim) FROM hospital h JOIN insurer i ON h.citizen = i.citizen "
             "WHERE h.age > 60 GROUP BY h.district, i.tier")
    assert (p.a.dataset, p.b.dataset) == ("hospital", "insurer")  # B holds the aggregated column
    assert p.a.groups == ("district",) and p.b.groups == ("tier",)
    assert p.a.where is not None and p.b.where is None
    assert [m.key for m in p.inner.measurements] == ["count(claim)", "sum(claim)", "count"]
    assert p.cell_pairs == ((0, 0), (0, 1), (1, 0), (1, 1)) and p.hidden_count
    assert (p.a.max_rows, p.b.max_rows) == (100, 200)  # each side pads to its own declared max_rows
    assert JoinPlan.from_dict(p.to_dict()) == p
    assert p.digest() != plan(p.sql.replace("60", "61")).digest()


def test_the_value_side_follows_the_aggregated_column_whichever_side_it_is_written_on() -> None:
    p = plan("SELECT i.tier, SUM(h.age) FROM insurer i JOIN hospital h ON i.citizen = h.citizen GROUP BY i.tier")
    assert (p.a.dataset, p.b.dataset) == ("insurer", "hospital")
    assert p.a.groups == ("tier",) and p.b.groups == ()


def test_cost_splits_epsilon_between_aggregates_and_dummies_and_is_charged_once_per_ledger() -> None:
    p = plan("SELECT COUNT(*) FROM hospital h JOIN insurer i ON h.citizen = i.citizen", 2.0, 1e-6)
    eps, delta = join_cost(p)
    assert p.card_epsilon == pytest.approx(0.2) and eps <= 2.0 + 1e-9 and delta <= 1e-6 * (1 + 1e-9)
    assert p.dummy_shift == dummy_shift_for(p.card_epsilon, p.card_delta) > 50


@pytest.mark.parametrize("sql, words", [
    ("SELECT SUM(h.age), SUM(i.claim) FROM hospital h JOIN insurer i ON h.citizen = i.citizen",
     "columns of both datasets"),
    ("SELECT COUNT(*) FROM hospital h JOIN insurer i ON h.citizen = i.citizen WHERE h.age > 1 OR i.claim > 1",
     "may read one dataset only"),
    ("SELECT COUNT(*) FROM hospital h JOIN insurer i ON h.citizen = i.citizen WHERE h.citizen = 'x'",
     "join key 'hospital.citizen' is read outside ON"),
    ("SELECT SUM(i.nothing) FROM hospital h JOIN insurer i ON h.citizen = i.citizen", "unknown column 'nothing'"),
    ("SELECT i.claim, COUNT(*) FROM hospital h JOIN insurer i ON h.citizen = i.citizen GROUP BY i.claim",
     "claim"),
])
def test_join_only_refusals(sql: str, words: str) -> None:
    with pytest.raises(InvalidQuery, match=words):
        plan(sql)


def test_packed_slots_round_trip_signed_sums() -> None:
    n = (1 << 2047) + 1234567
    a, b = [5, -7, 0, 1 << 90], [-(1 << 100), 3, -1, 2]
    total = (pack_slots(a, n) + pack_slots(b, n)) % n
    assert unpack_slots(total, n, 4) == [x + y for x, y in zip(a, b, strict=True)]
