"""What an operator can get wrong when starting ``xdp gateway`` (issue #14, Settings): each is one
line naming the problem and a non-zero exit, from real ``xdp gateway`` processes.

Before: a bad XDP_* value was a 38-line traceback that never named the variable, a PostgreSQL
that was down 422 lines, a typo'd SQLite directory was created silently, and a second gateway on
a busy gRPC port started and shared the port with the first (gRPC's SO_REUSEPORT).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from xdp_compute.cli.cluster import LocalCluster, free_port


def gateway(tmp_path: Path, *args: str, env: dict[str, str] | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``xdp gateway --insecure ARGS`` to completion (it must fail to start)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("XDP_")}
    return subprocess.run([sys.executable, "-m", "xdp_compute", "gateway", "--insecure", *args],
                          capture_output=True, text=True, timeout=timeout, cwd=tmp_path, check=False,
                          env={**base, **(env or {})})


def one_line(r: subprocess.CompletedProcess[str]) -> str:
    """The failed start's stderr, which must be a single line and no traceback."""
    assert r.returncode not in (0, None), r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1, r.stderr
    return lines[0]


def ports() -> list[str]:
    return ["--http", f"127.0.0.1:{free_port()}", "--grpc", f"127.0.0.1:{free_port()}"]


@pytest.mark.parametrize(("var", "value"), [("XDP_ROUND_TIMEOUT", "abc"), ("XDP_HTTP_PORT", "eighty"),
                                            ("XDP_SECAGG_DROPOUT_RATE", "1.5"), ("XDP_MAX_BODY_BYTES", "-1")])
def test_a_bad_setting_names_its_variable_in_one_line(tmp_path: Path, var: str, value: str) -> None:
    r = gateway(tmp_path, "--db", f"sqlite:///{tmp_path / 'gw.db'}", *ports(), env={var: value})
    line = one_line(r)
    assert line.startswith("error: ") and var in line and repr(value) in line, line
    assert not (tmp_path / "gw.db").exists()  # stopped before opening anything


def test_a_missing_sqlite_directory_is_one_line_and_is_not_created(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "dir"
    line = one_line(gateway(tmp_path, "--db", f"sqlite:///{missing / 'x.db'}", *ports()))
    assert str(missing) in line and "does not exist" in line, line
    assert not (tmp_path / "no").exists()


def test_an_unreachable_postgresql_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    line = one_line(gateway(tmp_path, "--db", f"postgresql://u:hunter2@127.0.0.1:{port}/x", *ports()))
    assert "cannot reach the database" in line and f"127.0.0.1:{port}" in line, line
    assert "hunter2" not in line  # never the password


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    cluster = LocalCluster(root=tmp_path_factory.mktemp("first"))
    cluster.start_gateway()
    yield cluster
    cluster.close()


@pytest.mark.slow
@pytest.mark.parametrize("which", ["http", "grpc"])
def test_a_second_gateway_on_a_busy_port_exits_with_one_line(running: LocalCluster, tmp_path: Path,
                                                              which: str) -> None:
    http = running.http_port if which == "http" else free_port()
    grpc = running.grpc_port if which == "grpc" else free_port()
    r = gateway(tmp_path, "--db", f"sqlite:///{tmp_path / 'gw2.db'}", "--http", f"127.0.0.1:{http}",
                "--grpc", f"127.0.0.1:{grpc}")
    line = one_line(r)
    busy = http if which == "http" else grpc
    assert f"127.0.0.1:{busy}" in line and "in use" in line, line
    assert ("REST" if which == "http" else "gRPC") in line
    assert running.procs["gateway"].alive()  # the first one keeps its ports


def test_grpc_server_refuses_to_share_its_port() -> None:
    """The node server itself is built without SO_REUSEPORT: a second gRPC server (or anything
    else) cannot bind the port it holds."""
    import asyncio
    from unittest.mock import MagicMock

    from xdp_compute.gateway.grpc_service import build_server

    async def main() -> tuple[int, int]:
        first = build_server(MagicMock(), 1 << 20)
        port = first.add_insecure_port("127.0.0.1:0")
        await first.start()
        try:
            second = build_server(MagicMock(), 1 << 20)
            try:
                again = second.add_insecure_port(f"127.0.0.1:{port}")
            except RuntimeError:
                again = 0
            return port, again
        finally:
            await first.stop(None)

    port, again = asyncio.run(main())
    assert port > 0 and again == 0
