"""Node identities in secure aggregation: the active-adversary variant of Bonawitz et al. 2017.

Against a gateway that only follows the protocol, unauthenticated keys are enough; against one
that deviates they are not: a gateway that hands a node its own public keys in place of the
peers' learns every pairwise mask and holds every share of the node's self mask, so it unmasks
the node's input alone. Bonawitz et al. 2017, §4 and Fig. 4 (the "active" variant), close that
with a PKI: every party signs what it advertises (Round 0) and the survivor set it saw (Round 3,
ConsistencyCheck), and every party verifies its peers' signatures before it uses their keys or
reveals any share.

Here the PKI is the deployment's (``crypto.pki``): a node signs with the private key of the
certificate the deployment CA issued it (the one its TLS connection presents), and verifies a
peer's certificate against that CA and its signature against the certificate's key. What is
signed is domain-separated and length-prefixed (``keys_statement``, ``survivors_statement``), bound
to the session id, so no signature serves twice. The CA's key must stay out of the gateway's
reach (``xdp admin pki init`` on another host): whoever holds it can mint node identities.
"""

from __future__ import annotations

import datetime as dt
import functools
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID

from xdp_compute.crypto.pki import NodeIdentity, node_identity
from xdp_compute.errors import InvalidKey

#: Bounds on what travels in a message (a P-256 certificate is ~600 bytes, its signature <= 72).
MAX_CERTIFICATE_BYTES = 4096
MAX_SIGNATURE_BYTES = 256

_KEYS_CONTEXT = b"xdp-compute secagg v1 advertise-keys"
_SURVIVORS_CONTEXT = b"xdp-compute secagg v1 consistency-check"


def _frame(parts: Iterable[bytes]) -> bytes:
    return b"".join(struct.pack(">I", len(p)) + p for p in parts)


def keys_statement(session_id: bytes, node_id: str, c_pk: bytes, s_pk: bytes) -> bytes:
    """What a node signs in Round 0: sigma_u = SIG.sign(d_u^SK, c_u^PK || s_u^PK), bound to session and sender."""
    return _frame([_KEYS_CONTEXT, session_id, node_id.encode(), c_pk, s_pk])


def survivors_statement(session_id: bytes, survivors: Iterable[str]) -> bytes:
    """What a node signs in Round 3 (ConsistencyCheck): sigma'_u = SIG.sign(d_u^SK, U3), bound to the session.

    U3 is signed in sorted order: it is a set, and two honest nodes must sign the same bytes for it.
    """
    return _frame([_SURVIVORS_CONTEXT, session_id, *(v.encode() for v in sorted(survivors))])


def _public_key(cert: x509.Certificate) -> ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey:
    key = cert.public_key()
    if isinstance(key, (ec.EllipticCurvePublicKey, ed25519.Ed25519PublicKey)):
        return key
    raise InvalidKey("a node certificate must carry an EC or Ed25519 key")


def load_certificate(der: bytes) -> x509.Certificate:
    """A DER certificate from a message; InvalidKey when it does not parse."""
    if not isinstance(der, (bytes, bytearray)) or not 0 < len(der) <= MAX_CERTIFICATE_BYTES:
        raise InvalidKey("missing or oversized node certificate")
    return _parse(bytes(der))


@functools.lru_cache(maxsize=4096)  # the same peers' certificates arrive in every session
def _parse(der: bytes) -> x509.Certificate:
    try:
        return x509.load_der_x509_certificate(der)
    except ValueError:
        raise InvalidKey("node certificate does not parse") from None


def signature_valid(cert_der: bytes, message: bytes, signature: bytes) -> bool:
    """Whether ``signature`` over ``message`` verifies under the key of ``cert_der`` (no chain check)."""
    try:
        key = _public_key(load_certificate(cert_der))
        if isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, message)
        else:
            key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
    except (InvalidKey, InvalidSignature, ValueError):
        return False
    return True


@functools.lru_cache(maxsize=4096)  # a pure function of the two certificates; the clock is checked apart
def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


@dataclass(frozen=True)
class NodeSigner:
    """A node's signing identity: its certificate (DER) and the private key the CA certified."""

    certificate: bytes
    _key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey

    @classmethod
    def from_pem(cls, cert_pem: bytes, key_pem: bytes) -> NodeSigner:
        """From the files ``xdp admin pki issue`` wrote; the key must match the certificate."""
        cert = x509.load_pem_x509_certificate(cert_pem)
        key = serialization.load_pem_private_key(key_pem, password=None)
        if not isinstance(key, (ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey)):
            raise InvalidKey("the node's key must be an EC or Ed25519 private key")
        raw = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        if key.public_key().public_bytes(*raw) != cert.public_key().public_bytes(*raw):
            raise InvalidKey("the node's private key does not belong to its certificate")
        return cls(cert.public_bytes(serialization.Encoding.DER), key)

    def sign(self, message: bytes) -> bytes:
        if isinstance(self._key, ed25519.Ed25519PrivateKey):
            return self._key.sign(message)
        return self._key.sign(message, ec.ECDSA(hashes.SHA256()))


@dataclass(frozen=True)
class PeerVerifier:
    """Checks peers' certificates against the deployment CA and their signatures against them."""

    ca: x509.Certificate

    @classmethod
    def from_pem(cls, ca_pem: bytes) -> PeerVerifier:
        return cls(x509.load_pem_x509_certificate(ca_pem))

    def identity(self, cert_der: bytes, now: dt.datetime | None = None) -> NodeIdentity:
        """The node and holder a certificate names, once it is shown to be a node certificate of this CA.

        Raises InvalidKey when it was not issued by the CA, is not valid now, is not for client
        authentication (a node's), or names no node and holder.
        """
        cert = load_certificate(cert_der)
        if not _issued_by(cert, self.ca):
            raise InvalidKey("a peer's certificate was not issued by the deployment CA")
        at = now or dt.datetime.now(dt.UTC)
        if not cert.not_valid_before_utc <= at <= cert.not_valid_after_utc:
            raise InvalidKey("a peer's certificate is not valid now")
        try:
            usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except x509.ExtensionNotFound:
            raise InvalidKey("a peer's certificate is not a node certificate (no extended key usage)") from None
        if ExtendedKeyUsageOID.CLIENT_AUTH not in usages:
            raise InvalidKey("a peer's certificate is not a node certificate (not for client authentication)")
        ident = node_identity(cert.public_bytes(serialization.Encoding.PEM))
        if ident is None:
            raise InvalidKey("a peer's certificate names no xdp node and holder")
        return ident


__all__ = [
    "MAX_CERTIFICATE_BYTES",
    "MAX_SIGNATURE_BYTES",
    "NodeSigner",
    "PeerVerifier",
    "keys_statement",
    "load_certificate",
    "signature_valid",
    "survivors_statement",
]
