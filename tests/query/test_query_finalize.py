"""From noisy totals to released rows (query/finalize.py): each SELECT item derived per cell."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from xdp_compute.domain.manifest import parse_manifest_text
from xdp_compute.privacy import MeasurementNoise, NoisePlan
from xdp_compute.query import QueryPlan, encode_fixed, from_ring, plan_query, to_ring
from xdp_compute.query.finalize import finalize_rows

MANIFEST = """
[node]
name = "n1"
region = "CN-FJ"

[[datasets]]
name = "people"
source = "people.csv"
classification = "internal"
epsilon_budget = 10

[datasets.columns]
age = { type = "int", min = 0, max = 120, uses = ["aggregate", "filter"] }
income = { type = "float", min = -1000, max = 100000, uses = ["aggregate", "filter"] }
smoker = { type = "bool", uses = ["group", "filter", "aggregate"] }
"""


def _noiseless(plan: QueryPlan) -> NoisePlan:
    # Zero noise, so every estimate is the exact post-processing of the totals.
    zero = Fraction(0)
    measurements = tuple(
        MeasurementNoise(m.key, float(m.sensitivity), float(m.sensitivity), len(plan.cells), zero, zero, 0.0)
        for m in plan.measurements
    )
    return NoisePlan(measurements, rho=0.0, epsilon=1.0, delta=1e-6, parties_threshold=1, requested_epsilon=1.0)


def test_finalize_rows_derives_each_select_item() -> None:
    # The deriving half of the former test_decode_and_derive (test_query_plan.py), moved here when
    # query/combine.py's derive_rows was removed: the same totals, derived by finalize_rows, the
    # path the gateway and the SDK use.
    ds = parse_manifest_text(MANIFEST, check_files=False).datasets[0]
    p = plan_query("SELECT smoker, COUNT(*), SUM(income), AVG(age), VARIANCE(age), STDDEV(age) FROM people "
                   "GROUP BY smoker", ds)
    idx = {m.key: i for i, m in enumerate(p.measurements)}
    totals = {  # per cell: (count, count(age), sum(age), sumsq(age), sum(income))
        0: {"count": 4, "count(age)": 4, "sum(age)": 100.0, "sumsq(age)": 2600.0, "sum(income)": -10.5},
        1: {"count": 0, "count(age)": 0, "sum(age)": 0.0, "sumsq(age)": 0.0, "sum(income)": 0.0},
    }
    vec = np.zeros(p.vector_length, dtype=np.uint64)
    for ci, vals in totals.items():
        for key, v in vals.items():
            m = p.measurements[idx[key]]
            vec[p.index(ci, idx[key])] = to_ring(encode_fixed(v, m.frac_bits))
    signed = [from_ring(int(x)) for x in vec]  # as the gateway reads the unmasked total
    rows = finalize_rows(p, _noiseless(p), signed, 1, 0.95, False, "people")["rows"]
    assert rows[0]["smoker"] == "false" and rows[1]["smoker"] == "true"
    assert rows[0]["count"] == 4 and rows[0]["sum_income"] == -10.5
    assert rows[0]["avg_age"] == 25.0
    assert rows[0]["variance_age"] == pytest.approx(2600 / 4 - 25.0**2)
    assert rows[0]["stddev_age"] == pytest.approx(5.0)
    assert rows[1]["count"] == 0
