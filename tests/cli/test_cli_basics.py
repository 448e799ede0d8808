"""The ``xdp`` command line without a cluster (issue #14 item 4): version, completion, the shared
client options and their environment variables, the exit-code table, and no hang or traceback
against a gateway that refuses connections or never answers."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

import typer

from xdp_compute import errors as E
from xdp_compute.cli.exit_codes import EXIT_CODE_MEANINGS, ExitCode, UsageProblem, WaitTimedOut, exit_code_for
from xdp_compute.cli.main import app

XDP = str(Path(sys.executable).with_name("xdp"))
CLIENT_OPTIONS = {"--url", "--token", "--token-file", "--ca", "--timeout"}
# Commands that print data take --json; the rest only say what they did.
DATA_COMMANDS = {"query", "train", "budget", "jobs list", "jobs show", "audit verify", "audit witnesses",
                 "audit entries", "approvals list", "approvals approve", "approvals deny", "datasets members",
                 "datasets list", "nodes list", "admin list-tokens", "admin create-token"}
# Commands that run a process or act on the gateway's database rather than call its REST API.
LOCAL_COMMANDS = {"gateway", "node", "demo", "admin create-token", "admin list-tokens", "admin revoke-token",
                  "admin rotate-token", "admin pki init", "admin pki issue", "db upgrade", "db current", "db status"}


def xdp(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("XDP_")}
    return subprocess.run([XDP, *args], capture_output=True, text=True, env={**clean, **(env or {})},
                          timeout=timeout, check=False)


def leaf_commands() -> dict[str, Any]:
    out: dict[str, Any] = {}

    def walk(cmd: Any, path: str) -> None:
        if hasattr(cmd, "commands"):  # a group (typer vendors its own click)
            for name, sub in cmd.commands.items():
                walk(sub, f"{path} {name}".strip())
        else:
            out[path] = cmd

    walk(typer.main.get_command(app), "")
    return out


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_version_matches_the_installed_distribution() -> None:
    r = xdp("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"xdp {version('xdp-compute')}", r


def test_no_arguments_prints_help_not_a_traceback() -> None:
    r = xdp()
    assert "Usage: xdp" in r.stdout + r.stderr and "Traceback" not in r.stderr
    assert "query" in r.stdout and "jobs" in r.stdout


def test_shell_completion_script() -> None:
    r = xdp("--show-completion", "bash", env={"SHELL": "/bin/bash"})
    assert r.returncode == 0 and "_XDP_COMPLETE=complete_bash" in r.stdout, r


def test_every_client_command_takes_the_shared_options_and_data_commands_take_json() -> None:
    commands = leaf_commands()
    assert {"jobs list", "jobs show", "budget", "audit entries"} <= set(commands)
    for path, cmd in commands.items():
        opts = {o for p in cmd.params for o in getattr(p, "opts", [])}
        if path not in LOCAL_COMMANDS:
            assert CLIENT_OPTIONS <= opts, f"xdp {path} lacks {CLIENT_OPTIONS - opts}"
            envvars = {p.name: p.envvar for p in cmd.params}
            assert envvars.get("url") == "XDP_URL" and envvars.get("token") == "XDP_TOKEN", path
            assert envvars.get("token_file") == "XDP_TOKEN_FILE" and envvars.get("ca") == "XDP_CA", path
        if path in DATA_COMMANDS:
            assert "--json" in opts, f"xdp {path} prints data but has no --json"


def test_delta_help_states_what_the_gateway_uses() -> None:
    from xdp_compute.gateway.query_service import DEFAULT_DELTA_FRACTION

    r = xdp("query", "--help", env={"COLUMNS": "300"})
    assert f"{DEFAULT_DELTA_FRACTION:.1%}" in r.stdout, r.stdout


def test_exit_code_table() -> None:
    assert len({int(c) for c in ExitCode}) == len(ExitCode) and set(EXIT_CODE_MEANINGS) == set(ExitCode)
    assert ExitCode.USAGE == 2  # click's own usage-error code
    cases = {E.PolicyDenied("x"): ExitCode.DENIED, E.BudgetExhausted("x"): ExitCode.BUDGET,
             E.Unauthorized("x"): ExitCode.AUTH, E.Forbidden("x"): ExitCode.AUTH,
             E.NotFound("x"): ExitCode.NOT_FOUND, E.InvalidQuery("x"): ExitCode.INVALID,
             E.PayloadTooLarge("x"): ExitCode.INVALID, E.Conflict("x"): ExitCode.CONFLICT,
             E.ProtocolAborted("x"): ExitCode.FAILED, E.ProofError("x"): ExitCode.FAILED,
             UsageProblem("x"): ExitCode.USAGE, WaitTimedOut("x"): ExitCode.UNREACHABLE}
    for err, code in cases.items():
        assert exit_code_for(err) == code, (err, code)


def test_a_transport_failure_is_unreachable_whatever_the_sdk_raises() -> None:
    import httpx

    class GatewayTimeout(E.XdpError):  # the SDK's typed shape
        pass

    assert exit_code_for(GatewayTimeout("timed out")) == ExitCode.UNREACHABLE
    try:
        try:
            raise httpx.ConnectError("refused")
        except httpx.ConnectError:
            raise E.XdpError("cannot reach the gateway") from None  # the SDK's older shape
    except E.XdpError as e:
        assert exit_code_for(e) == ExitCode.UNREACHABLE


def test_xdp_url_is_read_and_a_refused_connection_is_unreachable(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    r = xdp("jobs", "list", env={"XDP_URL": url, "XDP_TOKEN": "t"})
    assert r.returncode == ExitCode.UNREACHABLE, r
    assert r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1 and url in r.stderr, r.stderr
    assert "Missing option" not in r.stderr and "Traceback" not in r.stderr


def test_missing_url_and_missing_token_are_usage_errors(tmp_path: Path) -> None:
    r = xdp("budget", "visits", env={"XDP_TOKEN": "t"})
    assert r.returncode == ExitCode.USAGE and "--url" in r.stderr, r
    r = xdp("budget", "visits", "--url", "http://127.0.0.1:1")
    assert r.returncode == ExitCode.USAGE and r.stderr.strip().startswith("error: no token"), r
    r = xdp("budget", "visits", "--no-such-option")
    assert r.returncode == ExitCode.USAGE


def test_a_stalled_gateway_times_out_with_one_line(stalled_port: int) -> None:
    stalled_gateway = f"http://127.0.0.1:{stalled_port}"
    r = xdp("query", "--url", stalled_gateway, "--token", "t", "--epsilon", "1", "--timeout", "1",
            "SELECT COUNT(*) AS n FROM visits", timeout=60)  # a hang fails here, not in CI's global timeout
    assert r.returncode == ExitCode.UNREACHABLE, r
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in r.stderr, r.stderr
    r = xdp("jobs", "list", "--json", "--timeout", "1", env={"XDP_URL": stalled_gateway, "XDP_TOKEN": "t"})
    assert r.returncode == ExitCode.UNREACHABLE and r.stdout == "", r


def test_nodes_left_out_or_dropped_and_a_lower_epsilon_are_stated() -> None:
    from types import SimpleNamespace

    from xdp_compute.cli.query import result_notes

    decisions = [{"rule": "budget", "allowed": True, "node": n, "reason": "ok"} for n in ("a", "b", "c")]
    decisions.append({"rule": "participation", "allowed": True, "node": "d",
                      "reason": "member node 'd' does not take part: its budget is spent"})
    r = SimpleNamespace(epsilon=0.5, nodes=["a", "c"], receipt={"entry": {"policy_decisions": decisions}})
    notes = result_notes(r, 0.5)
    assert any("'d' does not take part" in n for n in notes)
    assert any(n.startswith("node(s) b dropped out of secure aggregation") for n in notes), notes
    assert not any("ε lowered" in n for n in notes)
    r = SimpleNamespace(epsilon=13.5, nodes=["a", "b", "c"], receipt={"entry": {"policy_decisions": decisions[:3]}})
    assert result_notes(r, 100.0) == [result_notes(r, 100.0)[0]] and "from 100 to 13.5" in result_notes(r, 100.0)[0]


def test_an_invalid_epsilon_is_refused_before_anything_is_sent() -> None:
    url = f"http://127.0.0.1:{closed_port()}"  # nothing listens: a request would exit UNREACHABLE
    r = xdp("query", "--url", url, "--token", "t", "--epsilon", "nan", "SELECT COUNT(*) AS n FROM visits")
    assert r.returncode == ExitCode.INVALID and "epsilon" in r.stderr, r
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    r = xdp("query", "--url", url, "--token", "t", "--epsilon", "abc", "SELECT COUNT(*) AS n FROM visits")
    assert r.returncode == ExitCode.USAGE, r
