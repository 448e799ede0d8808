"""TLS for the gateway: gRPC server credentials that require node certificates, and the peer check.

The handshake proves the node holds a key the deployment CA certified (``require_client_auth``);
``check_peer`` then binds that certificate to the call: the holder it names must be the token's
principal on every call, and on Register the node name must be the one being registered. A
stolen token without its holder's certificate, or a holder's certificate used for another
holder's or another node's name, is refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc

from xdp_compute.config import Settings, is_loopback
from xdp_compute.crypto.pki import certificate_facts, node_identity
from xdp_compute.errors import BadRequest, Forbidden, Unauthorized
from xdp_compute.gateway.store import PrincipalView


def _read(path: str | Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise Unauthorized(f"cannot read the {what} {path}: {e.strerror}") from None


def grpc_server_credentials(cert: str | Path, key: str | Path, client_ca: str | Path) -> grpc.ServerCredentials:
    """Server credentials for nodes: the gateway's certificate; client certificates signed by ``client_ca`` required."""
    return grpc.ssl_server_credentials([(_read(key, "TLS key"), _read(cert, "TLS certificate"))],
                                       root_certificates=_read(client_ca, "client CA"),
                                       require_client_auth=True)


def bind_grpc(server: grpc.aio.Server, settings: Settings) -> int:
    """Bind the nodes' gRPC port: TLS requiring node certificates, or plaintext where allowed."""
    require_safe_transport(settings)
    addr = f"{settings.grpc_host}:{settings.grpc_port}"
    if settings.tls_cert and settings.tls_key and settings.client_ca:
        return server.add_secure_port(addr, grpc_server_credentials(settings.tls_cert, settings.tls_key,
                                                                    settings.client_ca))
    return server.add_insecure_port(addr)


def uvicorn_tls(settings: Settings) -> dict[str, Any]:
    """uvicorn.Config keyword arguments for HTTPS (none on the plaintext loopback server)."""
    require_safe_transport(settings)
    if settings.tls_cert:
        return {"ssl_certfile": settings.tls_cert, "ssl_keyfile": settings.tls_key}
    return {}


def check_peer(context: Any, principal: PrincipalView, node_name: str | None = None) -> None:
    """Refuse a call whose verified client certificate does not name the token's holder (and node).

    On the TLS server every connection carries a client certificate the CA signed (the handshake
    required it); the plaintext server exists only on loopback (``--insecure``) and checks nothing.
    """
    auth = context.auth_context() or {}
    if b"ssl" not in (auth.get("transport_security_type") or []):
        return  # the plaintext server: started with --insecure, which binds loopback only
    pems = auth.get("x509_pem_cert") or []
    if not pems:
        raise Unauthorized("no client certificate: nodes must present the certificate issued for them "
                           "(xdp admin pki issue)")
    ident = node_identity(pems[0])
    if ident is None:
        raise Forbidden("the client certificate names no xdp node and holder (issue it with xdp admin pki issue)")
    if ident.holder != principal.name:
        raise Forbidden(f"the client certificate is bound to holder {ident.holder!r}, but the token is "
                        f"{principal.name!r}'s")
    if node_name is not None and ident.node != node_name:
        raise Forbidden(f"the client certificate is for node {ident.node!r}, not {node_name!r}")


def peer_certificate(context: Any) -> dict[str, Any] | None:
    """Subject, fingerprint and expiry of the verified client certificate of this call (None on
    the plaintext loopback server); called after ``check_peer`` accepted it."""
    auth = context.auth_context() or {}
    pems = auth.get("x509_pem_cert") or []
    if b"ssl" not in (auth.get("transport_security_type") or []) or not pems:
        return None
    return certificate_facts(pems[0])


def require_safe_transport(settings: Settings) -> None:
    """Refuse to start a gateway that would speak plaintext off loopback or half-configured TLS."""
    given = {"--tls-cert": settings.tls_cert, "--tls-key": settings.tls_key, "--client-ca": settings.client_ca}
    if any(given.values()):
        missing = [k for k, v in given.items() if not v]
        if missing:
            raise BadRequest(f"TLS needs {', '.join(given)} together; missing {', '.join(missing)}")
        if settings.insecure:
            raise BadRequest("--insecure cannot be combined with --tls-cert/--tls-key/--client-ca")
        for flag, path in given.items():
            if not Path(str(path)).is_file():
                raise BadRequest(f"{flag} {path}: no such file")
        return
    if not settings.insecure:
        raise BadRequest("refusing to serve plaintext: give --tls-cert, --tls-key and --client-ca "
                         "(create them with `xdp admin pki init DIR`), or --insecure for plaintext on loopback")
    off = [f"{h}" for h in (settings.http_host, settings.grpc_host) if not is_loopback(h)]
    if off:
        raise BadRequest(f"--insecure serves plaintext on loopback only, and {', '.join(sorted(set(off)))} is not "
                         "a loopback address: configure TLS instead")
