"""This node's certified identity, as files: the same certificate, key and CA its TLS connection uses.

In secure aggregation they sign the node's keys and survivor sets and verify its peers'
(``crypto.secagg.identity``). Kept free of heavy imports: the task worker's options carry it
across a process spawn before numpy is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from xdp_compute.errors import BadRequest

if TYPE_CHECKING:
    from xdp_compute.crypto.secagg import NodeSigner, PeerVerifier


@dataclass(frozen=True)
class NodeIdentity:
    """Paths of this node's certificate and key (``xdp admin pki issue``) and of the deployment CA."""

    ca: Path
    cert: Path
    key: Path

    def load(self) -> tuple[NodeSigner, PeerVerifier]:
        """The signer and the peer verifier; BadRequest when a file is missing or they do not match."""
        from xdp_compute.crypto.secagg import NodeSigner, PeerVerifier
        from xdp_compute.errors import XdpError

        try:
            ca, cert, key = self.ca.read_bytes(), self.cert.read_bytes(), self.key.read_bytes()
        except OSError as e:
            raise BadRequest(f"cannot read the node's identity files: {e.strerror}") from None
        try:
            return NodeSigner.from_pem(cert, key), PeerVerifier.from_pem(ca)
        except XdpError:
            raise
        except ValueError as e:
            raise BadRequest(f"the node's certificate, key or CA does not load: {e}") from None
