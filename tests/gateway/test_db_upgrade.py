"""``xdp db upgrade`` and nothing migrating implicitly (issue #14, Deployment), on SQLite and
PostgreSQL, with real ``xdp`` processes.

Before: every open of the store ran the migrations (``xdp admin create-token`` against
production included), ``alembic upgrade head`` failed for want of an ``alembic.ini``, and there
was no ``xdp db upgrade``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from xdp_compute.cli.cluster import free_port
from xdp_compute.gateway.migrations import schema_head, schema_revisions
from xdp_compute.gateway.store import Store, make_engine, migrate

OLD = "0002"


def xdp(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("XDP_")}
    return subprocess.run([sys.executable, "-m", "xdp_compute", *args], capture_output=True, text=True, check=False,
                          timeout=120, cwd=cwd, env=env)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'gw.db'}"
    return str(request.getfixturevalue("fresh_pg_db"))


def make_old_database(url: str) -> None:
    """A gateway database as release ``OLD`` left it, holding one principal."""
    engine = make_engine(url)
    try:
        migrate(engine, OLD)
        with engine.begin() as c:
            c.execute(text("INSERT INTO principals (id, name, role, region, token_hash, created_at, expires_at, "
                           "revoked) VALUES ('p1', 'old-admin', 'admin', 'CN-FJ', :h, :t, NULL, :r)"),
                      {"h": "ab" * 32, "t": time.time(), "r": False})
    finally:
        engine.dispose()


def test_the_migrations_have_an_older_revision_to_test_with() -> None:
    revisions = schema_revisions()
    assert OLD in revisions and revisions[-1] == schema_head() != OLD


def test_upgrade_creates_an_empty_database_then_does_nothing(tmp_path: Path, db_url: str) -> None:
    r = xdp(tmp_path, "db", "upgrade", "--db", db_url, "--json")
    assert r.returncode == 0, r.stderr
    first = json.loads(r.stdout)
    assert first["from"] is None and first["to"] == schema_head() and first["changed"] is True
    r = xdp(tmp_path, "db", "upgrade", "--db", db_url, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) | {"database": None} == {"database": None, "from": schema_head(),
                                                          "to": schema_head(), "changed": False}
    store = Store.open(db_url, create=False)  # usable as it is: at the head
    try:
        assert store.create_principal("admin", "root", "CN-FJ").startswith("xdp_")
    finally:
        store.close()


def test_an_old_database_is_refused_until_upgraded_and_its_data_survive(tmp_path: Path, db_url: str) -> None:
    make_old_database(db_url)
    expected = f"database at revision {OLD}, code expects {schema_head()}: run `xdp db upgrade`"

    # xdp admin migrates nothing: it says to upgrade, in one line.
    r = xdp(tmp_path, "admin", "list-tokens", "--db", db_url)
    assert r.returncode != 0 and r.stderr.strip().splitlines() == [f"error: {expected}"], r.stderr
    # Neither does the gateway.
    r = xdp(tmp_path, "gateway", "--insecure", "--db", db_url, "--http", f"127.0.0.1:{free_port()}",
            "--grpc", f"127.0.0.1:{free_port()}")
    assert r.returncode != 0 and r.stderr.strip().splitlines() == [f"error: {expected}"], r.stderr
    r = xdp(tmp_path, "db", "current", "--db", db_url, "--json")
    assert r.returncode == 1 and json.loads(r.stdout)["revision"] == OLD, r.stdout + r.stderr

    r = xdp(tmp_path, "db", "upgrade", "--db", db_url)
    assert r.returncode == 0, r.stderr
    assert f"from {OLD} to revision {schema_head()}" in r.stdout

    r = xdp(tmp_path, "db", "current", "--db", db_url, "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["up_to_date"] is True
    r = xdp(tmp_path, "admin", "list-tokens", "--db", db_url, "--json")
    assert r.returncode == 0, r.stderr
    assert "old-admin" in [row["name"] for row in json.loads(r.stdout)]


def test_admin_never_creates_a_database(tmp_path: Path) -> None:
    typo = tmp_path / "gatewy.db"
    r = xdp(tmp_path, "admin", "create-token", "--role", "admin", "--name", "a", "--db", f"sqlite:///{typo}")
    assert r.returncode != 0 and not typo.exists()
    assert len(r.stderr.strip().splitlines()) == 1 and "no database at" in r.stderr, r.stderr
    assert "xdp_" not in r.stdout  # no token printed


def test_a_database_from_a_newer_release_is_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'gw.db'}"
    Store.open(url).close()
    engine = make_engine(url)
    with engine.begin() as c:
        c.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    engine.dispose()
    for args in (("db", "upgrade"), ("admin", "list-tokens")):
        r = xdp(tmp_path, *args, "--db", url)
        assert r.returncode != 0 and "revision 9999, unknown to this code" in r.stderr, r.stderr
