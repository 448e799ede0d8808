"""Synthetic overlapping populations for private-join tests (issue #16): a hospital and an insurer.

Both hold a ``citizen`` key of the "citizen-id" domain. Keys overlap partially, appear in
different orders on the two sides, and a few keys are repeated on each side (every row of a
repeated key is dropped by its holder, as docs/private-joins.md documents).
"""

from __future__ import annotations

import csv
import io
import random
from dataclasses import dataclass

HOSPITAL = """
[node]
name = "{node}"
region = "CN-FJ"

[[datasets]]
name = "hospital"
source = "hospital.csv"
classification = "internal"
epsilon_budget = {budget}
delta = 1e-4
min_group_size = 1
max_rows = {max_rows}
max_epsilon_per_query = 1000
require_approval = {approval}

[datasets.columns]
citizen  = {{ type = "text", uses = ["join"], join_domain = "citizen-id" }}
district = {{ type = "category", values = ["north", "south"], uses = ["group", "filter"] }}
age      = {{ type = "int", min = 0, max = 100, uses = ["aggregate", "filter"] }}
"""

INSURER = """
[node]
name = "{node}"
region = "CN-FJ"

[[datasets]]
name = "insurer"
source = "insurer.csv"
classification = "internal"
epsilon_budget = {budget}
delta = 1e-4
min_group_size = 1
max_rows = {max_rows}
max_epsilon_per_query = 1000
require_approval = {approval}

[datasets.columns]
citizen = {{ type = "text", uses = ["join"], join_domain = "citizen-id" }}
phone   = {{ type = "text", uses = ["join"], join_domain = "phone" }}
claim   = {{ type = "float", min = 0, max = 1000, uses = ["aggregate", "filter"] }}
tier    = {{ type = "category", values = ["basic", "gold"], uses = ["group"] }}
"""


@dataclass
class Populations:
    hospital_csv: str
    insurer_csv: str
    hospital: dict[str, tuple[str, int]]   # citizen -> (district, age), unique keys only
    insurer: dict[str, tuple[float, str]]  # citizen -> (claim, tier), unique keys only
    raw_keys: list[str]                    # every key as written in either file
    raw_values: list[str]                  # every value as written (ages, claims)

    def truth(self, where_age_over: int | None = None) -> dict[tuple[str, str], dict[str, float]]:
        """Exact per-(district, tier) COUNT and SUM(claim) over the inner join of unique keys."""
        out: dict[tuple[str, str], dict[str, float]] = {}
        for k, (district, age) in self.hospital.items():
            if k not in self.insurer or (where_age_over is not None and not age > where_age_over):
                continue
            claim, tier = self.insurer[k]
            cell = out.setdefault((district, tier), {"count": 0, "sum": 0.0})
            cell["count"] += 1
            cell["sum"] += claim
        return out


def populations(seed: int, n_hospital: int, n_insurer: int, overlap: int, duplicates: int = 3) -> Populations:
    rng = random.Random(seed)
    ids = [f"C{seed:02d}{i:07d}" for i in range(n_hospital + n_insurer - overlap)]
    h_ids = ids[:n_hospital]
    i_ids = ids[n_hospital - overlap:]
    rng.shuffle(h_ids)
    rng.shuffle(i_ids)
    hospital = {k: (rng.choice(["north", "south"]), rng.randint(0, 100)) for k in h_ids}
    insurer = {k: (round(rng.uniform(0, 1000), 2), rng.choice(["basic", "gold"])) for k in i_ids}
    h_rows = [[k, d, a] for k, (d, a) in hospital.items()]
    i_rows = [[k, f"+86{rng.randint(10**9, 10**10 - 1)}", c, t] for k, (c, t) in insurer.items()]
    # Duplicated keys: a matched key written twice on each side (with different values); all its rows drop.
    for k in [k for k in h_ids if k in insurer][:duplicates]:
        h_rows.append([k, "north", 50])
        i_rows.append([k, "+8600000000", 999.0, "gold"])
        hospital.pop(k)
        insurer.pop(k)
    rng.shuffle(h_rows)
    rng.shuffle(i_rows)
    # Keys written with surrounding spaces on one side: normalised to the same key.
    for r in i_rows[::7]:
        r[0] = f"  {r[0]} "

    def text(header: list[str], rows: list[list[object]]) -> str:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)
        return buf.getvalue()

    return Populations(text(["citizen", "district", "age"], h_rows),
                       text(["citizen", "phone", "claim", "tier"], i_rows),
                       hospital, insurer, [str(r[0]).strip() for r in h_rows + i_rows],
                       [str(r[2]) for r in h_rows] + [str(r[2]) for r in i_rows])
