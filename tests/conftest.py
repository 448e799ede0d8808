"""Shared fixtures: an in-process gateway app over a temp SQLite store, and the manifest of the docs."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")

EXAMPLE_MANIFEST = """
[node]
name = "{node}"
region = "{region}"

[[datasets]]
name = "patients"
source = "patients.csv"
classification = "sensitive"
categories = ["health"]
epsilon_budget = {budget}
delta = 1e-6
min_group_size = {min_group}
require_approval = {approval}

[datasets.columns]
age      = {{ type = "int",      min = 0, max = 120,       uses = ["aggregate", "filter"] }}
income   = {{ type = "float",    min = 0, max = 500000,    uses = ["aggregate"] }}
district = {{ type = "category", values = ["Siming", "Huli", "Jimei"], uses = ["group", "filter"] }}
name     = {{ type = "text",     uses = [] }}
"""


def example_manifest(node: str = "siming-hospital", region: str = "CN-FJ", budget: float = 10.0,
                     min_group: int = 10, approval: bool = False) -> str:
    return EXAMPLE_MANIFEST.format(node=node, region=region, budget=budget, min_group=min_group,
                                   approval="true" if approval else "false")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[object]:
    from xdp_compute.gateway.store import Store

    s = Store.open(f"sqlite:///{tmp_path / 'gw.db'}")
    yield s
    s.close()


@pytest.fixture
def services(store: object) -> object:
    from xdp_compute.config import Settings
    from xdp_compute.gateway.services import Services

    return Services(settings=Settings(db_url="sqlite://", max_body_bytes=1 << 20), store=store)  # type: ignore[arg-type]


@pytest.fixture
def api(services: object) -> Iterator[object]:
    from fastapi.testclient import TestClient

    from xdp_compute.gateway.app import create_app

    app = create_app(services.settings, services)  # type: ignore[attr-defined]
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def _pg_bin() -> Path | None:
    import glob
    import shutil

    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(candidates[-1]).parent if candidates else None


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A PostgreSQL server: XDP_TEST_PG_URL (CI starts one), else a throwaway local server."""
    import pwd
    import shutil
    import socket
    import subprocess
    import tempfile
    from typing import Any

    url = os.environ.get("XDP_TEST_PG_URL")
    if url:
        yield url
        return
    bindir = _pg_bin()
    if bindir is None:
        pytest.skip("no XDP_TEST_PG_URL and no PostgreSQL server binaries (initdb) installed")
    run_as: dict[str, Any] = {}
    tmp = Path(tempfile.mkdtemp(prefix="xdp-pg-"))
    if os.geteuid() == 0:
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(tmp, ignore_errors=True)
            pytest.skip("running as root and there is no 'postgres' user to run a throwaway server as")
        os.chown(tmp, pw.pw_uid, pw.pw_gid)
        run_as = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
    data = tmp / "data"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"PATH": os.environ.get("PATH", ""), "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
    try:
        subprocess.run([str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                        "--no-sync"], check=True, capture_output=True, timeout=120, env=env, cwd=tmp, **run_as)
        subprocess.run([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(tmp / "log"), "-w", "-t", "60",
                        "-o", f"-p {port} -k {tmp} -c listen_addresses=127.0.0.1 -c fsync=off", "start"],
                       check=True, capture_output=True, timeout=90, env=env, cwd=tmp, **run_as)
    except (subprocess.SubprocessError, OSError) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        pytest.skip(f"could not start a throwaway PostgreSQL server: {type(e).__name__}")
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                       capture_output=True, timeout=60, env=env, cwd=tmp, check=False, **run_as)
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def fresh_pg_db(pg_url: str) -> Iterator[str]:
    """A new, empty PostgreSQL database for one test."""
    import uuid

    import psycopg

    name = "xdp_" + uuid.uuid4().hex[:12]
    with psycopg.connect(pg_url, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    base = pg_url.rsplit("/", 1)[0]
    yield f"{base}/{name}"
    with psycopg.connect(pg_url, autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def stalled_port() -> Iterator[int]:
    """A loopback TCP port that accepts connections and never answers a byte (a stalled gateway)."""
    import socket
    import threading

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        srv.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(srv.accept()[0])
            except OSError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield srv.getsockname()[1]
    stop.set()
    t.join(5)
    for c in held:
        c.close()
    srv.close()
