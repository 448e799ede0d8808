"""The demo's walkthrough steps after the catalog: joint statistics, HE, training, audit."""

from __future__ import annotations

from typing import Any

from rich.console import Console

from xdp_compute.cli.cluster import LocalCluster

JOINT_SQL = ("SELECT district, COUNT(*) AS patients, AVG(cost) AS avg_cost, AVG(stay_days) AS avg_stay "
             "FROM patients WHERE age > 60 GROUP BY district")


def joint_statistics(console: Console, analyst: Any) -> None:
    console.rule("[bold]3. Analyst: joint statistics over three hospitals (DP + secure aggregation)")
    console.print(f"  SQL: {JOINT_SQL}")
    plan = analyst.query(JOINT_SQL, epsilon=1.0, dry_run=True)
    console.print(f"  dry run: cost epsilon={plan['cost']['epsilon']:.4g}, delta={plan['cost']['delta']:.2g}; "
                  f"decisions: {', '.join(sorted({d['rule'] for d in plan['decisions']}))} -> "
                  f"{'allowed' if plan['allowed'] else 'denied'}")
    r = analyst.query(JOINT_SQL, epsilon=1.0, idempotency_key="demo-joint-1")
    console.print(r.table())
    console.print(f"  spent epsilon={r.epsilon:.4g}; nodes {', '.join(r.nodes)}; no node revealed its partial, "
                  "the gateway saw only the noisy total")
    again = analyst.query(JOINT_SQL, epsilon=1.0, idempotency_key="demo-joint-1")
    console.print(f"  idempotent retry returns the same answer: {again.rows == r.rows}")


def run_all(console: Console, cluster: LocalCluster, tokens: dict[str, str], analyst: Any) -> None:
    """Each capability adds its step here."""
    joint_statistics(console, analyst)
