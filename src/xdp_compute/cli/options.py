"""The options every client command shares (gateway URL, token, CA, timeout, --json) and the SDK
client they build. Each reads its environment variable, so scripts set them once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from xdp_compute.cli import tokens

DEFAULT_TIMEOUT = 120.0

URL = typer.Option(..., "--url", envvar="XDP_URL", show_envvar=True,
                   help="Gateway REST URL, e.g. https://gateway.example:8000; replicas: a comma-separated list "
                        "(a call moves to the next when one cannot be reached)")
TOKEN = tokens.token_option()
TOKEN_FILE = tokens.token_file_option()
CA = tokens.ca_option()
TIMEOUT = typer.Option(DEFAULT_TIMEOUT, "--timeout", min=0.1,
                       help="Seconds to wait for the gateway: for each call, and in all for a job to finish "
                            "(a job that waits longer keeps waiting at the gateway; `xdp jobs show ID`)")
JSON = typer.Option(False, "--json", help="Print one JSON document on stdout instead of tables")


def gateway_client(url: str, token: str | None, token_file: Path | None, ca: str | None,
                   timeout: float = DEFAULT_TIMEOUT, **kw: Any) -> Any:
    """An SDK ``Client`` for a client command (the token from exactly one of its sources)."""
    from xdp_compute import Client

    return Client(url, tokens.resolve_token(token, token_file), ca=ca, timeout=timeout, **kw)
