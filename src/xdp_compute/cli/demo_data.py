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


# ---------------------------------------------------------------- private joins, exchange, lookups
# (issues #16, #17) A second holder, a city insurer, knows the claims of people the Siming hospital
# admitted; both write the citizen id of the "citizen-id" domain. Each joined dataset is held by one
# node, so the hospital's admissions live on a node of their own. max_rows stays small: a private
# join's Paillier work follows each side's max_rows.
INSURER_HOLDER = "xiamen-insurer-holder"
INSURER_NODE = "xiamen-insurer"
ADMISSIONS_NODE = "siming-admissions"
WARDS = ["cardiology", "general", "oncology"]
JOIN_MAX_ROWS = 48

ADMISSIONS = """\
[node]
name = "{node}"
region = "CN-FJ"

[[datasets]]
name = "admissions"
source = "admissions.csv"
classification = "sensitive"
categories = ["health"]
epsilon_budget = 20.0
delta = 1e-5
min_group_size = 3
max_rows = {max_rows}
max_epsilon_per_query = 10

[datasets.columns]
citizen = {{ type = "text", uses = ["join"], join_domain = "citizen-id" }}
ward    = {{ type = "category", values = ["cardiology", "general", "oncology"], uses = ["group", "filter"] }}
age     = {{ type = "int", min = 0, max = 110, uses = ["aggregate", "filter"] }}
"""

INSURER = """\
[node]
name = "{node}"
region = "CN-FJ"

[[datasets]]
name = "claims"
source = "claims.csv"
classification = "sensitive"
categories = ["insurance"]
epsilon_budget = 20.0
delta = 1e-5
min_group_size = 3
max_rows = {max_rows}
max_epsilon_per_query = 10

[datasets.columns]
citizen = {{ type = "text", uses = ["join"], join_domain = "citizen-id" }}
claim   = {{ type = "float", min = 0, max = 3000, uses = ["aggregate", "filter"] }}
tier    = {{ type = "category", values = ["basic", "gold"], uses = ["group", "filter"] }}

[[datasets]]
name = "policies"
source = "policies.csv"
classification = "sensitive"
categories = ["insurance"]
epsilon_budget = 5.0

[datasets.lookup]
key = "citizen_id"
columns = ["tier", "premium"]
capacity = {capacity}
label_bytes = 64

[datasets.columns]
citizen_id = {{ type = "text", uses = [] }}
tier       = {{ type = "category", values = ["basic", "gold"], uses = ["group"] }}
premium    = {{ type = "float", min = 0, max = 20000, uses = ["aggregate"] }}
"""

LOOKUP_CAPACITY = 256
LOOKUP_PRESENT = "350203198807150042"  # a citizen id the insurer's policies hold
LOOKUP_ABSENT = "350203199912319999"   # one they do not


def citizen_id(i: int) -> str:
    """A synthetic 18-digit citizen id (not a real one: the checksum digit is not computed)."""
    return f"3502031988{i:08d}"


def synthetic_join_sides(admitted: int, insured: int, shared: int, seed: int) -> tuple[str, str]:
    """Admissions (citizen, ward, age) and claims (citizen, claim, tier) whose citizens overlap in
    ``shared`` people, each side listing its rows in its own random order."""
    rng = np.random.default_rng(seed)
    people = rng.permutation(10_000)[:admitted + insured - shared]
    hospital = list(people[:admitted])
    insurer = list(people[admitted - shared:])
    rng.shuffle(hospital)
    rng.shuffle(insurer)
    adm = ["citizen,ward,age"]
    for p in hospital:
        ward = WARDS[int(p) % 3]
        adm.append(f"{citizen_id(int(p))},{ward},{int(np.clip(rng.normal(50 + 10 * WARDS.index(ward), 15), 0, 110))}")
    cl = ["citizen,claim,tier"]
    for p in insurer:
        gold = rng.random() < 0.3
        claim = min(3000.0, rng.lognormal(np.log(1800.0 if WARDS[int(p) % 3] == "oncology" else 600.0), 0.4))
        cl.append(f"{citizen_id(int(p))},{claim:.2f},{'gold' if gold else 'basic'}")
    return "\n".join(adm) + "\n", "\n".join(cl) + "\n"


JOIN_SIDES = {"admitted": 44, "insured": 40, "shared": 32, "seed": 307}


def join_truth(admissions: str, claims: str) -> dict[str, tuple[int, float]]:
    """The plaintext answer of the demo's join, per ward: (people, mean claim). Only the demo, which made
    both files, can compute it; no party of the protocol sees both."""
    ward = dict(line.split(",")[:2] for line in admissions.splitlines()[1:])
    claim = {c: float(v) for c, v, _ in (line.split(",") for line in claims.splitlines()[1:])}
    out: dict[str, tuple[int, float]] = {}
    for w in WARDS:
        vals = [claim[c] for c in claim if ward.get(c) == w]
        out[w] = (len(vals), sum(vals) / len(vals) if vals else 0.0)
    return out


def synthetic_policies(rows: int, seed: int) -> str:
    """The insurer's policies by citizen id (tier, yearly premium); one row is ``LOOKUP_PRESENT``'s."""
    rng = np.random.default_rng(seed)
    lines = ["citizen_id,tier,premium"]
    for i in range(rows):
        gold = rng.random() < 0.3
        cid = LOOKUP_PRESENT if i == rows // 3 else citizen_id(20_000 + i)
        lines.append(f"{cid},{'gold' if gold else 'basic'},{rng.uniform(4000, 9000) if gold else rng.uniform(800, 3000):.2f}")
    return "\n".join(lines) + "\n"


__all__ = ["ADMISSIONS", "ADMISSIONS_NODE", "DISTRICTS", "HOSPITALS", "INSURER", "INSURER_HOLDER", "INSURER_NODE",
           "JOIN_MAX_ROWS", "JOIN_SIDES", "LOOKUP_ABSENT", "LOOKUP_CAPACITY", "LOOKUP_PRESENT", "MANIFEST",
           "PRESCRIPTIONS", "WARDS", "citizen_id", "join_truth", "synthetic_join_sides", "synthetic_patients", "synthetic_policies",
           "synthetic_prescriptions"]
