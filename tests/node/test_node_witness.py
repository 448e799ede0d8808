"""The node's witness: key file hygiene, persisted view, loud refusal of an inconsistent head."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from xdp_compute.audit import MerkleTree, TreeHeadSigner
from xdp_compute.audit.note import ALG_ED25519, Checkpoint, format_note, log_origin, vkey
from xdp_compute.audit.witness import format_add_checkpoint
from xdp_compute.errors import InvalidKey
from xdp_compute.node.witness import NodeWitness
from xdp_compute.v1 import node_pb2 as pb


def offer(signer: TreeHeadSigner, leaves: list[bytes], old: int) -> pb.CheckpointOffer:
    tree, origin = MerkleTree.from_leaves(leaves), log_origin(signer.key_id)
    body = Checkpoint(origin, tree.size, tree.root()).body()
    note = format_note(body, [signer.sign_note(origin, body)])
    proof = tree.consistency_proof(old) if 0 < old < tree.size else []
    return pb.CheckpointOffer(add_checkpoint=format_add_checkpoint(old, proof, note),
                              log_vkey=vkey(origin, ALG_ED25519, signer.public_key_bytes()))


def test_witness_persists_its_view_and_refuses_a_rewrite(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    signer = TreeHeadSigner.generate()
    w = NodeWitness(tmp_path, "clinic-0", refresh=60)
    assert (tmp_path / "witness.key").stat().st_mode & 0o777 == 0o600
    leaves = [b"a", b"b", b"c"]
    assert w.consider(offer(signer, leaves, 0), now=100) is not None
    assert w.consider(offer(signer, leaves, 3), now=101) is None  # nothing new, cosigned recently
    assert w.consider(offer(signer, leaves, 3), now=200) is not None  # refreshed
    again = NodeWitness(tmp_path, "clinic-0")  # a restart keeps key and view
    assert again.vkey == w.vkey and again.view == w.view
    with caplog.at_level(logging.ERROR):
        assert again.consider(offer(signer, [b"a", b"X", b"c", b"d"], 3), now=300) is None
        assert again.consider(offer(signer, [b"a", b"b"], 3), now=301) is None
    assert "REFUSES TO COSIGN" in caplog.text and "not consistent" in caplog.text and "shrank" in caplog.text
    assert again.view is not None and again.view.tree_size == 3
    assert again.consider(offer(signer, [*leaves, b"d"], 3), now=302) is not None  # the honest extension


def test_loose_witness_key_is_refused(tmp_path: Path) -> None:
    NodeWitness(tmp_path, "clinic-0")
    (tmp_path / "witness.key").chmod(0o640)
    with pytest.raises(InvalidKey, match="readable"):
        NodeWitness(tmp_path, "clinic-0")
