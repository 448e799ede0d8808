"""The demo's walkthrough steps after the catalog: joint statistics, a holder's approval, HE, training and
using the released model, audit."""

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


APPROVAL_SQL = ("SELECT drug, COUNT(*) AS prescriptions, AVG(monthly_cost) AS avg_monthly_cost "
                "FROM prescriptions GROUP BY drug")


def approval_steps(console: Console, cluster: LocalCluster, tokens: dict[str, str], analyst: Any) -> None:
    """A job on a dataset that requires approval: it waits, the owner's holder approves it, it runs."""
    from xdp_compute.cli.demo_data import DISTRICTS, HOSPITALS

    owner_node = HOSPITALS[DISTRICTS[0]]
    console.rule("[bold]4. Data holder: approving a job on a dataset that requires approval")
    console.print(f"  SQL: {APPROVAL_SQL}")
    submitted = as_data(analyst.submit_query(APPROVAL_SQL, epsilon=0.5, idempotency_key="demo-approval-1"))
    console.print(f"  submitted job {submitted['job_id']}: {submitted['status']} — 'prescriptions' requires its "
                  "owner's approval, so nothing is computed yet")
    with cluster.client(tokens[owner_node]) as holder:
        me = as_data(holder.me())
        pending = [a for a in as_data(holder.approvals())
                   if a["job_id"] == submitted["job_id"] and a["your_decision"] == "pending"]
        for a in pending:
            console.print(f"  {me['name']} sees: {a['operation']} by {a['principal']!r}; cost "
                          f"epsilon={a['cost'].get('epsilon', 0):.3g}, delta={a['cost'].get('delta', 0):.2g}; "
                          f"plan {({k: v for k, v in a['plan_summary'].items() if k != 'sql'})}")
            for d in a["decisions"]:
                console.print(f"    decision {d['rule']}: {'allowed' if d['allowed'] else 'DENIED'} — {d['reason']}")
            decision = as_data(holder.approve(a["job_id"]))
            console.print(f"  {me['name']} approves job {a['job_id']}: {decision['decision']}")
    r = analyst.result(submitted["job_id"])
    console.print(r.table())
    console.print(f"  released after approval; spent epsilon={r.epsilon:.4g}; the log entry names the approver")


def he_steps(console: Console, cluster: LocalCluster, tokens: dict[str, str], analyst: Any) -> None:
    console.rule("[bold]5. Analyst: homomorphic encryption — answers even the operator cannot read")
    sql = "SELECT district, COUNT(*) AS patients, AVG(stay_days) AS avg_stay FROM patients GROUP BY district"
    console.print(f"  SQL: {sql}")
    r = analyst.query(sql, epsilon=0.5, encrypt=True)
    console.print(f"  encrypted delivery (Paillier, {r.delivery['result']['key_fingerprint'][:12]}..., packed): "
                  "nodes encrypted their masked partials; the gateway added ciphertexts and removed the masks")
    console.print(r.table())
    console.print("  scoring a private risk model w: the gateway releases DP per-group feature sums and the SDK "
                  "applies w locally, so w never leaves the analyst")
    console.print("  released aggregates: SELECT chronic, COUNT(*), SUM(age), SUM(stay_days) FROM patients GROUP BY chronic "
                  "(w = [0.03, 0.12], bias -2.0, applied by the SDK)")
    s = analyst.score("patients", features=["age", "stay_days"], weights=[0.03, 0.12], bias=-2.0,
                      group_by=["chronic"], epsilon=0.5)
    console.print(s.table(3))


TRAIN_FEATURES = ["age", "stay_days", "chronic", "cost"]


def training_steps(console: Console, cluster: LocalCluster, tokens: dict[str, str], analyst: Any) -> None:
    """The ML team (its own principal) trains a DP model, reads its card and uses it on raw values."""
    import csv
    import io

    from xdp_compute.cli.demo_data import synthetic_patients
    from xdp_compute.sdk.training import print_card

    console.rule("[bold]6. ML team: differentially private federated training over the three hospitals")
    console.print("  submitting a DP logistic regression (4 rounds) as 'hospital-ml-team'; each round runs "
                  "DP-SGD on every node ...")
    with cluster.client(tokens["ml"]) as ml:
        job = ml.train("patients", model="logreg", features=TRAIN_FEATURES, label="readmitted", rounds=4,
                       target_epsilon=2.0)
        job.wait(progress=True)
        print_card(job.model_card(), out=console.file)
        model = job.predictor()
        console.print(f"  released model: {model!r}")
        # Raw values as a hospital's export has them; the predictor applies the declared encoding.
        fresh = list(csv.DictReader(io.StringIO(synthetic_patients("Huli", 400, seed=999))))
        rows = [{f: r[f] for f in TRAIN_FEATURES} for r in fresh]
        console.print(_rows_table(rows[:4], model.predict_proba(rows[:4])[:, 1], model.predict(rows[:4])))
        acc = float((model.predict(rows) == [r["readmitted"] for r in fresh]).mean())
        console.print(f"  accuracy of predict() on 400 fresh synthetic patients' raw rows: {acc:.3f}")
        path = model.export(cluster.root / "readmission.onnx")
        console.print(f"  exported to {path.name} (ONNX): input is one float row per patient "
                      f"({', '.join(model.feature_names)}; categories as the index of their declared value)")
        try:
            import onnxruntime as ort
        except ImportError:
            return
        out = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
            None, {"input": model.onnx_inputs(rows[:4])})
        console.print(f"  onnxruntime alone gives P(readmitted=yes) {[round(float(p), 4) for p in out[0][:, 1]]}")


def _rows_table(rows: list[dict[str, Any]], p_yes: Any, predicted: Any) -> Any:
    from rich.table import Table

    t = Table(title="  predict() on raw rows", title_justify="left")
    for c in [*rows[0], "P(readmitted=yes)", "predicted"]:
        t.add_column(c)
    for r, p, y in zip(rows, p_yes, predicted, strict=True):
        t.add_row(*[str(v) for v in r.values()], f"{float(p):.4f}", str(y))
    return t


def audit_steps(console: Console, cluster: LocalCluster, tokens: dict[str, str]) -> None:
    from xdp_compute.sdk.audit import verify_remote

    console.rule("[bold]7. Auditor: the release log, verified")
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
        report, _checkpoint = verify_remote(auditor, cluster.root / "auditor-checkpoint.json", witnesses=pinned,
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
    if "prescriptions" in {d.name for d in analyst.datasets()}:
        approval_steps(console, cluster, tokens, analyst)
    he_steps(console, cluster, tokens, analyst)
    training_steps(console, cluster, tokens, analyst)
    audit_steps(console, cluster, tokens)
