"""``xdp demo``: a gateway, three district hospitals' nodes and a walkthrough for every role."""

from __future__ import annotations

import shutil
import time
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from xdp_compute.cli.cluster import LocalCluster
from xdp_compute.cli.output import as_data

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


def start_demo_cluster(console: Console, rows: int = 1500, approval_node: str | None = None,
                       env: dict[str, str] | None = None, preload: bool = False, tls: bool = False,
                       prescriptions: bool = False) -> tuple[LocalCluster, dict[str, str]]:
    """A gateway and the three hospitals' nodes; ``preload`` loads torch on each node at start;
    ``tls``: HTTPS and mutual-TLS gRPC under a fresh deployment CA (``cluster.ca``);
    ``prescriptions``: each hospital also holds ``prescriptions``, whose jobs need the owner's approval.

    Tokens: ``admin``, ``analyst``, ``ml`` (an ML team, an analyst principal of its own), ``auditor``
    and one holder per hospital (keyed by the node's name)."""
    cluster = LocalCluster(env=env or {}, preload=preload, tls=tls)
    console.print(f"  starting the gateway (REST {cluster.url}, gRPC {cluster.grpc_addr}) ...")
    try:
        return cluster, _populate(console, cluster, rows, approval_node, prescriptions)
    except BaseException:
        cluster.close()  # no orphaned gateway or node processes when start-up fails half-way
        raise


def _populate(console: Console, cluster: LocalCluster, rows: int, approval_node: str | None,
              prescriptions: bool = False) -> dict[str, str]:

    cluster.start_gateway()
    tokens = {"admin": cluster.token("admin", "city-data-office"),
              "analyst": cluster.token("analyst", "health-bureau-analyst", region="CN-FJ"),
              "ml": cluster.token("analyst", "hospital-ml-team", region="CN-FJ"),
              "auditor": cluster.token("auditor", "city-auditor")}
    for i, district in enumerate(DISTRICTS):
        node = HOSPITALS[district]
        tokens[node] = cluster.token("holder", f"{node}-holder")
        files = {"patients.csv": synthetic_patients(district, rows, seed=100 + i)}
        text = MANIFEST.format(node=node, approval="true" if node == approval_node else "false")
        if prescriptions:
            text += PRESCRIPTIONS
            files["prescriptions.csv"] = synthetic_prescriptions(rows // 2, seed=200 + i)
        manifest = cluster.write_node_files(node, text, files)
        if i > 0:  # the first hospital registered its datasets, so it owns them and invites the others
            with cluster.client(tokens[HOSPITALS[DISTRICTS[0]]]) as owner:
                for dataset in ("patients", "prescriptions") if prescriptions else ("patients",):
                    owner.invite(dataset, f"{node}-holder")
        cluster.start_node(node, tokens[node], manifest)
        if i == 0:
            cluster.wait_online(tokens["admin"], [node])
    console.print(f"  started {len(HOSPITALS)} hospital nodes; waiting for them to dial in and register ...")
    cluster.wait_online(tokens["admin"], list(HOSPITALS.values()))
    return tokens


def principals(cluster: LocalCluster, tokens: dict[str, str]) -> list[dict[str, str]]:
    """Who is who in the demo, as the gateway knows them (``GET /v1/me`` with each token)."""
    does = {"admin": "operator: issues tokens", "analyst": "runs DP SQL and HE queries",
            "ml": "trains a DP model and uses it", "auditor": "verifies the release log and metering"}
    out = []
    for key, token in tokens.items():
        with cluster.client(token) as c:
            me = as_data(c.me())
        out.append({"principal": me["name"], "role": me["role"],
                    "acts in the demo as": does.get(key, f"holder of {key}: validates, approves")})
    return out


def validation_line(ds: dict[str, Any]) -> str:
    """One dataset's validation report (node/validate.py) as the holder reads it: counts only."""
    counts = {k: sum(int(c.get(k) or 0) for c in ds["columns"].values())
              for k in ("type_violations", "out_of_bounds", "undeclared_values", "nulls")}
    line = (f"dataset {ds['dataset']!r} ({ds['source_kind']}) valid={ds['ok']} rows={ds['rows']}; "
            + ", ".join(f"{k.replace('_', ' ')}={v}" for k, v in counts.items()))
    for problem in ds.get("problems") or []:
        line += f"; problem: {problem}"
    for warning in ds.get("warnings") or []:
        line += f"; warning: {warning}"
    return line


def _table(title: str, rows: list[dict[str, Any]], columns: list[str] | None = None) -> Table:
    t = Table(title=title, title_justify="left")
    cols = columns or (list(rows[0]) if rows else [])
    for c in cols:
        t.add_column(c)
    for r in rows:
        t.add_row(*[str(r.get(c, "")) for c in cols])
    return t


def run_demo(console: Console | None = None) -> int:

    if console is None:
        console = Console()
        if not console.is_terminal:
            console = Console(width=150)
    started = time.time()
    console.rule("[bold]xdp-compute demo: three district hospitals, one gateway")
    # Nodes load torch in their task worker while the first steps run, so training starts warm.
    cluster, tokens = start_demo_cluster(console, preload=True, tls=True, prescriptions=True)
    try:
        console.print(f"gateway REST {cluster.url}  gRPC {cluster.grpc_addr}  (SQLite {cluster.db_url})")
        console.print(f"TLS everywhere: clients verify the gateway against the deployment CA {cluster.ca}; each "
                      "node presents a certificate bound to its name and holder (xdp admin pki issue)")
        console.print(_table("  principals (one token each; every role below acts as its own principal)",
                             principals(cluster, tokens), ["principal", "role", "acts in the demo as"]))
        # Data holders
        console.rule("[bold]1. Data holders: nodes dial out, register and validate their sources")
        for node in HOSPITALS.values():
            with cluster.client(tokens[node]) as holder:
                mine = as_data(holder.nodes())
                report = as_data(holder.validate_node(node))
                for ds in report["datasets"]:
                    console.print(f"  {node}: online={mine[0]['online']} {validation_line(ds)}")
        # Analyst catalog
        console.rule("[bold]2. Analyst: catalog (metadata only) and a mock preview")
        with cluster.client(tokens["analyst"], key_dir=str(cluster.root / "analyst-keys")) as analyst:
            for ds in as_data(analyst.datasets()):
                console.print(f"  dataset {ds['name']!r} ({ds['classification']}, categories {ds['categories']}) "
                              f"on {', '.join(n['name'] + (' (online)' if n['online'] else ' (offline)') for n in ds['nodes'])}")
                console.print(_table("  columns", [{"column": c["name"], "type": c["type"],
                                                    "bounds/values": c["values"] or f"[{c['min']:g}, {c['max']:g}]"
                                                    if c["type"] != "text" else "-",
                                                    "uses": ",".join(c["uses"]) or "none"} for c in ds["columns"]]))
            console.print(_table("  mock preview (synthetic, from metadata alone)", as_data(analyst.mock("patients", rows=5))))
            from xdp_compute.cli import demo_steps

            demo_steps.run_all(console, cluster, tokens, analyst)
        console.rule(f"[bold green]demo finished in {time.time() - started:.1f}s")
        return 0
    finally:
        cluster.close()
        shutil.rmtree(cluster.root, ignore_errors=True)
