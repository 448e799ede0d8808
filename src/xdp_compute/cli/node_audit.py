"""``xdp node audit``: check this node's journal against the gateway's release log (issue #12).

``xdp node`` runs a node and takes no subcommands, so ``NodeCommand`` (the ``node`` command's
class) hands ``xdp node audit ...`` to ``audit_cli`` and runs everything else as before.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import typer
from typer.core import TyperCommand

from xdp_compute.cli import tokens

audit_cli = typer.Typer(add_completion=False)
_SUBCOMMAND = "xdp.node.audit"


@audit_cli.command()
def audit(
    manifest: Path = typer.Option(..., help="The node's manifest (TOML); its journal is in the node's state folder"),
    url: str = typer.Option(..., help="Gateway REST URL", envvar="XDP_URL"),
    token: str = tokens.token_option(),
    token_file: Path = tokens.token_file_option(),
    ca: str = tokens.ca_option(),
    timeout: float = typer.Option(120.0, "--timeout", min=0.1, help="Seconds to wait for each call to the gateway"),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document on stdout instead of lines"),
) -> None:
    """Check that every task in this node's journal appears in the gateway's release log; exit 1 naming
    each one that is missing (or logged at a lower cost than this node charged)."""
    from xdp_compute.cli.exit_codes import exit_code_for
    from xdp_compute.cli.output import as_data
    from xdp_compute.domain.manifest import load_manifest
    from xdp_compute.errors import XdpError
    from xdp_compute.node.audit import audit_journal
    from xdp_compute.node.ledger import read_journal

    try:
        m = load_manifest(manifest)
        journal = read_journal(m.state_path)
        with tokens.gateway_client(url, token, token_file, ca, timeout=timeout) as c:
            # Holders read the entries about their own datasets; auditors read the whole log.
            # (No SDK method reads /v1/nodes/log-entries yet, hence the plumbing call for holders.)
            if as_data(c.me()).get("role") == "auditor":
                entries = as_data(c.audit_entries(limit=100_000))
            else:
                entries = c._get("/v1/nodes/log-entries", params={"limit": 100_000})
    except XdpError as e:
        typer.echo(f"error: {' '.join(e.detail.split())}", err=True)
        raise typer.Exit(exit_code_for(e)) from None
    report = audit_journal(journal, entries)
    if as_json:
        import json

        typer.echo(json.dumps({"node": m.node_name, "ok": report.ok, "checked": report.checked,
                               "problems": list(report.lines())}, indent=2))
        if not report.ok:
            raise typer.Exit(1)
        return
    if report.ok:
        typer.echo(f"node {m.node_name}: all {report.checked} journal entr{'y' if report.checked == 1 else 'ies'} "
                   "appear in the release log")
        return
    typer.echo(f"node {m.node_name}: journal check FAILED ({len(report.lines())} of {report.checked}):", err=True)
    for line in report.lines():
        typer.echo(f"  - {line}", err=True)
    raise typer.Exit(1)


class NodeCommand(TyperCommand):
    """The ``node`` command, plus one subcommand: ``xdp node audit``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.epilog = ((self.epilog or "") + " Also: `xdp node audit --manifest F --url URL` checks this node's "
                       "journal against the gateway's release log.").strip()

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] == "audit":
            ctx.meta[_SUBCOMMAND] = args[1:]
            return []
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        sub = ctx.meta.pop(_SUBCOMMAND, None)
        if sub is None:
            return super().invoke(ctx)
        code = typer.main.get_command(audit_cli).main(args=sub, prog_name=f"{ctx.command_path} audit",
                                                      standalone_mode=False)
        if isinstance(code, int) and code:
            ctx.exit(code)
        return None
