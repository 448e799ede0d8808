"""The gateway's schema revisions (Alembic, configured in code: no alembic.ini).

Nothing migrates implicitly: ``Store.open`` checks the revision (``check_schema``) and refuses a
database at an older one; operators run ``xdp db upgrade`` (``upgrade_database``). Only a brand-new
empty database is initialised in place, on the gateway's first start.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path
from typing import Any

from sqlalchemy import inspect
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, InterfaceError, OperationalError, SQLAlchemyError

from xdp_compute.errors import XdpError

log = logging.getLogger("xdp.gateway.db")


class DatabaseUnavailable(XdpError):
    """The database cannot be reached or opened (server down, missing directory, no database)."""

    status, slug, title = 503, "database-unavailable", "Database unavailable"


class SchemaOutdated(XdpError):
    """The database's schema revision is not the one this code expects: ``xdp db upgrade``."""

    status, slug, title = 503, "database-outdated", "Database schema outdated"


def safe_url(url: str) -> str:
    """The URL without its password (for messages and logs)."""
    try:
        return make_url(url).render_as_string(hide_password=True).replace("+psycopg://", "://", 1)
    except ArgumentError:
        return "<unparseable database URL>"


MIGRATIONS = Path(__file__).parent  # this package: env.py and versions/


def _alembic_config() -> Any:
    """Alembic configured in code: the migrations ship in the package, no alembic.ini."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def schema_head() -> str:
    """The schema revision this code expects."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    assert head is not None
    return head


def schema_revisions() -> list[str]:
    """Every known revision, oldest first."""
    from alembic.script import ScriptDirectory

    return [s.revision for s in reversed(list(ScriptDirectory.from_config(_alembic_config()).walk_revisions()))]


def _first_line(e: BaseException) -> str:
    orig = getattr(e, "orig", None) or e
    text = str(orig).strip().splitlines()
    return text[0].strip() if text else type(orig).__name__


def schema_state(engine: Engine) -> tuple[str | None, bool]:
    """(revision stamped in the database or None, whether it holds any table). Raises
    ``DatabaseUnavailable`` with one line when the database cannot be reached."""
    from alembic.runtime.migration import MigrationContext

    # Alembic logs its dialect at INFO on every configure: noise for a check that changes nothing.
    quiet = logging.getLogger("alembic.runtime.migration")
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    try:
        with engine.connect() as conn:
            revision = MigrationContext.configure(conn).get_current_revision()
            tables = bool(inspect(conn).get_table_names())
    except (SQLAlchemyError, sqlite3.Error, OSError) as e:
        raise DatabaseUnavailable(f"cannot reach the database {safe_url(str(engine.url))}: "
                                  f"{_first_line(e)}") from None
    finally:
        quiet.setLevel(level)
    return revision, tables


def migrate(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to ``revision`` (the newest by default): for ``xdp db upgrade`` and for
    initialising a brand-new database, never implicitly for one in use."""
    from alembic import command

    cfg = _alembic_config()
    try:
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
    except (SQLAlchemyError, sqlite3.Error, OSError) as e:
        if isinstance(e, (OperationalError, InterfaceError)) and "connect" in str(e).lower():
            raise DatabaseUnavailable(f"cannot reach the database {safe_url(str(engine.url))}: "
                                      f"{_first_line(e)}") from None
        raise


def check_schema(engine: Engine, *, initialise: bool) -> str:
    """Refuse a database this code cannot use as it is; initialise an empty one if allowed.

    An empty database (no table, no revision) is brought to the head when ``initialise``; one at
    an older revision raises ``SchemaOutdated`` (``xdp db upgrade``); a revision this code does
    not know (a newer release wrote it) raises too. Returns the revision.
    """
    head = schema_head()
    revision, tables = schema_state(engine)
    if revision == head:
        return head
    url = safe_url(str(engine.url))
    if revision is None and not tables:
        if not initialise:
            raise DatabaseUnavailable(f"the database {url} is empty: start the gateway on it once, or run "
                                      "`xdp db upgrade`")
        migrate(engine)
        log.info("initialised the empty database %s at schema revision %s", url, head)
        return head
    if revision is None:
        raise SchemaOutdated(f"the database {url} holds tables but no xdp schema revision: it is not an "
                             "xdp gateway database")
    if revision in schema_revisions():
        raise SchemaOutdated(f"database at revision {revision}, code expects {head}: run `xdp db upgrade`")
    raise SchemaOutdated(f"database at revision {revision}, unknown to this code (expects {head}): a newer "
                         "release wrote it; run that release")
