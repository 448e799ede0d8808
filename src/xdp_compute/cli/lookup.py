"""``xdp lookup PRODUCT KEY``: one hidden lookup (issue #17; docs/hidden-lookup.md).

Prints the record's columns, or ``not found`` and exits 7 (``NOT_FOUND``, as for a 404: scripts
branch on it; with ``--json`` the document says ``"found": false`` either way). Every other
failure exits with its code from ``cli/exit_codes.py``.
"""

from __future__ import annotations

from pathlib import Path

import typer

from xdp_compute.cli.exit_codes import ExitCode, friendly
from xdp_compute.cli.options import CA, JSON, TIMEOUT, TOKEN, TOKEN_FILE, URL, gateway_client
from xdp_compute.cli.output import note, print_json, print_table


@friendly
def lookup(product: str = typer.Argument(..., help="The lookup product's id (xdp products list)"),
           key: str = typer.Argument(..., help="The key to look up; it never leaves this machine (a blinded "
                                               "point does)"),
           columns: str = typer.Option(None, "--columns", help="Comma-separated columns to show (default: all "
                                                               "the product returns)"),
           url: str = URL, token: str = TOKEN, token_file: Path = TOKEN_FILE, ca: str = CA,
           timeout: float = TIMEOUT, as_json: bool = JSON) -> None:
    """Look up KEY's record in PRODUCT without the holder or the gateway learning KEY or whether it
    matched. Counts one call under your subscription. Exit 7 when the holder has no record for KEY.
    Not differentially private: a lookup releases one record, only on datasets whose owner opted in."""
    wanted = [c.strip() for c in columns.split(",") if c.strip()] if columns else None
    with gateway_client(url, token, token_file, ca, timeout) as c:
        result = c.lookup(product, key, columns=wanted)
    if as_json:
        print_json(result.to_dict())
    elif result.found:
        print_table([{"column": k, "value": v} for k, v in (result.record or {}).items()], ["column", "value"])
    else:
        typer.echo("not found")
    note(f"log entry {result.log_index}; {result.calls_left:g} calls left")
    if not result.found:
        raise typer.Exit(ExitCode.NOT_FOUND)
