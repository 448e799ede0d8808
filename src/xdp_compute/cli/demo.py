"""``xdp demo``: a gateway, three district hospitals' nodes and a walkthrough for every role."""

from __future__ import annotations

import shutil
import time
from typing import Any

from rich.console import Console
from rich.table import Table

from xdp_compute.cli.cluster import LocalCluster

# Re-exported: tests and the notebook import the demo's data from here.
from xdp_compute.cli.demo_data import (
    DISTRICTS,
    HOSPITALS,
    MANIFEST,
    PRESCRIPTIONS,
    synthetic_patients,
    synthetic_prescriptions,
)
from xdp_compute.cli.output import as_data

__all__ = ["DISTRICTS", "HOSPITALS", "MANIFEST", "PRESCRIPTIONS", "principals", "run_demo", "start_demo_cluster",
           "synthetic_patients", "synthetic_prescriptions", "validation_line"]


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
