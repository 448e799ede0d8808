"""RFC 9162 Merkle tree: public vectors, RFC 6962 reference tree, own proofs, complexity."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest

from xdp_compute.audit import merkle
from xdp_compute.audit.merkle import (
    EMPTY_ROOT,
    InvalidTreeRange,
    MerkleTree,
    hash_children,
    hash_leaf,
    verify_consistency,
    verify_inclusion,
)
from xdp_compute.errors import BadRequest, ProofError

# -- public vectors (transparency-dev/merkle testdata), read in place -----------------------


def _vector_dir() -> Path:
    env = os.environ.get("XDP_MERKLE_TESTDATA")
    if env:
        return Path(env)
    # tests/audit/<this file> -> parents[3] is the folder holding the project and "shared".
    return Path(__file__).resolve().parents[3] / "shared" / "testdata" / "merkle"


VECTOR_DIR = _vector_dir()
_ABSENT = f"Merkle test vectors not found at {VECTOR_DIR} (set XDP_MERKLE_TESTDATA)"


def _vector_files(kind: str) -> list[Any]:
    if not VECTOR_DIR.is_dir():
        return [pytest.param(None, marks=pytest.mark.skip(reason=_ABSENT), id="vectors-absent")]
    files = sorted((VECTOR_DIR / kind).rglob("*.json"))
    return [pytest.param(f, id=str(f.relative_to(VECTOR_DIR))) for f in files]


def _b64(value: str) -> bytes:
    return base64.b64decode(value)


def _proof(value: list[str] | None) -> list[bytes] | None:
    return None if value is None else [_b64(p) for p in value]


@pytest.mark.parametrize("path", _vector_files("inclusion"))
def test_inclusion_vector(path: Path) -> None:
    vec = json.loads(path.read_text())
    args = (_b64(vec["leafHash"]), vec["leafIdx"], vec["treeSize"], _proof(vec["proof"]), _b64(vec["root"]))
    if vec["wantErr"]:
        with pytest.raises(ProofError) as info:
            verify_inclusion(*args)
        assert info.value.detail  # says why
    else:
        verify_inclusion(*args)


@pytest.mark.parametrize("path", _vector_files("consistency"))
def test_consistency_vector(path: Path) -> None:
    vec = json.loads(path.read_text())
    args = (vec["size1"], vec["size2"], _b64(vec["root1"]), _b64(vec["root2"]), _proof(vec["proof"]))
    if vec["wantErr"]:
        with pytest.raises(ProofError) as info:
            verify_consistency(*args)
        assert info.value.detail
    else:
        verify_consistency(*args)


def test_vectors_are_all_there() -> None:
    """Guard against a glob that silently finds nothing (the parametrised tests would vanish)."""
    if not VECTOR_DIR.is_dir():
        pytest.skip(_ABSENT)
    inclusion = list((VECTOR_DIR / "inclusion").rglob("*.json"))
    consistency = list((VECTOR_DIR / "consistency").rglob("*.json"))
    assert len(inclusion) >= 80 and len(consistency) >= 80
    happy = [p for p in inclusion + consistency if p.name == "happy-path.json"]
    assert len(happy) >= 10
    assert any(json.loads(p.read_text())["proof"] is None for p in inclusion)
    assert any(json.loads(p.read_text())["wantErr"] for p in consistency)


# -- RFC 6962 reference tree ----------------------------------------------------------------

REFERENCE_LEAVES = [
    bytes.fromhex(h)
    for h in [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ]
]
REFERENCE_ROOT_8 = "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"
# Roots at sizes 1..8 as published with the RFC 6962 test data (transparency-dev/merkle).
REFERENCE_ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    REFERENCE_ROOT_8,
]


def test_reference_tree_roots() -> None:
    tree = MerkleTree.from_leaves(REFERENCE_LEAVES)
    assert tree.root().hex() == REFERENCE_ROOT_8
    assert [tree.root(s).hex() for s in range(1, 9)] == REFERENCE_ROOTS
    assert tree.root(0) == EMPTY_ROOT == hashlib.sha256(b"").digest()
    assert EMPTY_ROOT.hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert MerkleTree().root() == EMPTY_ROOT


def test_reference_tree_known_proofs() -> None:
    """Proofs for the reference tree equal the published RFC 6962 test proofs."""
    tree = MerkleTree.from_leaves(REFERENCE_LEAVES)
    assert [h.hex() for h in tree.inclusion_proof(5, 8)] == [
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    ]
    assert [h.hex() for h in tree.inclusion_proof(0, 8)] == [
        "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
    ]
    assert [h.hex() for h in tree.consistency_proof(6, 8)] == [
        "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
        "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    ]
    assert [h.hex() for h in tree.consistency_proof(2, 5)] == [
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
    ]


def test_hash_prefixes() -> None:
    """RFC 9162 §2.1.1 domain separation: 0x00 for leaves, 0x01 for nodes."""
    assert hash_leaf(b"abc") == hashlib.sha256(b"\x00abc").digest()
    left, right = b"L" * 32, b"R" * 32
    assert hash_children(left, right) == hashlib.sha256(b"\x01" + left + right).digest()


# -- own proofs against a naive transcription of RFC 9162 §2.1 -----------------------------


def _k(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def _mth(d: list[bytes]) -> bytes:
    if not d:
        return hashlib.sha256(b"").digest()
    if len(d) == 1:
        return hash_leaf(d[0])
    k = _k(len(d))
    return hash_children(_mth(d[:k]), _mth(d[k:]))


def _path(m: int, d: list[bytes]) -> list[bytes]:
    if len(d) == 1:
        return []
    k = _k(len(d))
    if m < k:
        return _path(m, d[:k]) + [_mth(d[k:])]
    return _path(m - k, d[k:]) + [_mth(d[:k])]


def _subproof(m: int, d: list[bytes], b: bool) -> list[bytes]:
    n = len(d)
    if m == n:
        return [] if b else [_mth(d)]
    k = _k(n)
    if m <= k:
        return _subproof(m, d[:k], b) + [_mth(d[k:])]
    return _subproof(m - k, d[k:], False) + [_mth(d[:k])]


MAX_N = 40
DATA = [f"leaf-{i}".encode() for i in range(MAX_N)]


@pytest.fixture(scope="module")
def tree40() -> MerkleTree:
    return MerkleTree.from_leaves(DATA)


def test_roots_match_naive_definition(tree40: MerkleTree) -> None:
    for size in range(MAX_N + 1):
        assert tree40.root(size) == _mth(DATA[:size]), size


def test_all_inclusion_proofs_up_to_40(tree40: MerkleTree) -> None:
    checked = 0
    for size in range(1, MAX_N + 1):
        root = tree40.root(size)
        for index in range(size):
            proof = tree40.inclusion_proof(index, size)
            assert proof == _path(index, DATA[:size]), (index, size)
            verify_inclusion(hash_leaf(DATA[index]), index, size, proof, root)
            # The same proof must not vouch for a neighbouring leaf or another size.
            other = hash_leaf(DATA[(index + 1) % size] + b"x")
            with pytest.raises(ProofError):
                verify_inclusion(other, index, size, proof, root)
            checked += 1
    assert checked == MAX_N * (MAX_N + 1) // 2


def test_all_consistency_proofs_up_to_40(tree40: MerkleTree) -> None:
    checked = 0
    for size2 in range(1, MAX_N + 1):
        root2 = tree40.root(size2)
        for size1 in range(1, size2 + 1):
            proof = tree40.consistency_proof(size1, size2)
            assert proof == (_subproof(size1, DATA[:size2], True) if size1 < size2 else [])
            root1 = tree40.root(size1)
            verify_consistency(size1, size2, root1, root2, proof)
            if size1 < size2:
                # A log that rewrote an old leaf cannot prove consistency with the old root.
                forged = MerkleTree.from_leaves([b"forged", *DATA[1:size2]])
                with pytest.raises(ProofError):
                    verify_consistency(
                        size1, size2, root1, forged.root(), forged.consistency_proof(size1, size2)
                    )
            checked += 1
    assert checked == MAX_N * (MAX_N + 1) // 2


def test_corrupted_own_proofs_rejected(tree40: MerkleTree) -> None:
    size, index = 37, 21
    root = tree40.root(size)
    proof = tree40.inclusion_proof(index, size)
    leaf = hash_leaf(DATA[index])
    for i in range(len(proof)):
        bad = list(proof)
        bad[i] = bytes([bad[i][0] ^ 1]) + bad[i][1:]
        with pytest.raises(ProofError):
            verify_inclusion(leaf, index, size, bad, root)
    with pytest.raises(ProofError, match="too short"):
        verify_inclusion(leaf, index, size, proof[:-1], root)
    with pytest.raises(ProofError, match="too long"):
        verify_inclusion(leaf, index, size, [*proof, root], root)
    with pytest.raises(ProofError, match="not inside"):
        verify_inclusion(leaf, size, size, proof, root)
    with pytest.raises(ProofError, match="32-byte"):
        verify_inclusion(leaf, index, size, [*proof[:-1], b"short"], root)
    with pytest.raises(ProofError, match="non|negative"):
        verify_inclusion(leaf, -1, size, proof, root)

    cproof = tree40.consistency_proof(13, size)
    root13 = tree40.root(13)
    verify_consistency(13, size, root13, root, cproof)
    with pytest.raises(ProofError, match="too short"):
        verify_consistency(13, size, root13, root, cproof[:-1])
    with pytest.raises(ProofError, match="old root"):
        verify_consistency(13, size, tree40.root(12), root, cproof)
    with pytest.raises(ProofError, match="new root"):
        verify_consistency(13, size, root13, tree40.root(36), cproof)
    with pytest.raises(ProofError, match="smaller"):
        verify_consistency(size, 13, root, root13, cproof)


def test_proof_requests_out_of_range(tree40: MerkleTree) -> None:
    bad_calls = [
        lambda: tree40.root(MAX_N + 1),
        lambda: tree40.root(-1),
        lambda: tree40.inclusion_proof(5, 5),
        lambda: tree40.inclusion_proof(0, 0),
        lambda: tree40.inclusion_proof(0, MAX_N + 1),
        lambda: tree40.consistency_proof(0, 5),
        lambda: tree40.consistency_proof(6, 5),
        lambda: tree40.consistency_proof(5, MAX_N + 1),
        lambda: tree40.leaf_hash(MAX_N),
    ]
    for call in bad_calls:
        with pytest.raises(InvalidTreeRange) as info:
            call()
        assert isinstance(info.value, BadRequest) and info.value.status == 400
    assert tree40.consistency_proof(7, 7) == []
    assert tree40.inclusion_proof(0, 1) == []
    assert tree40.leaf_hash(3) == hash_leaf(DATA[3])


def test_append_returns_index_and_rejects_bad_input() -> None:
    tree = MerkleTree()
    assert [tree.append(d) for d in DATA[:5]] == [0, 1, 2, 3, 4]
    assert len(tree) == tree.size == 5
    assert tree.append_hash(hash_leaf(b"x")) == 5
    with pytest.raises(ValueError):
        tree.append_hash(b"short")
    with pytest.raises(TypeError):
        tree.append("text")  # type: ignore[arg-type]
    assert MerkleTree([hash_leaf(d) for d in DATA[:6]]).root() == _mth(DATA[:6])


# -- cost: appends amortised O(1), roots and proofs O(log n) -------------------------------


class _CountingHash:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, left: bytes, right: bytes) -> bytes:
        self.calls += 1
        return hashlib.sha256(b"\x01" + left + right).digest()


def test_cost_is_logarithmic_on_100k_leaves(monkeypatch: pytest.MonkeyPatch) -> None:
    counter = _CountingHash()
    monkeypatch.setattr(merkle, "hash_children", counter)
    n = 100_000
    tree = MerkleTree(hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(n))
    # Building n leaves hashes exactly the n - popcount(n) complete interior nodes.
    assert counter.calls == n - n.bit_count()

    log_n = n.bit_length()  # 17
    for size in (n, n - 1, 65_537, 99_999, 12_345, 1):
        counter.calls = 0
        tree.root(size)
        assert counter.calls <= log_n, size
        for index in (0, size // 3, size - 1):
            counter.calls = 0
            proof = tree.inclusion_proof(index, size)
            assert counter.calls <= 2 * log_n, (index, size)
            assert len(proof) <= log_n
    for size1, size2 in ((1, n), (65_536, n), (12_345, 99_999), (n - 1, n)):
        counter.calls = 0
        tree.consistency_proof(size1, size2)
        assert counter.calls <= 2 * log_n, (size1, size2)

    # Appending one more leaf to a big tree costs at most log2(n) hashes.
    counter.calls = 0
    tree.append(b"one more")
    assert counter.calls <= log_n
