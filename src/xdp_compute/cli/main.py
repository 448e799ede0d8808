"""The ``xdp`` command: gateway | node | admin | query | train | jobs | budget | audit | approvals | demo.

Exit codes are one table (``cli/exit_codes.py``); client commands share their options
(``cli/options.py``: ``--url``/``XDP_URL``, ``--token``/``--token-file``, ``--ca``, ``--timeout``,
``--json``).
"""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path

import typer

from xdp_compute.cli import tokens
from xdp_compute.cli.datasets import datasets_app as _datasets_app
from xdp_compute.cli.db import register as _register_db
from xdp_compute.cli.exit_codes import friendly
from xdp_compute.cli.jobs import budget as _budget
from xdp_compute.cli.jobs import jobs_app as _jobs_app
from xdp_compute.cli.jobs import nodes_app as _nodes_app
from xdp_compute.cli.node_audit import NodeCommand
from xdp_compute.cli.options import CA, JSON, TIMEOUT, TOKEN, TOKEN_FILE, URL, gateway_client

EPILOG = ("Client commands read XDP_URL, XDP_TOKEN or XDP_TOKEN_FILE, and XDP_CA; --json prints one JSON document. "
          "Exit codes: 0 ok, 1 failed, 2 usage, 3 auth, 4 denied, 5 budget exhausted, 6 unreachable or timed out, "
          "7 not found, 8 invalid request, 9 conflict.")
app = typer.Typer(add_completion=True, no_args_is_help=True, help="xdp-compute: data usable but not visible.",
                  epilog=EPILOG)
admin_app = typer.Typer(no_args_is_help=True, help="Administration: tokens and certificates.")
audit_app = typer.Typer(no_args_is_help=True, help="Auditors: the release log (entries, verification).")
app.add_typer(admin_app, name="admin")
app.add_typer(audit_app, name="audit")
app.add_typer(_datasets_app, name="datasets")

__all__ = ["app", "friendly"]


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"xdp {version('xdp-compute')}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit")) -> None:
    """xdp-compute: data usable but not visible."""


def _hostport(value: str, default_port: int, what: str) -> tuple[str, int]:
    from xdp_compute.config import parse_hostport

    try:
        return parse_hostport(value, default_port)
    except ValueError as e:
        raise typer.BadParameter(f"{what}: {e}") from None


@app.command()
@friendly
def gateway(
    db: str = typer.Option(None, help="SQLAlchemy URL; default sqlite:///./.xdp/gateway.db"),
    http: str = typer.Option(None, help="REST listen address HOST:PORT (default XDP_HTTP_HOST:XDP_HTTP_PORT, "
                                        "127.0.0.1:8000)"),
    grpc: str = typer.Option(None, help="gRPC listen address for nodes HOST:PORT (default "
                                        "XDP_GRPC_HOST:XDP_GRPC_PORT, 127.0.0.1:50051)"),
    region: str = typer.Option(None, help="The gateway's region (default XDP_REGION or CN-FJ)"),
    tls_cert: Path = typer.Option(None, envvar="XDP_TLS_CERT", help="The gateway's certificate (HTTPS and gRPC)"),
    tls_key: Path = typer.Option(None, envvar="XDP_TLS_KEY", help="The gateway's private key"),
    client_ca: Path = typer.Option(None, envvar="XDP_CLIENT_CA", help="CA whose node certificates gRPC requires"),
    insecure: bool = typer.Option(False, "--insecure", help="Plaintext, allowed only on loopback addresses"),
    log_key: Path = typer.Option(None, envvar="XDP_LOG_KEY_FILE",
                                 help="Release-log signing key file (0600; created if missing; default "
                                      "<data dir>/release-log.key). XDP_LOG_KEY may hold the key instead"),
) -> None:
    """Run the gateway (REST for people, gRPC for nodes): TLS with node certificates, or --insecure on loopback."""
    from xdp_compute.config import Settings
    from xdp_compute.gateway.server import run_gateway

    settings = Settings()  # XDP_* variables, validated (InvalidSetting names the variable)
    if http:
        h, hp = _hostport(http, settings.http_port, "--http")
        settings = settings.with_(http_host=h, http_port=hp)
    if grpc:
        g, gp = _hostport(grpc, settings.grpc_port, "--grpc")
        settings = settings.with_(grpc_host=g, grpc_port=gp)
    if db:
        settings = settings.with_(db_url=db)
    if region:
        settings = settings.with_(region=region)
    if log_key:
        settings = settings.with_(log_key_path=log_key)
    from xdp_compute.gateway.tls import require_safe_transport

    settings = settings.with_(insecure=insecure, **{k: str(v) for k, v in
                                                    {"tls_cert": tls_cert, "tls_key": tls_key,
                                                     "client_ca": client_ca}.items() if v})
    require_safe_transport(settings)
    run_gateway(settings)


@app.command(cls=NodeCommand)  # also `xdp node audit` (cli/node_audit.py)
@friendly
def node(
    gateway: str = typer.Option(..., help="Gateway gRPC address HOST:PORT; replicas: a comma-separated list "
                                          "(the node keeps a session with each)"),
    token: str = tokens.token_option(),
    token_file: Path = tokens.token_file_option(),
    manifest: Path = typer.Option(..., help="The node's manifest (TOML)"),
    ca: Path = typer.Option(None, envvar="XDP_CA", help="The deployment's CA certificate (verifies the gateway)"),
    cert: Path = typer.Option(None, envvar="XDP_NODE_CERT", help="This node's certificate (xdp admin pki issue)"),
    key: Path = typer.Option(None, envvar="XDP_NODE_KEY", help="This node's private key"),
    insecure: bool = typer.Option(False, "--insecure", help="Plaintext, allowed only to a loopback gateway"),
    threads: int = typer.Option(0, min=0, envvar="XDP_NODE_THREADS",
                                help="Compute threads for torch/numpy in the task worker (0: the CPUs this "
                                     "process may use, by affinity and cgroup quota; several nodes on one "
                                     "machine: give each its share)"),
    preload: bool = typer.Option(True, envvar="XDP_NODE_PRELOAD",
                                 help="Load the training libraries when the node starts (it registers once they "
                                      "are loaded), not at the first round"),
) -> None:
    """Run a holder's node: dials out to the gateway; opens no port."""

    from xdp_compute.domain.manifest import load_manifest
    from xdp_compute.node.agent import NodeAgent
    from xdp_compute.node.worker import WorkerOptions, usable_cpus

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from xdp_compute.cli.pki import node_credentials
    from xdp_compute.node.identity import NodeIdentity

    # Every replica's address passes the same transport check (issue #18: --gateway A,B).
    addresses = [g.strip() for g in gateway.split(",") if g.strip()] or [gateway]
    for g in addresses[1:]:
        node_credentials(g, ca, cert, key, insecure)
    credentials = node_credentials(addresses[0], ca, cert, key, insecure)
    secret = tokens.resolve_token(token, token_file)
    m = load_manifest(manifest)
    # With TLS, the same certificate and key sign this node's secure-aggregation keys, and the CA
    # verifies its peers' (an active gateway cannot substitute keys); plaintext runs unauthenticated.
    identity = None if credentials is None else NodeIdentity(Path(ca), Path(cert), Path(key))
    if identity is not None:
        identity.load()  # a key that does not match its certificate stops the node here, not at a task
    options = WorkerOptions(threads=threads or usable_cpus(), preload=preload, identity=identity)
    agent = NodeAgent(gateway, secret, m, options=options, credentials=credentials)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=agent.stop, daemon=True).start())
    try:
        agent.run()
    except KeyboardInterrupt:
        agent.stop()


@admin_app.command("create-token")
@friendly
def create_token(
    role: str = typer.Option(..., help="admin | holder | analyst | auditor"),
    name: str = typer.Option(..., help="A unique name for the principal"),
    db: str = typer.Option(None, help="SQLAlchemy URL of the gateway's database"),
    region: str = typer.Option(None, help="The principal's region (analysts; default the gateway's)"),
    ttl: float = typer.Option(None, help="Expire the token after this many seconds (0: never)"),
    expires_days: float = typer.Option(None, help="Expire after this many days (0: never; default 90 for "
                                                  "analysts, never for other roles)"),
    out: Path = typer.Option(None, help="Write the token to this file (0600) instead of printing it"),
    as_json: bool = typer.Option(False, "--json", help="Print {name, role, region, token | file} as JSON"),
) -> None:
    """Create a principal and print its new bearer token (only a hash is stored)."""
    from xdp_compute.config import Settings
    from xdp_compute.gateway.store import Store
    from xdp_compute.gateway.tokens import issue_token

    settings = Settings()
    store = Store.open(db or settings.db_url, create=False)  # a typo'd URL must not start a new database
    try:
        token = issue_token(store, role, name, region or settings.region, expires_days=expires_days,
                            ttl_seconds=ttl)
    finally:
        store.close()
    if out:
        tokens.write_secret(out, token)
    if as_json:
        from xdp_compute.cli.output import print_json

        print_json({"name": name, "role": role, "region": region or settings.region,
                    **({"file": str(out)} if out else {"token": token})})
    elif out:
        typer.echo(f"token of {name!r} written to {out}")
    else:
        typer.echo(token)


@app.command()
@friendly
def demo() -> None:
    """Start a gateway and three hospital nodes on loopback and walk through every role."""
    from xdp_compute.cli.demo import run_demo

    raise typer.Exit(run_demo())


@app.command()
@friendly
def query(
    sql: str = typer.Argument(..., help="SELECT ... FROM dataset [WHERE ...] [GROUP BY ...]"),
    url: str = URL,
    token: str = TOKEN,
    token_file: Path = TOKEN_FILE,
    ca: str = CA,
    epsilon: float = typer.Option(..., help="Privacy cost to spend on this query (at most; a note says when "
                                            "less is spent)"),
    delta: float = typer.Option(None, help="Delta (default: 0.1% of the smallest delta budget among the "
                                           "dataset's owner's nodes)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="Show plan, cost, expected error; charge nothing"),
    encrypt: bool = typer.Option(False, "--encrypt", help="Paillier encrypted delivery (key kept locally)"),
    idempotency_key: str = typer.Option(None, help="Retry-safe key: the same key returns the same answer"),
    subscription: str = typer.Option(None, help="Run under this approved subscription to a query product "
                                                "(metered against its allowance; `xdp products list`)"),
    timeout: float = TIMEOUT,
    as_json: bool = JSON,
) -> None:
    """Run a federated DP SQL query and print the table with 95% intervals.

    While the job waits (for the holders' approval or for its nodes) a `waiting:` line says so on
    stderr; whatever the gateway changed (a lower epsilon, nodes left out or dropped) is a `note:`."""
    from xdp_compute.cli.query import run_query

    with gateway_client(url, token, token_file, ca, timeout) as c:
        run_query(c, sql, epsilon=epsilon, delta=delta, dry_run=dry_run, encrypt=encrypt,
                  idempotency_key=idempotency_key, timeout=timeout, as_json=as_json, subscription=subscription)


@audit_app.command("verify")
@friendly
def audit_verify(
    url: str = URL,
    token: str = TOKEN,
    token_file: Path = TOKEN_FILE,
    ca: str = CA,
    checkpoint: Path = typer.Option(None, help="Checkpoint file: checked against, then updated on success"),
    witnesses: Path = typer.Option(None, envvar="XDP_WITNESSES",
                                   help="Pinned witness keys (C2SP vkeys, one a line; see `xdp audit witnesses`)"),
    quorum: int = typer.Option(None, min=1, help="Witness cosignatures required (default: a majority)"),
    max_age: float = typer.Option(600.0, min=0, help="Newest quorum of cosignatures may be this old, s (0: any)"),
    wait: float = typer.Option(15.0, min=0, help="Seconds to wait for witnesses to cosign the newest entries"),
    timeout: float = TIMEOUT,
    as_json: bool = JSON,
) -> None:
    """Download the release log, recompute the Merkle tree, check every signed head, the consistency
    with the saved checkpoint and a quorum of the pinned witnesses' cosignatures; exit non-zero
    naming the problems (and the first bad index) on tampering."""
    from xdp_compute.cli.audit import verify_and_report

    with gateway_client(url, token, token_file, ca, timeout) as c:
        verify_and_report(c, checkpoint, witnesses, quorum, max_age, wait, as_json)


@audit_app.command("witnesses")
@friendly
def audit_witnesses(
    url: str = URL,
    token: str = TOKEN,
    token_file: Path = TOKEN_FILE,
    ca: str = CA,
    save: Path = typer.Option(..., help="File to pin the witnesses' keys in (for --witnesses)"),
    timeout: float = TIMEOUT,
    as_json: bool = JSON,
) -> None:
    """Fetch the nodes' witness keys once and save them for pinning (check them with the holders)."""
    from xdp_compute.cli.audit import fetch_and_pin

    with gateway_client(url, token, token_file, ca, timeout) as c:
        fetch_and_pin(c, save, as_json)


@audit_app.command("entries")
@friendly
def audit_entries(
    dataset: str = typer.Option(None, help="Only entries about this dataset"),
    principal: str = typer.Option(None, help="Only entries of this principal (e.g. an analyst's name)"),
    kind: str = typer.Option(None, help="Only this kind: released, refused, denied, aborted, ..."),
    since: float = typer.Option(None, help="Only entries at or after this Unix time (seconds)"),
    until: float = typer.Option(None, help="Only entries at or before this Unix time (seconds)"),
    start: int = typer.Option(0, min=0, help="First log index to read from (paging)"),
    limit: int = typer.Option(1000, min=1, help="At most this many entries"),
    url: str = URL,
    token: str = TOKEN,
    token_file: Path = TOKEN_FILE,
    ca: str = CA,
    timeout: float = TIMEOUT,
    as_json: bool = JSON,
) -> None:
    """Release-log entries (auditors): who ran what, at what cost, under which decisions; digests, no values."""
    from xdp_compute.cli.audit import print_entries
    from xdp_compute.cli.output import as_data

    with gateway_client(url, token, token_file, ca, timeout) as c:
        entries = as_data(c.audit_entries(dataset=dataset, principal=principal, kind=kind, since=since,
                                          until=until, start=start, limit=limit))
    print_entries(entries, as_json)


app.add_typer(_jobs_app, name="jobs")
app.command("budget")(_budget)
approvals_app = typer.Typer(no_args_is_help=True, help="Holders: approve or deny jobs on your datasets.")
app.add_typer(approvals_app, name="approvals")
app.add_typer(_nodes_app, name="nodes")


@approvals_app.command("list")
@friendly
def approvals_list(url: str = URL, token: str = TOKEN, token_file: Path = TOKEN_FILE, ca: str = CA,
                   timeout: float = TIMEOUT, as_json: bool = JSON) -> None:
    """Jobs on your datasets awaiting (or past) your decision: plan, principal, cost, policy decisions."""
    from xdp_compute.cli.output import as_data, print_json

    with gateway_client(url, token, token_file, ca, timeout) as c:
        items = as_data(c.approvals())
    if as_json:
        print_json(items)
        return
    if not items:
        typer.echo("(no jobs await your decision)")
    for a in items:
        cost = a.get("cost") or {}
        sql = (a.get("plan_summary") or {}).get("sql") or (a.get("request") or {}).get("sql")
        typer.echo(f"job {a.get('job_id')}  {a.get('status')}  your decision: {a.get('your_decision')}  "
                   f"{a.get('operation') or ''} by {a.get('principal')}  "
                   f"epsilon={cost.get('epsilon', float('nan')):.6g} delta={cost.get('delta', float('nan')):.3g}")
        if sql:
            typer.echo(f"  sql: {sql}")
        for d in a.get("decisions") or []:
            where = f" [{d['node']}]" if d.get("node") else ""
            typer.echo(f"  {'ok    ' if d.get('allowed') else 'DENIED'} {d.get('rule')}{where}: {d.get('reason')}")


@approvals_app.command("approve")
@friendly
def approvals_approve(job_id: str,
                      reason: str = typer.Option(None, help="Why (kept with your decision; optional)"),
                      url: str = URL, token: str = TOKEN, token_file: Path = TOKEN_FILE, ca: str = CA,
                      timeout: float = TIMEOUT, as_json: bool = JSON) -> None:
    """Approve a job on your datasets; it runs once every holder asked has approved."""
    from xdp_compute.cli.output import as_data, print_json

    with gateway_client(url, token, token_file, ca, timeout) as c:
        r = as_data(c.approve(job_id, reason=reason)) or {}
    if as_json:
        print_json(r)
        return
    typer.echo(f"approved {job_id}" + ("; the job runs now" if r.get("job_runs") else "; waiting for others"))


@approvals_app.command("deny")
@friendly
def approvals_deny(job_id: str, reason: str = typer.Option(..., help="Why (logged)"), url: str = URL,
                   token: str = TOKEN, token_file: Path = TOKEN_FILE, ca: str = CA, timeout: float = TIMEOUT,
                   as_json: bool = JSON) -> None:
    """Deny a job on your datasets: nothing is computed and its reservation is refunded."""
    from xdp_compute.cli.output import as_data, print_json

    with gateway_client(url, token, token_file, ca, timeout) as c:
        r = as_data(c.deny(job_id, reason)) or {}
    if as_json:
        print_json(r)
        return
    typer.echo(f"denied {job_id}; nothing was computed and the reservation was refunded")


@app.command()
@friendly
def train(
    dataset: str = typer.Argument(..., help="Dataset to train on"),
    url: str = URL,
    token: str = TOKEN,
    token_file: Path = TOKEN_FILE,
    ca: str = CA,
    model: str = typer.Option("logreg", help="logreg | softmax | linreg | mlp"),
    features: str = typer.Option(..., help="Comma-separated declared columns"),
    label: str = typer.Option(..., help="Declared label column"),
    rounds: int = typer.Option(10),
    local_epochs: int = typer.Option(1),
    batch_size: int = typer.Option(64),
    lr: float = typer.Option(None),
    target_epsilon: float = typer.Option(3.0),
    delta: float = typer.Option(None),
    max_grad_norm: float = typer.Option(None),
    hidden: str = typer.Option(None, help="MLP hidden sizes, e.g. 64,32"),
    subscription: str = typer.Option(None, "--subscription", help="Run under this approved subscription to a "
                                     "model product (one training is one unit, metered at release)"),
    save: Path = typer.Option(None, help="Save the released model's state_dict here (torch.save)"),
    out: Path = typer.Option(None, "--out", help="Export the released model with its feature encoding as ONNX "
                             "(a path ending in .onnx); it takes raw values and runs with onnxruntime alone"),
    timeout: float = typer.Option(120.0, "--timeout", min=0.1, help="Seconds to wait for each call to the gateway"),
    as_json: bool = JSON,
) -> None:
    """DP federated training with a progress bar; prints the model card when released."""
    from xdp_compute.cli.output import as_data, print_json
    from xdp_compute.sdk.training import print_card

    if out is not None and out.suffix.lower() != ".onnx":
        from xdp_compute.errors import InvalidArgument

        raise InvalidArgument(f"--out writes ONNX: give a path ending in .onnx, not {out.name!r}")
    with gateway_client(url, token, token_file, ca, timeout) as c:
        job = c.train(dataset, model=model, features=[f.strip() for f in features.split(",") if f.strip()],
                      label=label, rounds=rounds, local_epochs=local_epochs, batch_size=batch_size, lr=lr,
                      target_epsilon=target_epsilon, delta=delta, max_grad_norm=max_grad_norm,
                      hidden=[int(h) for h in hidden.split(",")] if hidden else None, subscription=subscription)
        job.wait(progress=not as_json)
        card = job.model_card()
        if save:
            import torch

            torch.save(job.model().state_dict(), save)
        exported = job.predictor().export(out) if out is not None else None
        if as_json:
            print_json({"job_id": job.job_id, "model_card": as_data(card), "saved": str(save) if save else None,
                        "exported": str(exported) if exported else None})
            return
        print_card(card)
        if save:
            typer.echo(f"model saved to {save}")
        if exported:
            typer.echo(f"model exported to {exported} (ONNX; input: raw feature values, categories as the index "
                       "of their declared value; see its metadata)")


# Token administration and the PKI live in their own modules (cli/tokens.py, cli/pki.py).
tokens.register(admin_app, friendly)


def _add_pki() -> None:
    from xdp_compute.cli.pki import register as register_pki

    admin_app.add_typer(register_pki(friendly), name="pki")


_add_pki()
app.add_typer(_register_db(friendly), name="db")


def _add_exchange() -> None:
    """Data exchange (issue #17): ``xdp assets``, ``xdp products``, ``xdp statements`` (cli/exchange.py)."""
    from xdp_compute.cli.exchange import assets_app, products_app, statements

    app.add_typer(assets_app, name="assets")
    app.add_typer(products_app, name="products")
    app.command("statements")(statements)


_add_exchange()


def _add_lookup() -> None:
    """``xdp lookup PRODUCT KEY``: hidden lookups (issue #17, cli/lookup.py)."""
    from xdp_compute.cli.lookup import lookup

    app.command("lookup")(lookup)


_add_lookup()
