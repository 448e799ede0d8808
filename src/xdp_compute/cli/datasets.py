"""``xdp datasets``: the catalog (``list``); the owner of a dataset invites, lists and revokes the
holders who add rows to it."""

from __future__ import annotations

from pathlib import Path

import typer

from xdp_compute.cli.exit_codes import friendly
from xdp_compute.cli.options import CA, JSON, TIMEOUT, TOKEN, TOKEN_FILE, URL, gateway_client
from xdp_compute.cli.output import as_data, print_json, print_table

datasets_app = typer.Typer(no_args_is_help=True, help="The catalog, and dataset owners: invite, list and revoke "
                                                      "members.")


@datasets_app.command("invite")
@friendly
def invite(dataset: str = typer.Argument(..., help="Your dataset"),
           holder: str = typer.Argument(..., help="The holder (principal name) to invite"),
           url: str = URL, token: str = TOKEN, token_file: Path = TOKEN_FILE, ca: str = CA,
           timeout: float = TIMEOUT) -> None:
    """Let HOLDER's nodes add their rows to DATASET (under your policy; their budgets stay theirs)."""
    with gateway_client(url, token, token_file, ca, timeout) as c:
        c.invite(dataset, holder)
    typer.echo(f"invited {holder} to {dataset}: its nodes may now declare {dataset}")


@datasets_app.command("members")
@friendly
def members(dataset: str = typer.Argument(...), url: str = URL, token: str = TOKEN, token_file: Path = TOKEN_FILE,
            ca: str = CA, timeout: float = TIMEOUT, as_json: bool = JSON) -> None:
    """The owner and members of DATASET."""
    with gateway_client(url, token, token_file, ca, timeout) as c:
        info = {"owner": as_data(c.dataset(dataset)).get("owner"), "members": as_data(c.members(dataset))}
    if as_json:
        print_json(info)
        return
    from xdp_compute.cli.jobs import when

    typer.echo(f"owner: {info['owner']}")
    print_table([{**m, "invited (UTC)": when(m.get("invited_at"))} for m in info["members"]],
                ["holder", "invited (UTC)", "invited_by"], empty="(no members)")


@datasets_app.command("list")
@friendly
def datasets_list(url: str = URL, token: str = TOKEN, token_file: Path = TOKEN_FILE, ca: str = CA,
                  timeout: float = TIMEOUT, as_json: bool = JSON) -> None:
    """The catalog: datasets, their classification, nodes and columns (metadata only)."""
    with gateway_client(url, token, token_file, ca, timeout) as c:
        catalog = as_data(c.datasets())
    if as_json:
        print_json(catalog)
        return
    rows = [{"dataset": d.get("name"), "owner": d.get("owner"), "classification": d.get("classification"),
             "nodes": [n["name"] + ("" if n.get("online") else " (offline)") for n in d.get("nodes") or []],
             "columns": [c["name"] for c in d.get("columns") or []]} for d in catalog]
    print_table(rows, ["dataset", "owner", "classification", "nodes", "columns"], empty="(no datasets)")


@datasets_app.command("revoke")
@friendly
def revoke(dataset: str = typer.Argument(...), holder: str = typer.Argument(...), url: str = URL,
           token: str = TOKEN, token_file: Path = TOKEN_FILE, ca: str = CA, timeout: float = TIMEOUT) -> None:
    """Remove HOLDER from DATASET: its nodes take part in no further job on it (its ledger stays)."""
    with gateway_client(url, token, token_file, ca, timeout) as c:
        c.revoke(dataset, holder)
    typer.echo(f"revoked {holder} from {dataset}")
