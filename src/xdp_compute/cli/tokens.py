"""Tokens on the command line without putting them on it: ``--token-file``, ``XDP_TOKEN``,
``XDP_TOKEN_FILE``; the deployment CA by ``--ca`` / ``XDP_CA``; and the admin token commands."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import typer

from xdp_compute.cli.exit_codes import UsageProblem

TOKEN_HELP = ("Bearer token. Prefer --token-file or XDP_TOKEN: a command line is visible to every "
              "user of the machine (ps, /proc)")


def token_option() -> Any:
    return typer.Option(None, "--token", envvar="XDP_TOKEN", help=TOKEN_HELP, show_envvar=True)


def token_file_option() -> Any:
    return typer.Option(None, "--token-file", envvar="XDP_TOKEN_FILE", show_envvar=True,
                        help="File holding the bearer token (mode 0600)")


def ca_option() -> Any:
    return typer.Option(None, "--ca", envvar="XDP_CA", show_envvar=True,
                        help="The deployment's CA certificate; the gateway's https certificate must chain to it")


def resolve_token(token: str | None, token_file: Path | None) -> str:
    """The token from --token / XDP_TOKEN or from --token-file / XDP_TOKEN_FILE (exactly one)."""
    from xdp_compute.sdk._tls import read_token_file

    if token and token_file:
        raise UsageProblem("give --token (XDP_TOKEN) or --token-file (XDP_TOKEN_FILE), not both")
    if token_file:
        return read_token_file(Path(token_file))
    if token:
        return token.strip()
    raise UsageProblem("no token: use --token-file FILE or set XDP_TOKEN (or XDP_TOKEN_FILE)")


def gateway_client(url: str, token: str | None, token_file: Path | None, ca: str | None, **kw: Any) -> Any:
    """An SDK ``Client`` for a CLI command (``cli.options.gateway_client`` adds the timeout)."""
    from xdp_compute import Client

    return Client(url, resolve_token(token, token_file), ca=ca, **kw)


def write_secret(path: Path, secret: str) -> None:
    """Write a token to ``path`` created mode 0600 (never world-readable, not even briefly)."""
    import os

    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
    os.chmod(path, 0o600)


def _when(ts: float | None) -> str:
    return "never" if ts is None else dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def register(admin_app: typer.Typer, friendly: Any) -> None:
    """Add list-tokens, revoke-token and rotate-token to ``xdp admin``."""

    def _store(db: str | None) -> Any:
        from xdp_compute.config import Settings
        from xdp_compute.gateway.store import Store

        return Store.open(db or Settings().db_url, create=False)  # never starts a new database

    @admin_app.command("list-tokens")
    @friendly
    def list_tokens(db: str = typer.Option(None, help="SQLAlchemy URL of the gateway's database"),
                    as_json: bool = typer.Option(False, "--json", help="JSON instead of a table")) -> None:
        """Principals and the state of their tokens (active, expired, revoked). Never prints a secret."""
        from xdp_compute.gateway.tokens import list_tokens as _list

        store = _store(db)
        try:
            rows = _list(store)
        finally:
            store.close()
        if as_json:
            typer.echo(json.dumps(rows, indent=2))
            return
        typer.echo(f"{'name':<32} {'role':<8} {'region':<8} {'status':<8} {'created':<20} expires")
        for r in rows:
            typer.echo(f"{r['name']:<32} {r['role']:<8} {r['region']:<8} {r['status']:<8} "
                       f"{_when(r['created_at']):<20} {_when(r['expires_at'])}")

    @admin_app.command("revoke-token")
    @friendly
    def revoke_token(name: str = typer.Option(..., help="The principal whose token to revoke"),
                     db: str = typer.Option(None, help="SQLAlchemy URL of the gateway's database")) -> None:
        """Revoke a principal's token for good: REST answers 401, gRPC UNAUTHENTICATED from now on."""
        from xdp_compute.gateway.tokens import revoke_token as _revoke

        store = _store(db)
        try:
            changed = _revoke(store, name)
        finally:
            store.close()
        typer.echo(f"revoked the token of {name!r}" if changed else f"{name!r} was already revoked")

    @admin_app.command("rotate-token")
    @friendly
    def rotate_token(name: str = typer.Option(..., help="The principal whose token to replace"),
                     db: str = typer.Option(None, help="SQLAlchemy URL of the gateway's database"),
                     expires_days: float = typer.Option(None, help="Expire after this many days (0: never; "
                                                                   "default 90 for analysts, never otherwise)"),
                     out: Path = typer.Option(None, help="Write the new token to this file (0600) instead of stdout")
                     ) -> None:
        """Issue a new secret for a principal and revoke the old one at once (same principal, budget, nodes)."""
        from xdp_compute.gateway.tokens import rotate_token as _rotate

        store = _store(db)
        try:
            token = _rotate(store, name, expires_days=expires_days)
        finally:
            store.close()
        if out:
            write_secret(out, token)
            typer.echo(f"new token of {name!r} written to {out}; the old one no longer works")
        else:
            typer.echo(token)
