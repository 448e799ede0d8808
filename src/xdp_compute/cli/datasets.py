"""``xdp datasets``: the owner of a dataset invites, lists and revokes the holders who add rows to it."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import typer

from xdp_compute.errors import XdpError

datasets_app = typer.Typer(no_args_is_help=True, help="Dataset owners: invite, list and revoke members.")

URL = typer.Option(..., envvar="XDP_URL", help="Gateway REST URL")
TOKEN = typer.Option(None, envvar="XDP_TOKEN", help="Your holder token (prefer XDP_TOKEN or --token-file)")
TOKEN_FILE = typer.Option(None, envvar="XDP_TOKEN_FILE", help="A file holding your token")
CA = typer.Option(None, envvar="XDP_CA", help="The deployment's CA certificate (https:// gateways)")


def _client(url: str, token: str | None, token_file: Path | None, ca: str | None) -> Any:
    from xdp_compute import Client

    if token is None and token_file is not None:
        token = token_file.read_text().strip()
    if not token:
        raise typer.BadParameter("give a token: XDP_TOKEN, --token-file or --token")
    return Client(url, token, **({"ca": ca} if ca else {}))


def _friendly(fn: Any) -> Any:
    """As ``cli.main.friendly`` (not imported: main imports this module): one line, exit 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except XdpError as e:
            typer.echo(f"error: {e.detail}", err=True)
            raise typer.Exit(2) from None

    return wrapper


@datasets_app.command("invite")
@_friendly
def invite(dataset: str = typer.Argument(..., help="Your dataset"),
           holder: str = typer.Argument(..., help="The holder (principal name) to invite"),
           url: str = URL, token: str = TOKEN, token_file: Path = TOKEN_FILE, ca: str = CA) -> None:
    """Let HOLDER's nodes add their rows to DATASET (under your policy; their budgets stay theirs)."""
    with _client(url, token, token_file, ca) as c:
        c.invite(dataset, holder)
    typer.echo(f"invited {holder} to {dataset}: its nodes may now declare {dataset}")


@datasets_app.command("members")
@_friendly
def members(dataset: str = typer.Argument(...), url: str = URL, token: str = TOKEN, token_file: Path = TOKEN_FILE,
            ca: str = CA) -> None:
    """The owner and members of DATASET."""
    with _client(url, token, token_file, ca) as c:
        info = {"owner": c.dataset(dataset).get("owner"), "members": c.members(dataset)}
    typer.echo(json.dumps(info, indent=2))


@datasets_app.command("revoke")
@_friendly
def revoke(dataset: str = typer.Argument(...), holder: str = typer.Argument(...), url: str = URL,
           token: str = TOKEN, token_file: Path = TOKEN_FILE, ca: str = CA) -> None:
    """Remove HOLDER from DATASET: its nodes take part in no further job on it (its ledger stays)."""
    with _client(url, token, token_file, ca) as c:
        c.revoke(dataset, holder)
    typer.echo(f"revoked {holder} from {dataset}")
