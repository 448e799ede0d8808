"""``xdp`` against a real gateway and real nodes (issue #14 item 4): ``--json`` of every data command
parses, exit codes tell a denial, a usage error, a bad token, an unreachable gateway, a missing job
and bad SQL apart, the ε the noise floor lowers is stated, and a job waiting for approval says so.

Before: ``--dry-run`` and ``approvals list`` printed raw JSON and nothing else had ``--json``; every
failure exited 2; XDP_URL was ignored; ``--epsilon 100`` silently spent less; a job waiting for
approval printed nothing; the demo listed audit entries through the SDK's private ``_get``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))
from e2e_helpers import Hospitals, start_hospitals

from xdp_compute.cli.exit_codes import ExitCode

pytestmark = pytest.mark.slow
XDP = str(Path(sys.executable).with_name("xdp"))
SQL = "SELECT clinic, COUNT(*) AS n, AVG(cost) AS avg_cost FROM visits GROUP BY clinic"


def run(h: Hospitals, who: str, *args: str, env: dict[str, str] | None = None,
        timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``xdp ARGS`` as principal ``who``: the URL and token from the environment, as scripts set them."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("XDP_")}
    base = {"XDP_URL": h.cluster.url, "XDP_TOKEN": h.tokens[who]} if who else {}
    return subprocess.run([XDP, *args], capture_output=True, text=True, timeout=timeout, check=False,
                          env={**clean, **base, **(env or {})})


def parsed(r: subprocess.CompletedProcess[str]) -> object:
    assert r.returncode == 0, (r.args, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    return json.loads(r.stdout)


@pytest.fixture(scope="module")
def h(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hospitals]:
    # No colluding parties tolerated: both nodes' noise shares count, which puts the per-node noise
    # floor within reach (a count's ε cannot exceed ~18 here, whatever is asked).
    # Each analyst may spend ε=3 in all, so one test can exhaust a fresh analyst's budget.
    hs = start_hospitals(tmp_path_factory.mktemp("cli"), n=2, rows=200,
                         gateway_env={"XDP_MAX_COLLUDING_NODES": "0", "XDP_ANALYST_EPSILON_BUDGET": "3"})
    yield hs
    hs.cluster.close()


def test_json_output_of_every_data_command_parses(h: Hospitals, tmp_path: Path) -> None:
    q = parsed(run(h, "analyst", "query", "--epsilon", "0.5", "--json", SQL))
    assert isinstance(q, dict) and q["columns"] == ["clinic", "n", "avg_cost"] and len(q["rows"]) == 3
    assert q["epsilon"] <= 0.5 and q["notes"] == [] and q["receipt"]["log_index"] >= 0
    plan = parsed(run(h, "analyst", "query", "--epsilon", "0.5", "--dry-run", "--json", SQL))
    assert isinstance(plan, dict) and plan["dry_run"] is True and plan["allowed"] is True

    jobs = parsed(run(h, "analyst", "jobs", "list", "--json"))
    assert isinstance(jobs, dict) and q["job_id"] in [j["job_id"] for j in jobs["jobs"]]
    job = parsed(run(h, "analyst", "jobs", "show", q["job_id"], "--json"))
    assert isinstance(job, dict) and job["status"] == "released"
    budget = parsed(run(h, "analyst", "budget", "visits", "--json"))
    assert isinstance(budget, dict) and {n["node"] for n in budget["nodes"]} == {"clinic-0", "clinic-1"}
    assert budget["analyst"]["epsilon_spent"] == pytest.approx(q["epsilon"])

    entries = parsed(run(h, "auditor", "audit", "entries", "--kind", "released", "--json"))
    assert isinstance(entries, list) and q["job_id"] in [e["job_id"] for e in entries]
    verified = parsed(run(h, "auditor", "audit", "verify", "--json"))
    assert isinstance(verified, dict) and verified["ok"] is True and verified["tree_size"] >= 1
    witnesses = parsed(run(h, "auditor", "audit", "witnesses", "--save", str(tmp_path / "w.txt"), "--json"))
    assert isinstance(witnesses, dict) and witnesses["witnesses"]

    members = parsed(run(h, "clinic-0", "datasets", "members", "visits", "--json"))
    assert isinstance(members, dict) and members["owner"] == "clinic-0-holder"
    catalog = parsed(run(h, "analyst", "datasets", "list", "--json"))
    assert isinstance(catalog, list) and [d["name"] for d in catalog] == ["visits"]
    nodes = parsed(run(h, "admin", "nodes", "list", "--json"))
    assert isinstance(nodes, list) and {n["name"] for n in nodes} == {"clinic-0", "clinic-1"}
    approvals = parsed(run(h, "clinic-0", "approvals", "list", "--json"))
    assert approvals == []
    tokens = parsed(run(h, "", "admin", "list-tokens", "--db", h.cluster.db_url, "--json"))
    assert isinstance(tokens, list) and "analyst" in {t["name"] for t in tokens}
    assert all("token" not in t for t in tokens)
    created = parsed(run(h, "", "admin", "create-token", "--role", "auditor", "--name", "json-auditor",
                         "--db", h.cluster.db_url, "--json"))
    assert isinstance(created, dict) and created["name"] == "json-auditor" and created["token"]


def test_human_output_is_tables_not_json(h: Hospitals) -> None:
    r = run(h, "analyst", "query", "--epsilon", "0.5", "--dry-run", SQL)
    assert r.returncode == 0 and r.stdout.startswith("dry run of a query on visits"), r
    assert "would run" in r.stdout and not r.stdout.lstrip().startswith("{")
    r = run(h, "analyst", "jobs", "list")
    assert r.returncode == 0 and "released" in r.stdout and not r.stdout.lstrip().startswith("{"), r


def test_exit_codes_tell_failures_apart(h: Hospitals) -> None:
    denied = run(h, "analyst", "query", "--epsilon", "5", SQL)  # above the datasets' per-query cap of 2
    usage = run(h, "analyst", "query", "--epsilon", SQL)  # --epsilon swallows the SQL: no SQL argument
    bad_token = run(h, "analyst", "jobs", "list", env={"XDP_TOKEN": "not-a-token"})
    missing = run(h, "analyst", "jobs", "show", "0" * 32)
    bad_sql = run(h, "analyst", "query", "--epsilon", "0.5", "SELECT * FROM visits")
    with __import__("socket").socket() as s:
        s.bind(("127.0.0.1", 0))
        unreachable = run(h, "analyst", "jobs", "list", env={"XDP_URL": f"http://127.0.0.1:{s.getsockname()[1]}"})
    got = {"denied": denied.returncode, "usage": usage.returncode, "auth": bad_token.returncode,
           "not found": missing.returncode, "invalid": bad_sql.returncode, "unreachable": unreachable.returncode}
    assert got == {"denied": ExitCode.DENIED, "usage": ExitCode.USAGE, "auth": ExitCode.AUTH,
                   "not found": ExitCode.NOT_FOUND, "invalid": ExitCode.INVALID,
                   "unreachable": ExitCode.UNREACHABLE}, (got, denied.stderr, bad_token.stderr, bad_sql.stderr)
    for r in (denied, bad_token, missing, bad_sql, unreachable):
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in r.stderr, r.stderr
    assert "epsilon_cap" in denied.stderr and "SELECT *" in bad_sql.stderr


def test_an_exhausted_budget_exits_with_its_own_code(h: Hospitals) -> None:
    h.tokens["frugal"] = h.cluster.token("analyst", "frugal")
    assert run(h, "frugal", "query", "--epsilon", "2", SQL).returncode == 0
    r = run(h, "frugal", "query", "--epsilon", "2", SQL)  # 1 of the analyst's 3 left
    assert r.returncode == ExitCode.BUDGET and r.stderr.startswith("error: "), (r.returncode, r.stderr)
    assert len(r.stderr.strip().splitlines()) == 1


def test_epsilon_lowered_by_the_noise_floor_is_stated(h: Hospitals) -> None:
    r = run(h, "analyst", "query", "--epsilon", "100", "--dry-run", "--json",
            "SELECT clinic, COUNT(*) AS n FROM visits GROUP BY clinic")
    plan = parsed(r)
    assert isinstance(plan, dict)
    spent = plan["cost"]["epsilon"]
    assert spent < 50  # the floor, not the 100 asked
    assert f"note: ε lowered from 100 to {spent:.4g}" in r.stderr, r.stderr
    assert plan["notes"] and plan["requested_epsilon"] == 100
    r = run(h, "analyst", "query", "--epsilon", "1", "--dry-run", "SELECT clinic, COUNT(*) AS n FROM visits "
                                                                  "GROUP BY clinic")
    assert r.returncode == 0 and "note:" not in r.stderr, r.stderr


def test_a_node_dialling_the_rest_port_gives_up_with_a_hint(h: Hospitals, tmp_path: Path) -> None:
    src = h.cluster.root / "clinic-0"  # a copy under another name: its own state folder
    (tmp_path / "visits.csv").write_bytes((src / "visits.csv").read_bytes())
    manifest = tmp_path / "node.toml"
    manifest.write_text((src / "node.toml").read_text().replace('name = "clinic-0"', 'name = "stray"'))
    rest = h.cluster.url.split("://", 1)[1]
    r = subprocess.run([XDP, "node", "--gateway", rest, "--manifest", str(manifest), "--insecure",
                        "--no-preload"], capture_output=True, text=True, timeout=120, check=False,
                       env={**os.environ, "XDP_TOKEN": h.tokens["clinic-0"]})
    assert r.returncode != 0 and "looks like an HTTP server" in r.stderr and "50051" in r.stderr, r.stderr[-2000:]
    assert "Traceback" not in r.stderr


@pytest.fixture(scope="module")
def approving(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hospitals]:
    hs = start_hospitals(tmp_path_factory.mktemp("cli-approval"), n=2, rows=200, approval={"clinic-0"})
    yield hs
    hs.cluster.close()


def _pending(h: Hospitals, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    with h.cluster.client(h.tokens["clinic-0"]) as holder:
        while time.monotonic() < deadline:
            waiting = [a for a in holder.approvals() if a["your_decision"] == "pending"]
            if waiting:
                return str(waiting[0]["job_id"])
            time.sleep(0.2)
    raise AssertionError("no job reached the holder's approvals")


def test_a_job_waiting_for_approval_says_so_and_a_holders_denial_exits_denied(approving: Hospitals) -> None:
    h = approving
    env = {k: v for k, v in os.environ.items() if not k.startswith("XDP_")}
    env |= {"XDP_URL": h.cluster.url, "XDP_TOKEN": h.tokens["analyst"]}
    cmd = [XDP, "query", "--epsilon", "0.5", "--json", "--timeout", "120", SQL]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        job = _pending(h)
        approve = run(h, "clinic-0", "approvals", "approve", job, "--reason", "within the research agreement")
        assert approve.returncode == 0, approve.stderr
        out, err = p.communicate(timeout=120)
    finally:
        p.kill()
    assert p.returncode == 0, err
    with h.cluster.client(h.tokens["clinic-0"]) as holder:  # the approver's reason is kept with the decision
        (mine,) = [a for a in holder.approvals() if a["job_id"] == job]
    assert mine["your_decision"] == "approved" and mine["reason"] == "within the research agreement"
    assert f"waiting: job {job} awaits approval by clinic-0-holder" in err, err
    assert json.loads(out)["job_id"] == job  # waiting lines stay out of the JSON on stdout

    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        job = _pending(h)
        deny = run(h, "clinic-0", "approvals", "deny", job, "--reason", "not this quarter")
        assert deny.returncode == 0, deny.stderr
        out, err = p.communicate(timeout=120)
    finally:
        p.kill()
    assert p.returncode == ExitCode.DENIED and out == "", (p.returncode, err)
    assert err.strip().splitlines()[-1].startswith("error: ") and "Traceback" not in err

    # --timeout bounds the wait: the job keeps waiting at the gateway and the CLI says where to look.
    r = run(h, "analyst", "query", "--epsilon", "0.5", "--timeout", "1", SQL)
    assert r.returncode == ExitCode.UNREACHABLE and "xdp jobs show" in r.stderr, r.stderr
    assert "waiting: job" in r.stderr


def test_demo_audit_step_lists_entries_through_the_public_sdk(h: Hospitals) -> None:
    import io

    from rich.console import Console

    from xdp_compute.cli import demo_steps

    run(h, "analyst", "query", "--epsilon", "0.5", SQL)  # at least one released entry to list
    out = io.StringIO()
    demo_steps.audit_steps(Console(file=out, width=200), h.cluster, {"auditor": h.tokens["auditor"]})
    text = out.getvalue()
    assert "released" in text and "query" in text and "verified: True" in text, text
    assert "_get" not in Path(demo_steps.__file__).read_text()
