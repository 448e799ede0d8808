"""Verifiable release log: RFC 9162 Merkle tree, Ed25519 signed tree heads, offline verifier.

Pure core (no web, RPC or database imports); the gateway appends entries and serves proofs,
the SDK and ``xdp audit verify`` check them.
"""

from xdp_compute.audit.canonical import CanonicalJsonError, canonical_json
from xdp_compute.audit.heads import (
    SignedTreeHead,
    TreeHeadSigner,
    key_id_for,
    tree_head_message,
    verify_tree_head,
)
from xdp_compute.audit.merkle import (
    EMPTY_ROOT,
    HASH_SIZE,
    InvalidTreeRange,
    MerkleTree,
    hash_children,
    hash_leaf,
    verify_consistency,
    verify_inclusion,
)
from xdp_compute.audit.verify import (
    VerifyReport,
    entry_leaf_hash,
    make_checkpoint,
    verify_log,
    verify_receipt,
)

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "CanonicalJsonError",
    "InvalidTreeRange",
    "MerkleTree",
    "SignedTreeHead",
    "TreeHeadSigner",
    "VerifyReport",
    "canonical_json",
    "entry_leaf_hash",
    "hash_children",
    "hash_leaf",
    "key_id_for",
    "make_checkpoint",
    "tree_head_message",
    "verify_consistency",
    "verify_inclusion",
    "verify_log",
    "verify_receipt",
    "verify_tree_head",
]
