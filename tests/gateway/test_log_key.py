"""The release log's signing key lives outside the database (issue #12)."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from xdp_compute.audit import TreeHeadSigner
from xdp_compute.config import Settings
from xdp_compute.errors import InvalidKey
from xdp_compute.gateway import models as m
from xdp_compute.gateway.log_key import LEGACY_SECRET, load_log_signer
from xdp_compute.gateway.store import Store


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store.open(f"sqlite:///{tmp_path / 'gw.db'}")


def test_key_file_is_created_0600_and_reused(tmp_path: Path, store: Store) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    first = load_log_signer(settings, store)
    key = tmp_path / "data" / "release-log.key"
    assert key.stat().st_mode & 0o777 == 0o600 and key.read_bytes().startswith(b"-----BEGIN PRIVATE KEY")
    assert load_log_signer(settings, store).key_id == first.key_id
    key.chmod(0o644)
    with pytest.raises(InvalidKey, match="0644"):
        load_log_signer(settings, store)


def test_legacy_database_key_is_moved_out(tmp_path: Path, store: Store) -> None:
    old = TreeHeadSigner.generate()
    with store.write() as s:
        s.add(m.Secret(name=LEGACY_SECRET, value=old.private_bytes()))
    signer = load_log_signer(Settings(log_key_path=tmp_path / "k.pem"), store)
    assert signer.key_id == old.key_id and (tmp_path / "k.pem").exists()
    with store.read() as s:
        assert s.get(m.Secret, LEGACY_SECRET) is None
    # A database that still holds a different key is refused: someone must decide.
    with store.write() as s:
        s.add(m.Secret(name=LEGACY_SECRET, value=TreeHeadSigner.generate().private_bytes()))
    with pytest.raises(InvalidKey, match="differs"):
        load_log_signer(Settings(log_key_path=tmp_path / "k.pem"), store)


def test_key_from_the_environment(tmp_path: Path, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    signer = TreeHeadSigner.generate()
    monkeypatch.setenv("XDP_LOG_KEY", base64.b64encode(signer.private_bytes()).decode())
    assert load_log_signer(Settings(data_dir=tmp_path), store).key_id == signer.key_id
    assert not (tmp_path / "release-log.key").exists()
