"""The deployment's small PKI: one CA, the gateway's server certificate, nodes' client certificates.

A node certificate binds two names (issue #12, "nodes are identified by certificates"):
the node (subject CN and a ``urn:xdp:node:`` SAN URI) and the holder principal that runs it
(a ``urn:xdp:holder:`` SAN URI). The gateway refuses a Register whose token's holder or node
name differs from the certificate the TLS handshake verified. Keys are ECDSA P-256 (fast
handshakes; supported by BoringSSL in gRPC and OpenSSL in uvicorn) and written mode 0600.
"""

from __future__ import annotations

import datetime as dt
import functools
import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from xdp_compute.errors import BadRequest

NODE_URI = "urn:xdp:node:"
HOLDER_URI = "urn:xdp:holder:"
CA_DAYS, SERVER_DAYS, NODE_DAYS = 3650, 825, 365
# Node names become file names under nodes/: keep them to a portable alphabet.
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass(frozen=True)
class PkiPaths:
    """The files ``init_pki`` writes under ``root``."""

    root: Path

    @property
    def ca_cert(self) -> Path:
        return self.root / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.root / "ca.key"

    @property
    def gateway_cert(self) -> Path:
        return self.root / "gateway.pem"

    @property
    def gateway_key(self) -> Path:
        return self.root / "gateway.key"

    def node_cert(self, node: str) -> Path:
        return self.root / "nodes" / f"{node}.pem"

    def node_key(self, node: str) -> Path:
        return self.root / "nodes" / f"{node}.key"


@dataclass(frozen=True)
class NodeIdentity:
    """Who a verified node certificate names."""

    node: str
    holder: str


def holder_uri(holder: str) -> str:
    return HOLDER_URI + quote(holder, safe="")


def node_uri(node: str) -> str:
    return NODE_URI + quote(node, safe="")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    path.parent.mkdir(parents=True, exist_ok=True)
    # Created 0600 from the start: never readable by others, not even for a moment.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    os.chmod(path, 0o600)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _load_ca(paths: PkiPaths) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    if not paths.ca_cert.exists() or not paths.ca_key.exists():
        raise BadRequest(f"no CA in {paths.root}: run `xdp admin pki init {paths.root}` first")
    cert = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
    key = serialization.load_pem_private_key(paths.ca_key.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise BadRequest(f"{paths.ca_key} is not an EC private key")
    return cert, key


def _leaf(ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, subject: x509.Name,
          sans: list[x509.GeneralName], usage: x509.ObjectIdentifier, days: int
          ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False, content_commitment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return cert, key


def _host_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def init_pki(root: Path | str, hosts: tuple[str, ...] | list[str] = (), name: str = "xdp-compute",
             overwrite: bool = False) -> PkiPaths:
    """Create a deployment CA and the gateway's certificate (SAN 127.0.0.1, localhost and ``hosts``)."""
    paths = PkiPaths(Path(root))
    if paths.ca_key.exists() and not overwrite:
        raise BadRequest(f"{paths.ca_key} exists: refusing to replace a deployment CA (pass --force)")
    paths.root.mkdir(parents=True, exist_ok=True)
    os.chmod(paths.root, 0o700)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, name),
                         x509.NameAttribute(NameOID.COMMON_NAME, f"{name} deployment CA")])
    now = _now()
    ca = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
          .not_valid_after(now + dt.timedelta(days=CA_DAYS))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False, content_commitment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                       crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    _write_key(paths.ca_key, ca_key)
    _write_cert(paths.ca_cert, ca)
    names: list[str] = []
    for h in ("127.0.0.1", "localhost", *hosts):
        if h and h not in names:
            names.append(h)
    cert, key = _leaf(ca, ca_key, x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} gateway")]),
                      [_host_name(h) for h in names], ExtendedKeyUsageOID.SERVER_AUTH, SERVER_DAYS)
    _write_key(paths.gateway_key, key)
    _write_cert(paths.gateway_cert, cert)
    return paths


def issue_node_certificate(root: Path | str, node: str, holder: str, days: int = NODE_DAYS) -> tuple[Path, Path]:
    """Issue a client certificate for ``node`` run by holder principal ``holder``; returns (cert, key) paths."""
    if not _SAFE_NAME.fullmatch(node):
        raise BadRequest(f"node name {node!r}: use letters, digits, '.', '_' or '-' (at most 128)")
    if not holder or len(holder) > 200:
        raise BadRequest("holder must be the holder principal's name (1..200 characters)")
    paths = PkiPaths(Path(root))
    ca, ca_key = _load_ca(paths)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node),
                         x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, f"holder:{holder}"[:64])])
    cert, key = _leaf(ca, ca_key, subject,
                      [x509.UniformResourceIdentifier(node_uri(node)),
                       x509.UniformResourceIdentifier(holder_uri(holder))],
                      ExtendedKeyUsageOID.CLIENT_AUTH, days)
    _write_key(paths.node_key(node), key)
    _write_cert(paths.node_cert(node), cert)
    return paths.node_cert(node), paths.node_key(node)


@functools.lru_cache(maxsize=1024)  # every node call is checked; its certificate rarely changes
def node_identity(pem: bytes) -> NodeIdentity | None:
    """The node and holder a (chain-verified) node certificate names; None if it names neither."""
    cert = x509.load_pem_x509_certificate(pem)
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    uris = sans.get_values_for_type(x509.UniformResourceIdentifier)
    nodes = [unquote(u[len(NODE_URI):]) for u in uris if u.startswith(NODE_URI)]
    holders = [unquote(u[len(HOLDER_URI):]) for u in uris if u.startswith(HOLDER_URI)]
    if len(nodes) != 1 or len(holders) != 1:
        return None
    return NodeIdentity(node=nodes[0], holder=holders[0])


def certificate_facts(pem: bytes) -> dict[str, Any]:
    """What a holder's console shows about a node's certificate: subject, SHA-256 fingerprint of
    the DER encoding (as ``openssl x509 -fingerprint -sha256`` prints it, without colons) and
    expiry (POSIX seconds)."""
    cert = x509.load_pem_x509_certificate(pem)
    return {"subject": cert.subject.rfc4514_string(),
            "fingerprint": cert.fingerprint(hashes.SHA256()).hex(),
            "not_after": cert.not_valid_after_utc.timestamp()}
