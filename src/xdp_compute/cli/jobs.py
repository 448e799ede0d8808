"""``xdp jobs list|show``, ``xdp budget DATASET`` and ``xdp nodes list``: what the gateway holds for
the caller, as tables or ``--json``."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import typer

from xdp_compute.cli.exit_codes import friendly
from xdp_compute.cli.options import CA, JSON, TIMEOUT, TOKEN, TOKEN_FILE, URL, gateway_client
from xdp_compute.cli.output import as_data, print_json, print_table

jobs_app = typer.Typer(no_args_is_help=True, help="Your jobs: status, cost, and the answer once released.")
nodes_app = typer.Typer(no_args_is_help=True, help="Nodes: which are registered and online.")

STATUSES = "awaiting_approval | reserved | running | released | denied | failed"


def when(ts: float | None) -> str:
    return "-" if ts is None else dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


@jobs_app.command("list")
@friendly
def jobs_list(status: str = typer.Option(None, help=f"Only jobs in this status: {STATUSES}"),
              kind: str = typer.Option(None, help="Only jobs of this operation: query, he_query, score, training"),
              limit: int = typer.Option(50, min=1, max=500, help="At most this many (newest first)"),
              before: str = typer.Option(None, help="Page on: the job id printed as `next page: --before ID`"),
              url: str = URL, token: str = TOKEN, token_file: Path = TOKEN_FILE, ca: str = CA,
              timeout: float = TIMEOUT, as_json: bool = JSON) -> None:
    """Your jobs, newest first: id, status, operation, cost, when."""
    with gateway_client(url, token, token_file, ca, timeout) as c:
        page = as_data(c.jobs(status=status, kind=kind, limit=limit, before=before))
    if as_json:
        print_json(page)
        return
    rows = [{"job": j["job_id"], "status": j["status"], "operation": j.get("operation"),
             "epsilon": (j.get("cost") or {}).get("epsilon"), "delta": (j.get("cost") or {}).get("delta"),
             "created (UTC)": when(j.get("created_at"))} for j in page["jobs"]]
    print_table(rows, ["job", "status", "operation", "epsilon", "delta", "created (UTC)"], empty="(no jobs)")
    if page.get("next_before"):
        typer.echo(f"next page: --before {page['next_before']}")


@jobs_app.command("show")
@friendly
def jobs_show(job_id: str = typer.Argument(..., help="The job's id (xdp jobs list)"),
              url: str = URL, token: str = TOKEN, token_file: Path = TOKEN_FILE, ca: str = CA,
              timeout: float = TIMEOUT, as_json: bool = JSON) -> None:
    """One of your jobs: status, cost, error or progress, and the released answer."""
    from xdp_compute.cli.query import waiting_line

    with gateway_client(url, token, token_file, ca, timeout) as c:
        job = as_data(c.job(job_id))
    if as_json:
        print_json(job)
        return
    cost = job.get("cost") or {}
    typer.echo(f"job {job['job_id']}: {job['status']} ({job.get('operation')}), created {when(job.get('created_at'))} "
               f"UTC, cost epsilon={cost.get('epsilon', float('nan')):.6g} delta={cost.get('delta', float('nan')):.3g}")
    if job["status"] not in ("released", "denied", "failed"):
        typer.echo(waiting_line(job))
    if job.get("error"):
        typer.echo(f"error: {job['error'].get('detail') or job['error']}")
    if job["status"] == "released" and isinstance(job.get("result"), dict) and "rows" in job["result"]:
        from xdp_compute.sdk.results import query_result

        typer.echo(query_result(job).table())


@friendly
def budget(dataset: str = typer.Argument(..., help="The dataset"),
           url: str = URL, token: str = TOKEN, token_file: Path = TOKEN_FILE, ca: str = CA,
           timeout: float = TIMEOUT, as_json: bool = JSON) -> None:
    """Privacy budget left on each node of DATASET, and your own (analysts)."""
    with gateway_client(url, token, token_file, ca, timeout) as c:
        b = as_data(c.budget(dataset))
    if as_json:
        print_json(b)
        return
    print_table(b.get("nodes") or [], ["node", "epsilon_budget", "epsilon_spent", "epsilon_reserved", "epsilon_left",
                                       "delta_budget", "delta_spent"], title=f"budget of {b.get('dataset', dataset)}")
    mine = b.get("analyst")
    if mine:
        left = mine["epsilon_budget"] - mine["epsilon_spent"] - mine.get("epsilon_reserved", 0.0)
        typer.echo(f"your budget: epsilon {left:.6g} left of {mine['epsilon_budget']:.6g} "
                   f"(spent {mine['epsilon_spent']:.6g}, reserved {mine.get('epsilon_reserved', 0.0):.6g}); "
                   f"delta spent {mine['delta_spent']:.3g} of {mine['delta_budget']:.3g}")


@nodes_app.command("list")
@friendly
def nodes_list(url: str = URL, token: str = TOKEN, token_file: Path = TOKEN_FILE, ca: str = CA,
               timeout: float = TIMEOUT, as_json: bool = JSON) -> None:
    """Registered nodes you may see (holders: your own; admins: all) and whether they are online."""
    with gateway_client(url, token, token_file, ca, timeout) as c:
        nodes: list[dict[str, Any]] = as_data(c.nodes())
    if as_json:
        print_json(nodes)
        return
    print_table([{**n, "last seen (UTC)": when(n.get("last_seen"))} for n in nodes],
                ["name", "online", "region", "datasets", "last seen (UTC)"], empty="(no nodes)")
