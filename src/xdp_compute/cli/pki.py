"""``xdp admin pki``: the deployment CA, the gateway's certificate, node certificates bound to holders;
and the node's side: channel credentials from ``--ca/--cert/--key`` or ``--insecure`` on loopback."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from xdp_compute.cli.exit_codes import UsageProblem

pki_app = typer.Typer(no_args_is_help=True, help="The deployment's certificates (TLS, node identity).")


def register(friendly: Any) -> typer.Typer:
    @pki_app.command("init")
    @friendly
    def init(directory: Path = typer.Argument(..., help="Where to write ca.pem/ca.key and gateway.pem/gateway.key"),
             host: list[str] = typer.Option([], "--host",
                                            help="Another name or IP clients use for the gateway (repeatable)"),
             force: bool = typer.Option(False, "--force", help="Replace an existing CA (invalidates every cert)")
             ) -> None:
        """Create a deployment CA and the gateway's certificate (SAN 127.0.0.1, localhost and --host)."""
        from xdp_compute.crypto.pki import init_pki

        p = init_pki(directory, hosts=tuple(host), overwrite=force)
        typer.echo(f"CA certificate   {p.ca_cert}   (give it to nodes and clients: --ca / XDP_CA)")
        typer.echo(f"CA key           {p.ca_key}   (0600; keep it offline)")
        typer.echo(f"gateway cert/key {p.gateway_cert} {p.gateway_key}")
        typer.echo(f"run: xdp gateway --tls-cert {p.gateway_cert} --tls-key {p.gateway_key} --client-ca {p.ca_cert}")

    @pki_app.command("issue")
    @friendly
    def issue(directory: Path = typer.Argument(..., help="The directory of `xdp admin pki init`"),
              node: str = typer.Option(..., "--node", help="The node's name (its manifest's [node] name)"),
              holder: str = typer.Option(..., "--holder", help="The holder principal that runs it (token name)"),
              days: int = typer.Option(365, min=1, help="Validity in days")) -> None:
        """Issue a node's client certificate, bound to its node name and its holder."""
        from xdp_compute.crypto.pki import issue_node_certificate

        cert, key = issue_node_certificate(directory, node, holder, days=days)
        typer.echo(f"node certificate {cert}")
        typer.echo(f"node key         {key}   (0600; give both and ca.pem to the holder)")

    return pki_app


def node_credentials(gateway: str, ca: Path | None, cert: Path | None, key: Path | None, insecure: bool) -> Any:
    """gRPC channel credentials for ``xdp node``; None for plaintext (``--insecure``, loopback only)."""
    from xdp_compute.config import is_loopback, parse_hostport

    if insecure:
        if ca or cert or key:
            raise UsageProblem("--insecure cannot be combined with --ca/--cert/--key")
        host, _ = parse_hostport(gateway, 50051)
        if not is_loopback(host):
            raise UsageProblem(f"--insecure dials plaintext on loopback only, and {host} is not a loopback "
                             "address: use --ca, --cert and --key")
        return None
    missing = [flag for flag, v in (("--ca", ca), ("--cert", cert), ("--key", key)) if not v]
    if missing:
        raise UsageProblem(f"the node needs {', '.join(missing)} (from `xdp admin pki issue`) to verify the gateway "
                         "and prove its identity, or --insecure for plaintext on loopback")
    import grpc

    for p in (ca, cert, key):
        if not Path(str(p)).is_file():
            raise UsageProblem(f"{p}: no such file")
    return grpc.ssl_channel_credentials(root_certificates=Path(str(ca)).read_bytes(),
                                        private_key=Path(str(key)).read_bytes(),
                                        certificate_chain=Path(str(cert)).read_bytes())
