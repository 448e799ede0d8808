"""Ed25519 signed tree heads."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
from typing import Any

import pytest

from xdp_compute.audit.canonical import canonical_json
from xdp_compute.audit.heads import SignedTreeHead, TreeHeadSigner, key_id_for, verify_tree_head
from xdp_compute.errors import InvalidKey, ProofError

ROOT = hashlib.sha256(b"some root").digest()


@pytest.fixture(scope="module")
def signer() -> TreeHeadSigner:
    return TreeHeadSigner.from_private_bytes(bytes(range(32)))


def test_sign_verify_round_trip(signer: TreeHeadSigner) -> None:
    sth = signer.sign(7, ROOT, timestamp_ms=1_700_000_000_000)
    assert (sth.tree_size, sth.root_hash, sth.timestamp_ms, sth.key_id) == (
        7,
        ROOT,
        1_700_000_000_000,
        signer.key_id,
    )
    assert len(sth.signature) == 64
    verify_tree_head(sth, signer.public_key_bytes())


def test_signed_message_is_canonical_json(signer: TreeHeadSigner) -> None:
    sth = signer.sign(3, ROOT, timestamp_ms=42)
    expected = canonical_json(
        {"tree_size": 3, "root_hash": ROOT.hex(), "timestamp_ms": 42, "key_id": signer.key_id}
    )
    assert sth.signed_message() == expected
    assert expected.startswith(b'{"key_id":"')


def test_key_material(signer: TreeHeadSigner) -> None:
    pub = signer.public_key_bytes()
    assert len(pub) == 32
    assert signer.key_id == hashlib.sha256(pub).hexdigest() == key_id_for(pub)
    again = TreeHeadSigner.from_private_bytes(signer.private_bytes())
    assert again.public_key_bytes() == pub
    # Ed25519 is deterministic (RFC 8032): same key and message -> same signature.
    assert again.sign(1, ROOT, 5) == signer.sign(1, ROOT, 5)
    assert signer.private_bytes().hex() not in repr(signer)
    fresh_a, fresh_b = TreeHeadSigner.generate(), TreeHeadSigner.generate()
    assert fresh_a.public_key_bytes() != fresh_b.public_key_bytes()
    with pytest.raises(InvalidKey):
        TreeHeadSigner.from_private_bytes(b"\x00" * 31)


def test_default_timestamp_is_set(signer: TreeHeadSigner) -> None:
    sth = signer.sign(1, ROOT)
    assert isinstance(sth.timestamp_ms, int) and sth.timestamp_ms > 0
    verify_tree_head(sth, signer.public_key_bytes())


def test_dict_round_trip(signer: TreeHeadSigner) -> None:
    sth = signer.sign(9, ROOT, timestamp_ms=11)
    data = json.loads(json.dumps(sth.to_dict()))
    assert data["root_hash"] == ROOT.hex()
    assert base64.b64decode(data["signature"]) == sth.signature
    back = SignedTreeHead.from_dict(data)
    assert back == sth
    verify_tree_head(back, signer.public_key_bytes())


@pytest.mark.parametrize(
    "change",
    [
        {"tree_size": 8},
        {"root_hash": hashlib.sha256(b"other").digest()},
        {"timestamp_ms": 12},
    ],
)
def test_any_field_change_breaks_signature(signer: TreeHeadSigner, change: dict[str, Any]) -> None:
    sth = dataclasses.replace(signer.sign(9, ROOT, timestamp_ms=11), **change)
    with pytest.raises(ProofError, match="does not verify"):
        verify_tree_head(sth, signer.public_key_bytes())


def test_flipped_signature_bit(signer: TreeHeadSigner) -> None:
    sth = signer.sign(9, ROOT, timestamp_ms=11)
    for i in (0, 31, 63):
        sig = bytearray(sth.signature)
        sig[i] ^= 0x04
        with pytest.raises(ProofError, match="does not verify"):
            verify_tree_head(dataclasses.replace(sth, signature=bytes(sig)), signer.public_key_bytes())


def test_other_key_is_named(signer: TreeHeadSigner) -> None:
    other = TreeHeadSigner.from_private_bytes(b"\x07" * 32)
    sth = other.sign(2, ROOT, 1)
    with pytest.raises(ProofError, match="signed by key"):
        verify_tree_head(sth, signer.public_key_bytes())
    # Claiming the right key id does not help a signature made with another key.
    forged = dataclasses.replace(sth, key_id=signer.key_id)
    with pytest.raises(ProofError, match="does not verify"):
        verify_tree_head(forged, signer.public_key_bytes())
    with pytest.raises(ProofError, match="32 raw bytes"):
        verify_tree_head(sth, b"short")


@pytest.mark.parametrize(
    ("mutate", "fragment"),
    [
        (lambda d: d.pop("signature"), "lacks signature"),
        (lambda d: d.update(extra=1), "unknown fields"),
        (lambda d: d.update(root_hash="zz"), "hex"),
        (lambda d: d.update(root_hash="00" * 31), "32 bytes"),
        (lambda d: d.update(signature="***"), "base64"),
        (lambda d: d.update(signature=base64.b64encode(b"x" * 63).decode()), "64 bytes"),
        (lambda d: d.update(tree_size=True), "tree_size"),
        (lambda d: d.update(tree_size=-1), "tree_size"),
        (lambda d: d.update(timestamp_ms="1"), "timestamp_ms"),
        (lambda d: d.update(key_id="AB" * 32), "key_id"),
        (lambda d: d.update(key_id="ab"), "key_id"),
    ],
)
def test_from_dict_rejects_malformed(signer: TreeHeadSigner, mutate: Any, fragment: str) -> None:
    data = signer.sign(4, ROOT, 3).to_dict()
    mutate(data)
    with pytest.raises(ProofError, match=fragment):
        SignedTreeHead.from_dict(data)
