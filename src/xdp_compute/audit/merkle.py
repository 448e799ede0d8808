"""RFC 9162 (Certificate Transparency v2) / RFC 6962 Merkle tree over SHA-256.

The release log is an append-only list of leaves. Its tree hash, inclusion proofs and
consistency proofs follow RFC 9162 §2.1 exactly (which keeps the RFC 6962 hashing):

- leaf hash ``MTH({d}) = SHA-256(0x00 || d)``                          (§2.1.1)
- node hash ``SHA-256(0x01 || MTH(left) || MTH(right))``, split at the largest power of two
  strictly smaller than the number of leaves                             (§2.1.1)
- empty tree ``MTH({}) = SHA-256()``                                    (§2.1.1)

:class:`MerkleTree` caches every complete, aligned subtree (a binary "level" table), so an
append costs amortised O(1) hashes and ``root``, ``inclusion_proof`` and ``consistency_proof``
for *any* earlier size cost O(log n) hashes — never a rebuild. The verifiers
:func:`verify_inclusion` and :func:`verify_consistency` implement the algorithms of RFC 9162
§2.1.3.2 and §2.1.4.2 and raise :class:`~xdp_compute.errors.ProofError` saying why a proof
failed; they agree with the transparency-dev/merkle test vectors (see ``tests/audit``).

Not thread-safe: the gateway serialises appends (the log is a single writer).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

from xdp_compute.errors import BadRequest, ProofError

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "InvalidTreeRange",
    "MerkleTree",
    "hash_children",
    "hash_leaf",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32
"""Size in bytes of every hash in the tree (SHA-256)."""

EMPTY_ROOT = hashlib.sha256(b"").digest()
"""RFC 9162 §2.1.1: the hash of an empty tree is the hash of an empty string."""

_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"


class InvalidTreeRange(BadRequest):
    """A proof or root was requested for sizes or an index the tree cannot answer."""

    slug, title = "invalid-tree-range", "Invalid tree size or leaf index"


def hash_leaf(data: bytes) -> bytes:
    """RFC 9162 §2.1.1 leaf hash: SHA-256(0x00 || data)."""
    return hashlib.sha256(_LEAF_PREFIX + data).digest()


def hash_children(left: bytes, right: bytes) -> bytes:
    """RFC 9162 §2.1.1 interior node hash: SHA-256(0x01 || left || right)."""
    return hashlib.sha256(_NODE_PREFIX + left + right).digest()


def _largest_power_of_two_below(n: int) -> int:
    """The k of RFC 9162 §2.1.1: the largest power of two with k < n (requires n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


class MerkleTree:
    """Append-only RFC 9162 Merkle tree of leaf hashes with O(log n) roots and proofs.

    ``_levels[h][i]`` holds the hash of the complete subtree of ``2**h`` leaves starting at
    leaf ``i * 2**h``; level 0 are the leaf hashes. A subtree is stored as soon as its last
    leaf is appended, so every hash the RFC 9162 recursion needs for a tree of any size
    ``<= len(self)`` is either a table lookup (complete aligned subtree) or one of at most
    ``log2(n)`` hashes along the right border.
    """

    __slots__ = ("_levels",)

    def __init__(self, leaf_hashes: Iterable[bytes] = ()) -> None:
        self._levels: list[list[bytes]] = [[]]
        for leaf_hash in leaf_hashes:
            self.append_hash(leaf_hash)

    @classmethod
    def from_leaves(cls, leaves: Iterable[bytes]) -> MerkleTree:
        """Build a tree from raw leaf data (each is hashed with :func:`hash_leaf`)."""
        tree = cls()
        for data in leaves:
            tree.append(data)
        return tree

    def __len__(self) -> int:
        return len(self._levels[0])

    @property
    def size(self) -> int:
        """Number of leaves appended so far."""
        return len(self._levels[0])

    def append(self, data: bytes) -> int:
        """Append raw leaf data (hashed per RFC 9162 §2.1.1); return its 0-based index."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"leaf data must be bytes, not {type(data).__name__}")
        return self.append_hash(hash_leaf(bytes(data)))

    def append_hash(self, leaf_hash: bytes) -> int:
        """Append an already computed leaf hash; return its 0-based index.

        Amortised O(1): each append completes on average one new interior subtree.
        """
        if not isinstance(leaf_hash, bytes) or len(leaf_hash) != HASH_SIZE:
            raise ValueError(f"leaf hash must be {HASH_SIZE} bytes")
        levels = self._levels
        levels[0].append(leaf_hash)
        index = len(levels[0]) - 1
        height = 0
        # An odd index closes a pair of siblings: hash them into the level above, and repeat
        # while the new parent is itself a right child.
        while index & 1:
            row = levels[height]
            parent = hash_children(row[index - 1], row[index])
            height += 1
            if height == len(levels):
                levels.append([])
            levels[height].append(parent)
            index >>= 1
        return len(levels[0]) - 1

    def leaf_hash(self, index: int) -> bytes:
        """The stored leaf hash at ``index``."""
        if not 0 <= index < len(self):
            raise InvalidTreeRange(f"leaf index {index} is outside a tree of {len(self)} leaves")
        return self._levels[0][index]

    # -- RFC 9162 §2.1.1: MTH over any prefix ----------------------------------------------

    def _subtree(self, start: int, end: int) -> bytes:
        """MTH(D[start:end]) for a range the RFC 9162 recursion produces (start aligned).

        Every range reached from ``(0, n)`` by the §2.1.1 split starts at a multiple of a power
        of two at least as large as its own left part, so the left half is always a complete
        aligned subtree (a lookup) and only the right border is hashed: O(log n).
        """
        count = end - start
        if count & (count - 1) == 0:
            # Complete subtree of 2**h leaves, aligned by construction.
            height = count.bit_length() - 1
            return self._levels[height][start >> height]
        k = _largest_power_of_two_below(count)
        return hash_children(self._subtree(start, start + k), self._subtree(start + k, end))

    def _check_size(self, size: int, what: str = "tree size") -> None:
        if isinstance(size, bool) or not isinstance(size, int):
            raise InvalidTreeRange(f"{what} must be an integer")
        if not 0 <= size <= len(self):
            raise InvalidTreeRange(f"{what} {size} is outside 0..{len(self)} (current size)")

    def root(self, size: int | None = None) -> bytes:
        """RFC 9162 §2.1.1 root hash of the first ``size`` leaves (default: all)."""
        if size is None:
            size = len(self)
        self._check_size(size)
        if size == 0:
            return EMPTY_ROOT
        return self._subtree(0, size)

    # -- RFC 9162 §2.1.3.1: inclusion proof -----------------------------------------------

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """RFC 9162 §2.1.3.1 PATH(index, D[0:size]): sibling hashes, leaf level first."""
        if size is None:
            size = len(self)
        self._check_size(size)
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < size:
            raise InvalidTreeRange(f"leaf index {index} is outside a tree of size {size}")
        # Walk from the root down; PATH(m, D[n]) appends the sibling subtree after the path
        # inside the chosen half, so siblings collected top-down are reversed at the end.
        siblings: list[bytes] = []
        start, end, m = 0, size, index
        while end - start > 1:
            k = _largest_power_of_two_below(end - start)
            if m < k:
                siblings.append(self._subtree(start + k, end))  # PATH(m, D[0:k]) : MTH(D[k:n])
                end = start + k
            else:
                siblings.append(self._subtree(start, start + k))  # PATH(m-k, D[k:n]) : MTH(D[0:k])
                start, m = start + k, m - k
        siblings.reverse()
        return siblings

    # -- RFC 9162 §2.1.4.1: consistency proof ---------------------------------------------

    def consistency_proof(self, size1: int, size2: int | None = None) -> list[bytes]:
        """RFC 9162 §2.1.4.1 PROOF(size1, D[0:size2]) = SUBPROOF(size1, D[0:size2], true).

        ``size1 == size2`` gives the empty proof; a proof from the empty tree is meaningless
        (every tree extends it) and is refused, as are sizes beyond the current tree.
        """
        if size2 is None:
            size2 = len(self)
        self._check_size(size1, "size1")
        self._check_size(size2, "size2")
        if size1 > size2:
            raise InvalidTreeRange(f"size1 {size1} is larger than size2 {size2}")
        if size1 == size2:
            return []
        if size1 == 0:
            raise InvalidTreeRange("a consistency proof from the empty tree is meaningless")
        # Iterative SUBPROOF: collect top-down, reverse at the end (deepest hash first).
        parts: list[bytes] = []
        start, end, m, complete = 0, size2, size1, True
        while m != end - start:
            n = end - start
            k = _largest_power_of_two_below(n)
            if m <= k:
                # SUBPROOF(m, D[0:k], b) : MTH(D[k:n])
                parts.append(self._subtree(start + k, end))
                end = start + k
            else:
                # SUBPROOF(m-k, D[k:n], false) : MTH(D[0:k])
                parts.append(self._subtree(start, start + k))
                start, m, complete = start + k, m - k, False
        if not complete:
            # SUBPROOF(m, D[m], false) = {MTH(D[m])}: the old subtree is not a left spine node
            # whose hash the verifier already knows, so it is sent.
            parts.append(self._subtree(start, end))
        parts.reverse()
        return parts


# -- verifiers ------------------------------------------------------------------------------


def _require_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProofError(f"{name} must be an integer, got {type(value).__name__}")
    if value < 0:
        raise ProofError(f"{name} must not be negative, got {value}")
    return value


def _require_hashes(proof: Sequence[bytes] | None, what: str) -> list[bytes]:
    items = [] if proof is None else list(proof)
    for i, item in enumerate(items):
        if not isinstance(item, bytes) or len(item) != HASH_SIZE:
            size = len(item) if isinstance(item, bytes) else type(item).__name__
            raise ProofError(f"{what}[{i}] is not a {HASH_SIZE}-byte hash (got {size})")
    return items


def verify_inclusion(
    leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes] | None, root: bytes
) -> None:
    """Check an RFC 9162 §2.1.3.2 inclusion proof; raise :class:`ProofError` if it fails.

    ``leaf_hash`` is the leaf's hash (``hash_leaf(data)``), ``index`` its 0-based position
    and ``root`` the signed root of the tree of ``size`` leaves. ``proof=None`` means empty.
    """
    index = _require_int(index, "leaf index")
    size = _require_int(size, "tree size")
    # Step 1: the index must lie inside the tree.
    if index >= size:
        raise ProofError(f"leaf index {index} is not inside a tree of size {size}")
    if not isinstance(leaf_hash, bytes) or len(leaf_hash) != HASH_SIZE:
        raise ProofError(f"leaf hash must be {HASH_SIZE} bytes")
    if not isinstance(root, bytes) or len(root) != HASH_SIZE:
        raise ProofError(f"root hash must be {HASH_SIZE} bytes")
    path = _require_hashes(proof, "inclusion proof")

    # Steps 2-3.
    fn, sn = index, size - 1
    r = leaf_hash
    # Step 4.
    for p in path:
        if sn == 0:  # 4a: more hashes than levels in the tree.
            raise ProofError(f"inclusion proof too long: {len(path)} hashes for leaf {index} of {size}")
        if fn & 1 or fn == sn:  # 4b: p is a left sibling (or we are on the right border).
            r = hash_children(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = hash_children(r, p)
        fn >>= 1  # 4c
        sn >>= 1
    # Step 5.
    if sn != 0:
        raise ProofError(f"inclusion proof too short: {len(path)} hashes for leaf {index} of {size}")
    if r != root:
        raise ProofError(
            f"inclusion proof for leaf {index} in tree of size {size} yields root {r.hex()}, "
            f"not the expected {root.hex()}"
        )


def verify_consistency(
    size1: int, size2: int, root1: bytes, root2: bytes, proof: Sequence[bytes] | None
) -> None:
    """Check an RFC 9162 §2.1.4.2 consistency proof; raise :class:`ProofError` if it fails.

    Proves that the tree of ``size2`` leaves with root ``root2`` extends (append-only) the
    tree of ``size1`` leaves with root ``root1``. Edge cases, matching the transparency-dev
    vectors: equal sizes need an empty proof and equal roots (for size 0 the root must be the
    empty-tree hash); a proof *from* the empty tree (``size1 == 0 < size2``) is refused as
    meaningless; ``proof=None`` means empty.
    """
    size1 = _require_int(size1, "size1")
    size2 = _require_int(size2, "size2")
    if size2 < size1:
        raise ProofError(f"size2 ({size2}) is smaller than size1 ({size1}): not an extension")
    path = _require_hashes(proof, "consistency proof") if proof else []
    if size1 == size2:
        if proof:
            raise ProofError(f"sizes are equal ({size1}) but the consistency proof is not empty")
        if root1 != root2:
            raise ProofError(f"sizes are equal ({size1}) but the roots differ")
        if size1 == 0 and root1 != EMPTY_ROOT:
            raise ProofError("a tree of size 0 must have the empty-tree root SHA-256()")
        return
    if size1 == 0:
        raise ProofError("a consistency proof from the empty tree (size1 = 0) is meaningless")
    if not isinstance(root1, bytes) or len(root1) != HASH_SIZE:
        raise ProofError(f"root1 must be {HASH_SIZE} bytes")
    if not isinstance(root2, bytes) or len(root2) != HASH_SIZE:
        raise ProofError(f"root2 must be {HASH_SIZE} bytes")
    # Step 1.
    if not path:
        raise ProofError(f"empty consistency proof between different sizes {size1} and {size2}")
    # Step 2: when size1 is a power of two the old root is a node of the new tree that the
    # prover leaves out; the verifier knows it.
    if size1 & (size1 - 1) == 0:
        path = [root1, *path]
    # Step 3.
    fn, sn = size1 - 1, size2 - 1
    # Step 4.
    while fn & 1:
        fn >>= 1
        sn >>= 1
    # Step 5.
    fr = sr = path[0]
    # Step 6.
    for c in path[1:]:
        if sn == 0:  # 6a
            raise ProofError(f"consistency proof too long for sizes {size1} -> {size2} ({len(path)} hashes)")
        if fn & 1 or fn == sn:  # 6b
            fr = hash_children(c, fr)
            sr = hash_children(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = hash_children(sr, c)
        fn >>= 1  # 6c
        sn >>= 1
    # Step 7.
    if sn != 0:
        raise ProofError(f"consistency proof too short for sizes {size1} -> {size2}")
    if fr != root1:
        raise ProofError(
            f"consistency proof does not reproduce the old root at size {size1} ({fr.hex()} != {root1.hex()})"
        )
    if sr != root2:
        raise ProofError(
            f"consistency proof does not reproduce the new root at size {size2} ({sr.hex()} != {root2.hex()})"
        )
