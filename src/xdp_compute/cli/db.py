"""``xdp db``: the gateway database's schema, for operators (upgrade, current revision).

Nothing else migrates: the gateway and ``xdp admin`` refuse a database at an older revision and
say to run ``xdp db upgrade``. Alembic is configured in code (the migrations ship in the
package), so no ``alembic.ini`` is needed.
"""

from __future__ import annotations

import json
from typing import Any

import typer

DB_OPTION_HELP = "SQLAlchemy URL of the gateway's database (default XDP_DB, else sqlite:///./.xdp/gateway.db)"


def _url(db: str | None) -> str:
    from xdp_compute.config import Settings

    return db or Settings().db_url


def register(friendly: Any) -> typer.Typer:
    """The ``xdp db`` group, its commands wrapped by the CLI's error handler."""
    db_app = typer.Typer(no_args_is_help=True, help="Operators: the gateway database's schema (migrations).")

    @db_app.command("upgrade")
    @friendly
    def upgrade(db: str = typer.Option(None, help=DB_OPTION_HELP),
                as_json: bool = typer.Option(False, "--json", help="JSON instead of a sentence")) -> None:
        """Run the schema migrations up to the revision this release expects (creates an empty
        SQLite file if its directory exists). Safe to run again: at the newest revision it does nothing."""
        from xdp_compute.gateway.migrations import safe_url
        from xdp_compute.gateway.store import upgrade_database

        url = _url(db)
        before, after = upgrade_database(url)
        if as_json:
            typer.echo(json.dumps({"database": safe_url(url), "from": before, "to": after,
                                   "changed": before != after}))
        elif before == after:
            typer.echo(f"database already at revision {after}; nothing to do")
        else:
            typer.echo(f"database upgraded from {before or 'empty'} to revision {after}")

    @db_app.command("current")
    @friendly
    def current(db: str = typer.Option(None, help=DB_OPTION_HELP),
                as_json: bool = typer.Option(False, "--json", help="JSON instead of a sentence")) -> None:
        """The database's schema revision and the one this release expects; exits 1 when they differ."""
        from xdp_compute.gateway.migrations import safe_url, schema_head, schema_state
        from xdp_compute.gateway.store import make_engine

        url = _url(db)
        engine = make_engine(url, create=False)
        try:
            revision, _ = schema_state(engine)
        finally:
            engine.dispose()
        head = schema_head()
        if as_json:
            typer.echo(json.dumps({"database": safe_url(url), "revision": revision, "expected": head,
                                   "up_to_date": revision == head}))
        else:
            typer.echo(f"database at revision {revision or 'none (empty)'}; this release expects {head}"
                       + ("" if revision == head else ": run `xdp db upgrade`"))
        if revision != head:
            raise typer.Exit(1)

    return db_app
