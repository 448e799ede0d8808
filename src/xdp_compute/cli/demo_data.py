"""The demo's data: the three district hospitals, their manifests and synthetic patients and prescriptions.

Shared by ``demo`` (the cluster) and ``demo_steps`` (the walkthrough), and by tests that build the
same hospitals; numpy only.
"""

from __future__ import annotations

import numpy as np

DISTRICTS = ["Siming", "Huli", "Jimei"]
HOSPITALS = {"Siming": "siming-hospital", "Huli": "huli-hospital", "Jimei": "jimei-hospital"}

MANIFEST = """\
[node]
name = "{node}"
region = "CN-FJ"

[[datasets]]
name = "patients"
source = "patients.csv"
classification = "sensitive"
categories = ["health"]
epsilon_budget = 20.0
delta = 1e-5
min_group_size = 10
max_rows = 5000
require_approval = {approval}

[datasets.columns]
age        = {{ type = "int",      min = 0, max = 110,      uses = ["aggregate", "filter"] }}
cost       = {{ type = "float",    min = 0, max = 200000,   uses = ["aggregate", "filter"] }}
stay_days  = {{ type = "int",      min = 0, max = 60,       uses = ["aggregate", "filter"] }}
district   = {{ type = "category", values = ["Siming", "Huli", "Jimei"], uses = ["group", "filter"] }}
chronic    = {{ type = "category", values = ["no", "yes"], uses = ["group", "filter", "aggregate"] }}
readmitted = {{ type = "category", values = ["no", "yes"], uses = ["group", "filter", "aggregate"] }}
name       = {{ type = "text",     uses = [] }}
"""

# A second dataset whose owner requires manual approval of every job (the demo's approval step).
PRESCRIPTIONS = """
[[datasets]]
name = "prescriptions"
source = "prescriptions.csv"
classification = "sensitive"
categories = ["health"]
epsilon_budget = 5.0
delta = 1e-5
min_group_size = 10
max_rows = 5000
require_approval = true

[datasets.columns]
drug          = { type = "category", values = ["statin", "insulin", "antibiotic", "other"], uses = ["group", "filter"] }
monthly_cost  = { type = "float",    min = 0, max = 3000, uses = ["aggregate"] }
age           = { type = "int",      min = 0, max = 110,  uses = ["aggregate", "filter"] }
"""


def synthetic_patients(district: str, rows: int, seed: int) -> str:
    """A district hospital's synthetic patients (same schema everywhere; most live in its district)."""
    rng = np.random.default_rng(seed)
    age = np.clip(rng.normal(52, 20, rows).round(), 0, 110).astype(int)
    chronic = rng.random(rows) < (0.1 + 0.6 * age / 110)
    stay = np.clip(rng.poisson(2 + 4 * chronic + age / 30), 0, 60)
    cost = np.clip(rng.lognormal(8.5 + 0.5 * chronic + 0.01 * age, 0.5), 0, 200000).round(2)
    logit = -4.0 + 0.04 * age + 1.2 * chronic + 0.15 * stay
    readmitted = rng.random(rows) < 1 / (1 + np.exp(-logit))
    home = np.where(rng.random(rows) < 0.8, district, rng.choice(DISTRICTS, rows))
    lines = ["age,cost,stay_days,district,chronic,readmitted,name"]
    for i in range(rows):
        lines.append(f"{age[i]},{cost[i]},{stay[i]},{home[i]},{'yes' if chronic[i] else 'no'},"
                     f"{'yes' if readmitted[i] else 'no'},patient-{district[:2].lower()}-{seed}-{i}")
    return "\n".join(lines) + "\n"


def synthetic_prescriptions(rows: int, seed: int) -> str:
    """A hospital's synthetic prescriptions (drug class, monthly cost, patient age)."""
    rng = np.random.default_rng(seed)
    drugs = rng.choice(["statin", "insulin", "antibiotic", "other"], rows, p=[0.35, 0.2, 0.3, 0.15])
    base = {"statin": 60.0, "insulin": 400.0, "antibiotic": 90.0, "other": 150.0}
    lines = ["drug,monthly_cost,age"]
    for i in range(rows):
        cost = min(3000.0, max(0.0, rng.lognormal(np.log(base[drugs[i]]), 0.4)))
        lines.append(f"{drugs[i]},{cost:.2f},{int(np.clip(rng.normal(58, 16), 0, 110))}")
    return "\n".join(lines) + "\n"


__all__ = ["DISTRICTS", "HOSPITALS", "MANIFEST", "PRESCRIPTIONS", "synthetic_patients",
           "synthetic_prescriptions"]
