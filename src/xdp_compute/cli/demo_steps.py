"""The demo's walkthrough steps after the catalog: joint statistics, a holder's approval, HE, training and
using the released model, a private join of two holders' datasets, the data exchange (asset, product,
subscription, metered query), hidden lookups, settlement and statements, audit. Public SDK calls only."""

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

    console.rule("[bold]11. Auditor: the release log, verified (every entry above, the new kinds too)")
    with cluster.client(tokens["auditor"]) as auditor:
        entries = as_data(auditor.audit_entries())
        for e in entries:
            cost = (e.get("privacy_cost") or {}).get("epsilon")
            console.print(f"  #{e['index']:<3} {e['kind']:<20} {e.get('operation') or '':<14} "
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


# ---------------------------------------------------------------- private joins, exchange, lookups (#16, #17)
JOIN_SQL = ("SELECT h.ward, COUNT(*) AS people, AVG(i.claim) AS avg_claim "
            "FROM admissions h JOIN claims i ON h.citizen = i.citizen GROUP BY h.ward")
CLAIMS_SQL = "SELECT tier, COUNT(*) AS claims FROM claims GROUP BY tier"


def start_insurer(cluster: LocalCluster, tokens: dict[str, str]) -> None:
    """Launch a second holder's node (the insurer, its own principal) and the Siming hospital's admissions
    node; they dial in and register while the training step runs (``private_join_steps`` waits for them)."""
    from xdp_compute.cli.demo_data import (
        ADMISSIONS,
        ADMISSIONS_NODE,
        DISTRICTS,
        HOSPITALS,
        INSURER,
        INSURER_HOLDER,
        INSURER_NODE,
        JOIN_MAX_ROWS,
        JOIN_SIDES,
        LOOKUP_CAPACITY,
        synthetic_join_sides,
        synthetic_policies,
    )

    tokens["insurer"] = cluster.token("holder", INSURER_HOLDER)
    admissions, claims = synthetic_join_sides(**JOIN_SIDES)
    hospital = HOSPITALS[DISTRICTS[0]]
    ma = cluster.write_node_files(ADMISSIONS_NODE, ADMISSIONS.format(node=ADMISSIONS_NODE, max_rows=JOIN_MAX_ROWS),
                                  {"admissions.csv": admissions})
    mi = cluster.write_node_files(INSURER_NODE, INSURER.format(node=INSURER_NODE, max_rows=JOIN_MAX_ROWS,
                                                               capacity=LOOKUP_CAPACITY),
                                  {"claims.csv": claims, "policies.csv": synthetic_policies(200, seed=301)})
    cluster.start_node(ADMISSIONS_NODE, tokens[hospital], ma)
    cluster.start_node(INSURER_NODE, tokens["insurer"], mi)


def private_join_steps(console: Console, cluster: LocalCluster, tokens: dict[str, str], analyst: Any) -> None:
    """Two holders' datasets sharing the ``citizen-id`` join domain, joined without either seeing the other's keys."""
    import time

    from xdp_compute.cli.demo_data import (
        ADMISSIONS_NODE,
        DISTRICTS,
        HOSPITALS,
        INSURER_HOLDER,
        INSURER_NODE,
        JOIN_SIDES,
        join_truth,
        synthetic_join_sides,
    )

    console.rule("[bold]7. Analyst: a private join of two holders' datasets (ECDH double blinding + Paillier)")
    cluster.wait_online(tokens["admin"], [ADMISSIONS_NODE, INSURER_NODE], timeout=300)
    console.print(f"  {HOSPITALS[DISTRICTS[0]]}-holder runs {ADMISSIONS_NODE} (dataset 'admissions', 44 rows); a "
                  f"second holder, {INSURER_HOLDER!r}, runs {INSURER_NODE} ('claims', 40 rows; 'policies', 200 rows)")
    for ds in (analyst.dataset("admissions"), analyst.dataset("claims")):
        keys = [f"{c['name']} ({c['join_domain']})" for c in ds.columns if c.get("join_domain")]
        console.print(f"  catalog: {ds.name!r} (owner {ds.owner}) on {', '.join(n.name for n in ds.nodes)}; "
                      f"join key {', '.join(keys)}")
    console.print(f"  SQL: {JOIN_SQL}")
    plan = as_data(analyst.query(JOIN_SQL, epsilon=8.0, dry_run=True))
    console.print(f"  dry run: {plan['operation']} over {', '.join(plan['datasets'])}; indicators from "
                  f"{plan['plan']['indicator_side']['dataset']!r}, values from {plan['plan']['value_side']['dataset']!r}; "
                  f"cost epsilon={plan['cost']['epsilon']:.4g} on each dataset")
    started = time.monotonic()
    r = analyst.query(JOIN_SQL, epsilon=8.0, idempotency_key="demo-join-1")
    took = time.monotonic() - started
    console.print(r.table())
    truth = join_truth(*synthetic_join_sides(**JOIN_SIDES))
    console.print("  plaintext truth (only the demo, which wrote both files, can compute it): " + "; ".join(
        f"{w} {n} people, mean claim {m:,.2f}" for w, (n, m) in truth.items()))
    console.print(f"  private join released in {took:.1f}s (keys padded to max_rows on each side); delivered "
                  f"encrypted under the analyst's Paillier key; spent epsilon={r.epsilon:.4g} on both ledgers; "
                  "the gateway saw blinded tags only, neither holder learned which of its rows matched")


def exchange_steps(console: Console, cluster: LocalCluster, tokens: dict[str, str], analyst: Any) -> str:
    """The insurer registers ``claims`` as an asset and sells queries on it; returns the billing period."""
    from datetime import UTC, datetime

    from xdp_compute.cli.demo_data import INSURER_HOLDER

    console.rule("[bold]8. Data exchange: an asset, a query product, a subscription, a metered query")
    with cluster.client(tokens["insurer"]) as owner:
        v = owner.register_asset("claims", "Insurance claims of Xiamen residents, 2026", "DP aggregates only",
                                 grade="L2")
        console.print(f"  {INSURER_HOLDER} registers asset 'claims' version {v.version} (log #{v.index}): content "
                      f"commitment {v.content_commitment[:16]}..., metadata commitment {v.metadata_commitment[:16]}...")
        product = owner.create_product("claims", "query", "Claims per tier", unit_price=100.0, allowance=1.0,
                                       shapes={"aggregates": ["count"], "group_by": ["tier"]})
        console.print(f"  {INSURER_HOLDER} lists query product {product.id} {product.title!r}: {product.unit_price:g} "
                      f"per {product.unit}, allowance {product.allowance_per_subscriber:g} per subscriber; from now "
                      "on queries on 'claims' need a subscription")
        sub = analyst.subscribe(product.id)
        console.print(f"  health-bureau-analyst subscribes: {sub.id} {sub.status}")
        sub = owner.approve_subscription(sub.id)
        console.print(f"  {INSURER_HOLDER} approves subscription {sub.id}: {sub.status}")
    console.print(f"  SQL: {CLAIMS_SQL}  (under subscription {sub.id})")
    r = analyst.query(CLAIMS_SQL, epsilon=0.4, subscription=sub.id)
    console.print(r.table())
    charge = r.delivery["receipt"]["entry"]["subscription"]
    console.print(f"  metered on release: {charge['units']:g} epsilon, amount {charge['amount_micros'] / 1e6:.2f}, "
                  f"period {charge['period']}")
    return datetime.now(UTC).strftime("%Y-%m")


def lookup_steps(console: Console, cluster: LocalCluster, tokens: dict[str, str], analyst: Any) -> None:
    """A hidden lookup on the insurer's opted-in ``policies``: one present key, one absent."""
    from xdp_compute.cli.demo_data import INSURER_HOLDER, LOOKUP_ABSENT, LOOKUP_CAPACITY, LOOKUP_PRESENT

    console.rule("[bold]9. Analyst: hidden lookups (not DP: one record, exactly) on an opted-in dataset")
    with cluster.client(tokens["insurer"]) as owner:
        product = owner.create_product("policies", "lookup", "Policy tier by citizen id", unit_price=0.5,
                                       allowance=10, columns=["tier", "premium"])
        console.print(f"  'policies' is opted in (\\[datasets.lookup], capacity {LOOKUP_CAPACITY}); {INSURER_HOLDER} "
                      f"lists lookup product {product.id}: {product.unit_price:g} per {product.unit}")
        sub = analyst.subscribe(product.id)
        owner.approve_subscription(sub.id)
        console.print(f"  health-bureau-analyst subscribes ({sub.id}); {INSURER_HOLDER} approves")
    hit = analyst.lookup(product.id, LOOKUP_PRESENT)
    console.print(f"  lookup {LOOKUP_PRESENT}: " + (f"found {hit.record}" if hit.found else "not found")
                  + f" (log #{hit.log_index})")
    miss = analyst.lookup(product.id, LOOKUP_ABSENT)
    console.print(f"  lookup {LOOKUP_ABSENT}: " + (f"found {miss.record}" if miss.found else "not found")
                  + f" (log #{miss.log_index}); {miss.calls_left:g} calls left")
    console.print(f"  {INSURER_HOLDER}'s node saw neither key, nor whether it matched: only a blinded point per "
                  "call; the log entries name the call, not the key")


def settlement_steps(console: Console, cluster: LocalCluster, tokens: dict[str, str], period: str) -> None:
    """The operator settles the period; each party reads its own statement."""
    console.rule(f"[bold]10. Data exchange: settling {period}, each party's statement")
    with cluster.client(tokens["admin"]) as admin:
        issued = admin.settle(period)
    console.print(f"  city-data-office settles {period}: {len(issued)} statements written to the release log")
    for who in ("analyst", "insurer"):
        with cluster.client(tokens[who]) as party:
            for st in party.statements(period):
                lines = "; ".join(f"{ln.product!r} {ln.uses} uses, {ln.amount_micros / 1e6:.2f}" for ln in st.lines)
                console.print(f"  statement {st.period} {st.side} {st.party}: total {st.total:.2f} "
                              f"({'settled, log #' + str(st.index) if st.issued else 'not settled'}) — {lines}")


def run_all(console: Console, cluster: LocalCluster, tokens: dict[str, str], analyst: Any) -> None:
    """Each capability adds its step here."""
    joint_statistics(console, analyst)
    if "prescriptions" in {d.name for d in analyst.datasets()}:
        approval_steps(console, cluster, tokens, analyst)
    he_steps(console, cluster, tokens, analyst)
    start_insurer(cluster, tokens)  # the join's two nodes start while the model trains
    training_steps(console, cluster, tokens, analyst)
    private_join_steps(console, cluster, tokens, analyst)
    period = exchange_steps(console, cluster, tokens, analyst)
    lookup_steps(console, cluster, tokens, analyst)
    settlement_steps(console, cluster, tokens, period)
    audit_steps(console, cluster, tokens)
