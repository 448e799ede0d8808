"""Where the release log's signing key lives: outside the database it signs.

Whoever can write the database must not also be able to re-sign it, so the Ed25519 key is a
PKCS#8 PEM file of mode 0600 (``--log-key FILE``, ``XDP_LOG_KEY_FILE``, default
``<data dir>/release-log.key``, created on first start) or a secret from the environment
(``XDP_LOG_KEY``: base64 of the 32-byte seed, or the PEM text). A key file that group or others
may read is refused: the key may have leaked. A database from before this change holds the key
in its ``secrets`` table; it is moved out to the key file once, and deleted from the database.

The operator still holds the key, so this alone does not stop a rewrite: the nodes' witness
cosignatures do (``audit/witnessed.py``). It does stop a database-only attacker (a stolen
backup, a SQL injection) from forging heads, and it keeps key and log in separate custody.
"""

from __future__ import annotations

import base64
import binascii
import logging
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from xdp_compute.audit import TreeHeadSigner
from xdp_compute.config import Settings
from xdp_compute.crypto._keyfile import read_secret_file, write_secret_file
from xdp_compute.errors import InvalidKey
from xdp_compute.gateway import models as m
from xdp_compute.gateway.store import Store

log = logging.getLogger("xdp.gateway.log_key")
LEGACY_SECRET = "release-log-ed25519"  # the row name the key had in the database's secrets table
ENV_SECRET = "XDP_LOG_KEY"
_MAX_KEY_FILE = 4096


def key_file_path(settings: Settings) -> Path:
    return settings.log_key_path or settings.data_dir / "release-log.key"


def _pem(signer: TreeHeadSigner) -> bytes:
    return Ed25519PrivateKey.from_private_bytes(signer.private_bytes()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _from_pem(data: bytes, where: str) -> TreeHeadSigner:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise InvalidKey(f"{where} is not an unencrypted PKCS#8 PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise InvalidKey(f"{where} is not an Ed25519 key")
    return TreeHeadSigner(key)


def _from_env(text: str) -> TreeHeadSigner:
    text = text.strip()
    if text.startswith("-----BEGIN"):
        return _from_pem(text.encode(), ENV_SECRET)
    try:
        seed = base64.b64decode(text, validate=True)
    except binascii.Error:
        raise InvalidKey(f"{ENV_SECRET} is neither a PEM key nor base64 of a 32-byte Ed25519 seed") from None
    return TreeHeadSigner.from_private_bytes(seed)


def _legacy_key(store: Store) -> bytes | None:
    with store.read() as s:
        row = s.get(m.Secret, LEGACY_SECRET)
        return bytes(row.value) if row is not None else None


def _drop_legacy_key(store: Store) -> None:
    with store.write() as s:
        row = s.get(m.Secret, LEGACY_SECRET)
        if row is not None:
            s.delete(row)


def load_log_signer(settings: Settings, store: Store) -> TreeHeadSigner:
    """The log's signer from the environment or the key file; create or migrate it if needed.

    Refuses (``InvalidKey``) a loose key file, a malformed key, and a database that still holds
    a *different* key than the one configured (someone must decide which key is the log's).
    """
    legacy = _legacy_key(store)
    env = settings.log_key  # XDP_LOG_KEY
    path = key_file_path(settings)
    if env:
        signer, where = _from_env(env), ENV_SECRET
    elif path.exists():
        signer, where = _from_pem(read_secret_file(path, max_bytes=_MAX_KEY_FILE), str(path)), str(path)
    else:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if legacy is not None:
            signer = TreeHeadSigner.from_private_bytes(legacy)
            log.warning("moving the release-log signing key out of the database into %s (mode 0600)", path)
        else:
            signer = TreeHeadSigner.generate()
            log.info("created the release-log signing key %s... in %s (mode 0600)", signer.key_id[:16], path)
        write_secret_file(path, _pem(signer))
        where = str(path)
    if legacy is not None:
        if legacy != signer.private_bytes():
            raise InvalidKey(f"the database still holds a release-log signing key that differs from {where}; "
                             f"remove one of them (the log's heads name key {signer.key_id[:16]}...)")
        _drop_legacy_key(store)
    return signer
