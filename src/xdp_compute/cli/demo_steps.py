"""The demo's walkthrough steps after the catalog: joint statistics, HE, training, audit."""

from __future__ import annotations

from typing import Any

from rich.console import Console

from xdp_compute.cli.cluster import LocalCluster
from xdp_compute.cli.output import as_data

JOINT_SQL = ("SELECT district, COUNT(*) AS patients, AVG(cost) AS avg_cost, AVG(stay_days) AS avg_stay "
             "FROM patients WHERE age > 60 GROUP BY district")


def joint_statistics(console: Console, analyst: Any) -> None:
    console.rule("[bold]3. Analyst: joint statistics over three hospitals (DP + secure aggregation)")
    console.print(f"  SQL: {JOINT_SQL}")
    plan = as_data(analyst.query(JOINT_SQL, epsilon=1.0, dry_run=True))
    console.print(f"  dry run: cost epsilon={plan['cost']['epsilon']:.4g}, delta={plan['cost']['delta']:.2g}; "
                  f"decisions: {', '.join(sorted({d['rule'] for d in plan['decisions']}))} -> "
                  f"{'allowed' if plan['allowed'] else 'denied'}")
    r = analyst.query(JOINT_SQL, epsilon=1.0, idempotency_key="demo-joint-1")
    console.print(r.table())
    console.print(f"  spent epsilon={r.epsilon:.4g}; nodes {', '.join(r.nodes)}; no node revealed its partial, "
                  "the gateway saw only the noisy total")
    again = analyst.query(JOINT_SQL, epsilon=1.0, idempotency_key="demo-joint-1")
    console.print(f"  idempotent retry returns the same answer: {again.rows == r.rows}")


def he_steps(console: Console, cluster: LocalCluster, tokens: dict[str, str], analyst: Any) -> None:
    console.rule("[bold]4. Analyst: homomorphic encryption — answers even the operator cannot read")
    sql = "SELECT district, COUNT(*) AS patients, AVG(stay_days) AS avg_stay FROM patients GROUP BY district"
    r = analyst.query(sql, epsilon=0.5, encrypt=True)
    console.print(f"  encrypted delivery (Paillier, {r.delivery['result']['key_fingerprint'][:12]}..., packed): "
                  "nodes encrypted their masked partials; the gateway added ciphertexts and removed the masks")
    console.print(r.table())
    console.print("  scoring a private risk model w: the gateway releases DP per-group feature sums and the SDK "
                  "applies w locally, so w never leaves the analyst")
    s = analyst.score("patients", features=["age", "stay_days"], weights=[0.03, 0.12], bias=-2.0,
                      group_by=["chronic"], epsilon=0.5)
    console.print(s.table(3))


def training_steps(console: Console, cluster: LocalCluster, tokens: dict[str, str], analyst: Any) -> None:
    from xdp_compute.sdk.training import print_card

    console.rule("[bold]5. ML team: differentially private federated training over the three hospitals")
    console.print("  submitting a DP logistic regression (4 rounds); each round runs DP-SGD on every node ...")
    job = analyst.train("patients", model="logreg", features=["age", "stay_days", "chronic"], label="readmitted",
                        rounds=4, target_epsilon=2.0)
    job.wait(progress=True)
    print_card(job.model_card(), out=console.file)
    console.print(f"  released model: {job.model()}")


def audit_steps(console: Console, cluster: LocalCluster, tokens: dict[str, str]) -> None:
    from xdp_compute.sdk.audit import verify_remote

    console.rule("[bold]6. Auditor: the release log, verified")
    with cluster.client(tokens["auditor"]) as auditor:
        entries = as_data(auditor.audit_entries())
        for e in entries:
            cost = (e.get("privacy_cost") or {}).get("epsilon")
            console.print(f"  #{e['index']:<3} {e['kind']:<17} {e.get('operation') or '':<10} "
                          f"{e.get('principal') or '':<24} eps={'' if cost is None else f'{cost:.3g}':<6} "
                          f"payload={(e.get('payload_digest') or '-')[:16]}")
        # The nodes witness the log; an auditor pins their keys once (here straight from the gateway,
        # in a deployment checked with each holder) and needs a majority of fresh cosignatures.
        from xdp_compute.audit.witnessed import default_quorum
        from xdp_compute.sdk.audit import fetch_witnesses, load_witnesses, save_witnesses

        pins = cluster.root / "auditor-witnesses.txt"
        save_witnesses(pins, fetch_witnesses(auditor))
        pinned = load_witnesses(pins)
        report, checkpoint = verify_remote(auditor, cluster.root / "auditor-checkpoint.json", witnesses=pinned,
                                           max_age=600, wait=20)
        console.print(f"  verified: {report.ok}; {report.tree_size} entries; root {report.root_hash.hex()[:32]}...; "
                      f"every signed tree head checked; cosigned by a quorum of {default_quorum(len(pinned))} "
                      f"of {len(pinned)} node witnesses; checkpoint saved")
        for problem in report.problems:
            console.print(f"  [red]{problem}[/red]")
        meter = as_data(auditor.metering())
        for who, m in meter["per_analyst"].items():
            console.print(f"  metering {who}: {int(m['jobs'])} jobs, epsilon {m['epsilon_spent']:.3g}, "
                          f"{int(m['cells_released'])} cells, {m['compute_seconds']:.2f}s compute")


def run_all(console: Console, cluster: LocalCluster, tokens: dict[str, str], analyst: Any) -> None:
    """Each capability adds its step here."""
    joint_statistics(console, analyst)
    he_steps(console, cluster, tokens, analyst)
    training_steps(console, cluster, tokens, analyst)
    audit_steps(console, cluster, tokens)
