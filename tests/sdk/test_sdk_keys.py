"""The SDK's Paillier key pair: created once, loaded from its owner-only file, not re-checked
while the file is unchanged, and loaded (or refused) afresh once it changes (issue #13)."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from xdp_compute.errors import InvalidKey

he = pytest.importorskip("xdp_compute.sdk.he")
P = pytest.importorskip("xdp_compute.crypto.paillier")

BITS = 2048


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Every path the SDK loads a key from, in order."""
    seen: list[Path] = []
    real = he.load_private_key

    def counting(path: Any) -> Any:
        seen.append(Path(path))
        return real(path)

    monkeypatch.setattr(he, "load_private_key", counting)
    he._LOADED.clear()
    return seen


def test_an_unchanged_key_file_is_loaded_once(tmp_path: Path, loads: list[Path]) -> None:
    client = SimpleNamespace(key_dir=str(tmp_path))
    public, private = he.paillier_keys(client, BITS)  # created and saved, not loaded
    assert loads == []
    for _ in range(3):
        again = he.paillier_keys(client, BITS)
        assert again[0].n == public.n and again[1].p == private.p
    assert len(loads) == 1


def test_a_rewritten_or_exposed_key_file_is_loaded_again(tmp_path: Path, loads: list[Path]) -> None:
    client = SimpleNamespace(key_dir=str(tmp_path))
    he.paillier_keys(client, BITS)
    he.paillier_keys(client, BITS)
    path = tmp_path / f"paillier-{BITS}.json"
    _, other = P.generate_keypair(BITS)
    path.unlink()
    P.save_private_key(path, other)  # another key under the same name
    assert he.paillier_keys(client, BITS)[1].public.n == other.public.n
    assert len(loads) == 2
    os.chmod(path, 0o644)  # readable by others: refused, not served from memory
    with pytest.raises(InvalidKey, match="readable by group or others"):
        he.paillier_keys(client, BITS)
