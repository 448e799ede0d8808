"""How the SDK reaches a gateway: HTTPS verified against the deployment CA, plaintext on loopback only."""

from __future__ import annotations

import os
import ssl
from pathlib import Path
from urllib.parse import urlsplit

from xdp_compute.config import is_loopback
from xdp_compute.errors import BadRequest, Unauthorized


def verify_for(url: str, ca: str | os.PathLike[str] | None, injected_transport: bool) -> ssl.SSLContext | bool:
    """The httpx ``verify`` for ``url``: the CA file in ``ca`` or ``XDP_CA``, else the system's roots.

    Plaintext ``http://`` is refused unless the host is loopback (a token sent in the clear over
    a network is a token given away); an injected transport (tests, ASGI) is not a network.
    """
    ca = ca or os.environ.get("XDP_CA") or None
    parts = urlsplit(url)
    if parts.scheme == "https":
        if ca is None:
            return True
        if not Path(ca).is_file():
            raise BadRequest(f"CA certificate {ca}: no such file")
        return ssl.create_default_context(cafile=str(ca))
    if parts.scheme == "http":
        if injected_transport or is_loopback(parts.hostname or ""):
            return True
        raise BadRequest(f"refusing plaintext http:// to {parts.hostname}: the token would cross the network "
                         "in the clear; use the gateway's https:// URL (and --ca / XDP_CA)")
    raise BadRequest(f"gateway URL {url!r} must start with https:// (or http:// on loopback)")


def token_from_env() -> str:
    """The bearer token from ``XDP_TOKEN`` or the file named by ``XDP_TOKEN_FILE``."""
    token = os.environ.get("XDP_TOKEN", "").strip()
    if token:
        return token
    path = os.environ.get("XDP_TOKEN_FILE", "").strip()
    if path:
        return read_token_file(Path(path))
    raise Unauthorized("no token: pass one, or set XDP_TOKEN or XDP_TOKEN_FILE")


def read_token_file(path: Path) -> str:
    try:
        token = path.read_text().strip()
    except OSError as e:
        raise BadRequest(f"token file {path}: {e.strerror}") from None
    if not token:
        raise BadRequest(f"token file {path} is empty")
    return token
