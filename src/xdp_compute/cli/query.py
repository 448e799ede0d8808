"""What ``xdp query`` does once it holds a client: dry run, submit, wait (saying for what), print.

Everything the gateway decided that the analyst did not ask for is stated as a ``note:`` on
stderr: a lower ε than requested (the noise floor), nodes left out or dropped from secure
aggregation. Waiting lines go to stderr too, so ``--json`` stdout is one document.
"""

from __future__ import annotations

import time
from typing import Any

import typer

from xdp_compute.cli.exit_codes import WaitTimedOut
from xdp_compute.cli.output import as_data, epsilon_note, note, print_json, waiting

FINISHED = ("released", "denied", "failed")


def run_query(c: Any, sql: str, *, epsilon: float, delta: float | None, dry_run: bool, encrypt: bool,
              idempotency_key: str | None, timeout: float, as_json: bool,
              subscription: str | None = None) -> None:
    under = {"subscription": subscription} if subscription else {}  # data exchange (issue #17)
    if dry_run:
        plan = as_data(c.query(sql, epsilon=epsilon, delta=delta, dry_run=True, encrypt=encrypt,
                               idempotency_key=idempotency_key, **under))
        notes = plan_notes(plan, epsilon)
        for n in notes:
            note(n)
        if as_json:
            print_json({**plan, "requested_epsilon": epsilon, "notes": notes})
        else:
            print_plan(plan)
        return
    from xdp_compute.sdk.join import reads_two_datasets

    # A private join's answer is always delivered encrypted under the analyst's key (issue #16).
    encrypt = encrypt or reads_two_datasets(sql)
    if encrypt:  # the SDK keeps the Paillier key and decrypts; it waits for the job itself
        r = c.query(sql, epsilon=epsilon, delta=delta, encrypt=True, idempotency_key=idempotency_key,
                    wait=timeout)
    else:
        submitted = as_data(c.submit_query(sql, epsilon=epsilon, delta=delta, idempotency_key=idempotency_key,
                                           **under))
        r = wait_for_result(c, submitted, timeout)
    notes = result_notes(r, epsilon)
    for n in notes:
        note(n)
    if as_json:
        print_json(result_document(r, epsilon, notes))
        return
    typer.echo(r.table())
    typer.echo(f"\nspent epsilon={r.epsilon:.6g} delta={r.delta:.3g}; intervals are {r.level:.0%}; "
               "budget left: " + ", ".join(f"{k}={v:.6g}" for k, v in sorted(r.remaining.items())))


def waiting_line(job: dict[str, Any]) -> str:
    """What a job waits for, from its status at the gateway (names the holders when it says them)."""
    jid, status = job.get("job_id"), job.get("status")
    if status == "awaiting_approval":
        holders = job.get("awaiting")
        who = f" by {', '.join(map(str, holders))}" if holders else " by the dataset's holders"
        return f"job {jid} awaits approval{who} (`xdp approvals approve {jid}`); nothing is computed until then"
    progress = job.get("progress")
    extra = f" ({', '.join(f'{k}={v}' for k, v in progress.items())})" if isinstance(progress, dict) else ""
    what = "for its nodes" if status in ("reserved", "running") else ""
    return f"job {jid} {status}{' ' + what if what else ''}{extra}"


def wait_for_result(c: Any, job: dict[str, Any], timeout: float) -> Any:
    """Poll a submitted job until it ends, printing a waiting line whenever its state changes."""
    deadline = time.monotonic() + timeout
    job_id, last = job["job_id"], None
    while job.get("status") not in FINISHED:
        line = waiting_line(job)
        if line != last:
            waiting(line)
            last = line
        if time.monotonic() > deadline:
            raise WaitTimedOut(f"job {job_id} is still {job.get('status')} after --timeout {timeout:g} s; it keeps "
                               f"waiting at the gateway: `xdp jobs show {job_id}`")
        time.sleep(0.25)
        job = as_data(c.job(job_id))
    # The SDK turns a denied or failed job into its typed error (PolicyDenied, ProtocolAborted).
    return c.result(job_id, wait=max(deadline - time.monotonic(), 1.0))


def plan_notes(plan: dict[str, Any], requested: float) -> list[str]:
    out = []
    spent = (plan.get("cost") or {}).get("epsilon")
    if isinstance(spent, (int, float)):
        n = epsilon_note(requested, float(spent))
        if n:
            out.append(n.replace("only the lower ε is charged", "only the lower ε would be charged"))
    out += [d["reason"] for d in plan.get("decisions") or [] if d.get("rule") == "participation"]
    return out


def result_notes(r: Any, requested: float) -> list[str]:
    out = []
    n = epsilon_note(requested, float(r.epsilon))
    if n:
        out.append(n)
    receipt = as_data(r.receipt) or {}
    decisions = (receipt.get("entry") or {}).get("policy_decisions") or []
    out += [d["reason"] for d in decisions if d.get("rule") == "participation"]
    planned = {d["node"] for d in decisions if d.get("rule") == "budget" and d.get("allowed") and d.get("node")}
    survivors = set(r.nodes or [])
    dropped = sorted(planned - survivors) if survivors else []
    if dropped:
        out.append(f"node(s) {', '.join(dropped)} dropped out of secure aggregation; the answer sums the rows of "
                   f"the {len(survivors)} that finished ({', '.join(sorted(survivors))}), and every node that "
                   "took part was charged")
    return out


def result_document(r: Any, requested: float, notes: list[str]) -> dict[str, Any]:
    """A released answer as one JSON document."""
    return {"job_id": r.job_id, "columns": list(r.columns), "rows": as_data(r.rows),
            "intervals": as_data(r.intervals), "level": r.level, "epsilon": r.epsilon, "delta": r.delta,
            "requested_epsilon": requested, "nodes": list(r.nodes or []), "budget_left": as_data(r.remaining),
            "notes": notes, "receipt": as_data(r.receipt)}


def print_plan(plan: dict[str, Any]) -> None:
    """A dry run as readable lines: where it would run, what it would cost, what policy says."""
    p = plan.get("plan") or {}
    cost = plan.get("cost") or {}
    typer.echo(f"dry run of a {plan.get('operation', 'query')} on {plan.get('dataset')}: nothing computed, "
               "nothing charged")
    typer.echo(f"  nodes     {', '.join(p.get('nodes') or []) or '-'} ({p.get('parties', '?')} parties, "
               f"secure-aggregation threshold {p.get('secagg_threshold_nodes', p.get('threshold', '?'))})")
    groups = p.get("group_columns") or []
    typer.echo(f"  cells     {p.get('cells', '?')}" + (f" (GROUP BY {', '.join(groups)})" if groups else ""))
    typer.echo(f"  cost      epsilon={cost.get('epsilon', float('nan')):.6g} delta={cost.get('delta', float('nan')):.3g}")
    for alias, err in (plan.get("expected_error") or {}).items():
        typer.echo(f"  error     {alias}: ±{err.get('halfwidth_all_nodes', float('nan')):.4g} with every node, "
                   f"±{err.get('halfwidth_threshold_nodes', float('nan')):.4g} with the threshold "
                   f"({plan.get('level', 0.95):.0%})")
    typer.echo("  policy")
    for d in plan.get("decisions") or []:
        where = f" [{d['node']}]" if d.get("node") else ""
        typer.echo(f"    {'ok    ' if d.get('allowed') else 'DENIED'} {d.get('rule')}{where}: {d.get('reason')}")
    typer.echo("would run" if plan.get("allowed") else "would be DENIED (see the policy lines above)")
