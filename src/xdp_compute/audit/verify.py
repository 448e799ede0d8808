"""Offline verification of the release log: the engine behind ``xdp audit verify``.

An auditor downloads every log entry (JSON objects with an ``"index"`` field), every signed
tree head (the gateway signs one after each append, so there is one for every size 1..n) and
the log's public key, and optionally holds a *checkpoint* saved by an earlier successful run
(``{"tree_size", "root_hash", "public_key", "key_id"}``; hex encodings). :func:`verify_log`
rebuilds the RFC 9162 Merkle tree from ``canonical_json(entry)`` of each entry *in the order
downloaded* and reports, by name:

- **edited** entry: the first size whose recomputed root (RFC 9162 §2.1.1) disagrees with a
  validly signed head of that size pins the edit to one entry (heads exist for every size);
- **deleted** entry: a gap in the ``index`` sequence;
- **reordered** entries: indices out of sequence (and the roots from there on disagree);
- **truncated tail**: a signed head, or the checkpoint, covers more entries than downloaded;
- **rewritten history / no extension**: the root at the checkpoint's size differs from the
  checkpoint, or the latest signed head fails an RFC 9162 §2.1.4 consistency proof from the
  checkpoint (the proof is computed from the recomputed tree and checked with
  :func:`~xdp_compute.audit.merkle.verify_consistency`);
- **replaced signing key**: the published key differs from the checkpoint's pinned key, heads
  name another key, or signatures do not verify; with a checkpoint, heads are checked against
  the *pinned* key, which is the auditor's trust anchor;
- **split view**: two validly signed heads of one size with different roots.

- **not witnessed / rewritten / truncated under the log's own key**: with pinned witnesses
  (``witnesses=``), a quorum of them must have cosigned the C2SP checkpoint of the whole
  download, recently, and none may have cosigned a size or root the download contradicts
  (:mod:`xdp_compute.audit.witnessed`). This needs no checkpoint: the operator holds the
  signing key and can re-sign any rewrite, but cannot make honest witnesses cosign it.

Without a checkpoint or witnesses the published key is trusted on first use and a log
rewritten and fully re-signed by its operator cannot be caught.

:func:`verify_receipt` checks one delivered result's receipt (RFC 9162 §2.1.3.2 inclusion
proof under a signed head).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from xdp_compute.audit.canonical import CanonicalJsonError, canonical_json
from xdp_compute.audit.heads import (
    PUBLIC_KEY_SIZE,
    SignedTreeHead,
    key_id_for,
    verify_tree_head,
)
from xdp_compute.audit.merkle import (
    HASH_SIZE,
    MerkleTree,
    hash_leaf,
    verify_consistency,
    verify_inclusion,
)
from xdp_compute.audit.note import log_origin
from xdp_compute.audit.witnessed import PinnedWitness, check_witnesses
from xdp_compute.errors import ProofError

__all__ = [
    "VerifyReport",
    "entry_leaf_hash",
    "make_checkpoint",
    "verify_log",
    "verify_receipt",
]

# Leaf hash used for an entry that cannot be canonically encoded: no canonical JSON text is
# empty, so it can never equal a real entry's leaf and every root over it disagrees.
_UNENCODABLE_LEAF = hash_leaf(b"")


@dataclass
class VerifyReport:
    """Outcome of :func:`verify_log`.

    ``tree_size`` and ``root_hash`` describe the log as recomputed from the downloaded
    entries. ``first_bad_index`` is the lowest log index shown to be missing, moved or altered
    (``None`` when no single entry can be blamed, e.g. a replaced key).
    """

    ok: bool
    tree_size: int
    root_hash: bytes
    problems: list[str] = field(default_factory=list)
    first_bad_index: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON form for the CLI and REST (root hash in hex)."""
        return {
            "ok": self.ok,
            "tree_size": self.tree_size,
            "root_hash": self.root_hash.hex(),
            "problems": list(self.problems),
            "first_bad_index": self.first_bad_index,
        }


def entry_leaf_hash(entry: Mapping[str, Any]) -> bytes:
    """The RFC 9162 leaf hash of a log entry: ``hash_leaf(canonical_json(entry))``."""
    return hash_leaf(canonical_json(entry))


# -- small decoding helpers -----------------------------------------------------------------


def _decode_key(public_key: bytes | str, what: str = "public key") -> bytes:
    """Raw Ed25519 public key from bytes or a hex string; :class:`ProofError` if malformed."""
    if isinstance(public_key, str):
        try:
            public_key = bytes.fromhex(public_key)
        except ValueError:
            raise ProofError(f"{what} is not valid hex") from None
    if not isinstance(public_key, bytes) or len(public_key) != PUBLIC_KEY_SIZE:
        raise ProofError(f"{what} must be a {PUBLIC_KEY_SIZE}-byte Ed25519 key")
    return public_key


def _decode_hash(value: bytes | str, what: str) -> bytes:
    if isinstance(value, str):
        try:
            value = bytes.fromhex(value)
        except ValueError:
            raise ProofError(f"{what} is not valid hex") from None
    if not isinstance(value, bytes) or len(value) != HASH_SIZE:
        raise ProofError(f"{what} must be a {HASH_SIZE}-byte hash")
    return value


@dataclass(frozen=True)
class _Checkpoint:
    tree_size: int
    root_hash: bytes
    public_key: bytes
    key_id: str


def _parse_checkpoint(data: Mapping[str, Any]) -> _Checkpoint:
    if not isinstance(data, Mapping):
        raise ProofError("checkpoint must be a JSON object")
    missing = {"tree_size", "root_hash", "public_key", "key_id"} - data.keys()
    if missing:
        raise ProofError(f"checkpoint lacks {', '.join(sorted(missing))}")
    size = data["tree_size"]
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ProofError("checkpoint tree_size must be a non-negative integer")
    root = _decode_hash(data["root_hash"], "checkpoint root_hash")
    key = _decode_key(data["public_key"], "checkpoint public_key")
    if data["key_id"] != key_id_for(key):
        raise ProofError("checkpoint key_id is not the SHA-256 of its public_key")
    return _Checkpoint(size, root, key, data["key_id"])


def _ranges(values: Sequence[int], limit: int = 8) -> str:
    """Compact, deterministic listing: [1, 2, 3, 7] -> "1..3, 7"."""
    ordered = sorted(set(values))
    groups: list[tuple[int, int]] = []
    for v in ordered:
        if groups and v == groups[-1][1] + 1:
            groups[-1] = (groups[-1][0], v)
        else:
            groups.append((v, v))
    parts = [str(a) if a == b else f"{a}..{b}" for a, b in groups[:limit]]
    if len(groups) > limit:
        parts.append(f"and {len(groups) - limit} more ranges")
    return ", ".join(parts)


def _entries(indices: Sequence[int]) -> str:
    """ "entry 4 is" / "entries 4..9 are", for messages."""
    if len(indices) == 1:
        return f"entry {indices[0]} is"
    return f"entries {_ranges(indices)} are"


class _Findings:
    """Problems in the order found, plus candidate indices for ``first_bad_index``."""

    def __init__(self) -> None:
        self.problems: list[str] = []
        self.bad: list[int] = []

    def add(self, message: str, bad_index: int | None = None) -> None:
        self.problems.append(message)
        if bad_index is not None:
            self.bad.append(bad_index)


# -- the verifier ---------------------------------------------------------------------------


def verify_log(
    entries: Sequence[Mapping[str, Any]],
    heads: Sequence[SignedTreeHead | Mapping[str, Any]],
    public_key: bytes | str,
    checkpoint: Mapping[str, Any] | None = None,
    *,
    require_every_size: bool = True,
    witnesses: Sequence[PinnedWitness] | None = None,
    cosigned: Sequence[str] = (),
    quorum: int | None = None,
    now: float | None = None,
    max_age: float | None = None,
) -> VerifyReport:
    """Verify a whole downloaded release log offline; never raises for a bad log.

    ``entries`` are the log's entries in log order (leaf i = ``canonical_json(entries[i])``),
    ``heads`` the published signed tree heads (objects or their JSON dicts; duplicates are
    fine), ``public_key`` the log's published raw Ed25519 key (bytes or hex) and
    ``checkpoint`` a dict from :func:`make_checkpoint` of an earlier run. With
    ``require_every_size`` (the gateway's contract) a size 1..n without any head is a problem.
    Cost: O(n log n) hashes and one signature check per distinct head.

    With ``witnesses`` (pinned cosigner keys), ``cosigned`` are the log's checkpoints as C2SP
    signed notes carrying the witnesses' cosignatures; a ``quorum`` (default a majority) must
    vouch for the whole download with cosignatures at most ``max_age`` seconds older than
    ``now`` (POSIX seconds; ``None`` or 0 disables the freshness check).
    """
    # Every step records what it finds and goes on: the auditor gets every problem, in this order.
    found = _Findings()
    n = len(entries)
    # 1. Keys: what do we trust? The checkpoint's pinned key, else the published one.
    trusted, pinned = _check_signing_key(public_key, checkpoint, found)
    # 2. Entries: the index sequence, then the RFC 9162 §2.1.1 tree recomputed from them.
    sequence_intact = _check_index_sequence(entries, found)
    tree = _recompute_tree(entries, found)
    # 3. Heads: parse and deduplicate, check signatures against the trusted key (RFC 9162 §4.10).
    unique = _parse_heads(heads, found)
    verified = _check_head_signatures(unique, trusted, "pinned" if pinned is not None else "published", found)
    _check_split_view(verified, found)
    # 4. Every signed root must equal the recomputed root at its size (RFC 9162 §2.1.1).
    _check_signed_roots(tree, n, verified, sequence_intact, found)
    # 5. Coverage: the download must match what was signed.
    _check_coverage(n, unique, verified, sequence_intact, require_every_size, found)
    # 6. Checkpoint: the log must extend what we saw last time (RFC 9162 §2.1.4).
    if pinned is not None:
        _check_extends_checkpoint(tree, n, pinned, verified, found)
    # 7. Witnesses: a quorum must vouch for this very log, recently (C2SP tlog-cosignature).
    if witnesses is not None and trusted is not None:
        check_witnesses(tree, n, log_origin(key_id_for(trusted)), cosigned, witnesses, quorum,
                        time.time() if now is None else now, max_age, found.add)

    return VerifyReport(
        ok=not found.problems,
        tree_size=n,
        root_hash=tree.root(),
        problems=found.problems,
        first_bad_index=min(found.bad) if found.bad else None,
    )


# -- its steps, in order --------------------------------------------------------------------


def _check_signing_key(
    public_key: bytes | str, checkpoint: Mapping[str, Any] | None, found: _Findings
) -> tuple[bytes | None, _Checkpoint | None]:
    """Step 1: decode the published key and the checkpoint; name a replaced signing key.

    Returns ``(trusted, pinned)``: with a checkpoint its pinned key is the auditor's trust
    anchor, whatever the log now publishes; without one the published key is trusted on first
    use. ``trusted`` is None when no usable key is left (then no head can be verified).
    """
    published: bytes | None
    try:
        published = _decode_key(public_key, "the log's published public key")
    except ProofError as exc:
        found.add(exc.detail)
        published = None
    pinned: _Checkpoint | None = None
    if checkpoint is not None:
        try:
            pinned = _parse_checkpoint(checkpoint)
        except ProofError as exc:
            found.add(f"checkpoint is malformed: {exc.detail}")
    trusted = pinned.public_key if pinned is not None else published
    if pinned is not None and published is not None and published != pinned.public_key:
        found.add(
            f"signing key replaced: the log now publishes key {key_id_for(published)[:16]}... "
            f"but the checkpoint pinned key {pinned.key_id[:16]}...; "
            "tree heads are checked against the pinned key"
        )
    return trusted, pinned


def _check_index_sequence(entries: Sequence[Any], found: _Findings) -> bool:
    """Step 2a: entry at position p must carry ``index == p``; name deletions, duplicates, reorders.

    Returns True when the sequence is intact (so a later root mismatch means an *edit*).
    """
    indices: list[int | None] = []
    for pos, entry in enumerate(entries):
        idx = entry.get("index") if isinstance(entry, Mapping) else None
        if isinstance(idx, bool) or not isinstance(idx, int):
            what = "is not a JSON object" if not isinstance(entry, Mapping) else "has no integer 'index'"
            found.add(f"entry at position {pos} {what}", pos)
            indices.append(None)
        else:
            indices.append(idx)
    if all(idx == pos for pos, idx in enumerate(indices)):
        return True

    valid = [(pos, idx) for pos, idx in enumerate(indices) if idx is not None]
    values = [idx for _, idx in valid]
    negative = [(pos, idx) for pos, idx in valid if idx < 0]
    for pos, idx in negative:
        found.add(f"entry at position {pos} has a negative index {idx}", pos)

    counts = Counter(values)
    duplicated = sorted(idx for idx, c in counts.items() if c > 1)
    if duplicated:
        found.add(
            f"duplicated entries: index {_ranges(duplicated)} appears more than once",
            max(0, duplicated[0]),
        )

    present = set(values)
    top = max(values, default=-1)
    missing = [i for i in range(top + 1) if i not in present]
    if missing:
        if len(missing) == 1:
            i = missing[0]
            before = max((v for v in present if v < i), default=None)
            after = min((v for v in present if v > i), default=None)
            context = (
                f"the index sequence starts at {after}"
                if before is None
                else f"the index sequence jumps from {before} to {after}"
            )
            found.add(f"deleted entry: index {i} is missing from the log ({context})", i)
        else:
            found.add(f"deleted entries: indices {_ranges(missing)} are missing from the log", missing[0])

    if values != sorted(values):
        if len(values) == len(entries) and sorted(values) == list(range(len(entries))):
            # A pure permutation: say exactly which positions hold which entry.
            moved = [(pos, idx) for pos, idx in valid if idx != pos]
            listing = ", ".join(f"position {pos} holds entry {idx}" for pos, idx in moved[:10])
            more = f" and {len(moved) - 10} more" if len(moved) > 10 else ""
            found.add(f"reordered entries: {listing}{more}", moved[0][0])
        else:
            descents = [k for k in range(1, len(valid)) if valid[k][1] < valid[k - 1][1]]
            listing = ", ".join(
                f"index {valid[k][1]} at position {valid[k][0]} follows index {valid[k - 1][1]}"
                for k in descents[:10]
            )
            found.add(
                f"reordered entries: {listing}",
                max(0, min(valid[k][1] for k in descents)),
            )
    return False


def _recompute_tree(entries: Sequence[Any], found: _Findings) -> MerkleTree:
    """Step 2b: the RFC 9162 §2.1.1 tree over ``canonical_json`` of each entry, in download order.

    An entry that cannot be encoded is named and stands in as a leaf no real entry can have.
    """
    tree = MerkleTree()
    for pos, entry in enumerate(entries):
        try:
            tree.append_hash(hash_leaf(canonical_json(entry)))
        except CanonicalJsonError as exc:
            found.add(f"entry at position {pos} cannot be canonically encoded: {exc.detail}", pos)
            tree.append_hash(_UNENCODABLE_LEAF)
    return tree


def _parse_heads(
    heads: Sequence[SignedTreeHead | Mapping[str, Any]], found: _Findings
) -> list[SignedTreeHead]:
    """Step 3a: the published heads as objects, each once, in first-seen order; name malformed ones."""
    parsed: list[SignedTreeHead] = []
    for j, head in enumerate(heads):
        if isinstance(head, SignedTreeHead):
            parsed.append(head)
            continue
        try:
            parsed.append(SignedTreeHead.from_dict(head))
        except ProofError as exc:
            found.add(f"published tree head #{j} is malformed: {exc.detail}")
    return list(dict.fromkeys(parsed))


def _check_head_signatures(
    unique: Sequence[SignedTreeHead], trusted: bytes | None, anchor: str, found: _Findings
) -> dict[int, list[SignedTreeHead]]:
    """Step 3b: keep the heads signed by the trusted key (RFC 9162 §4.10; RFC 8032 §5.1.7).

    Returns the validly signed heads by tree size; heads naming another key and heads whose
    signature fails are each named, with the ``anchor`` ("pinned" or "published") they failed.
    """
    verified: dict[int, list[SignedTreeHead]] = {}
    if trusted is None:
        return verified
    trusted_id = key_id_for(trusted)
    foreign: list[int] = []
    foreign_ids: set[str] = set()
    forged: list[int] = []
    for head in unique:
        if head.key_id != trusted_id:
            foreign.append(head.tree_size)
            foreign_ids.add(head.key_id[:16] + "...")
            continue
        try:
            verify_tree_head(head, trusted)
        except ProofError:
            forged.append(head.tree_size)
            continue
        verified.setdefault(head.tree_size, []).append(head)
    if foreign:
        found.add(
            f"signing key replaced: tree heads for sizes {_ranges(foreign)} are signed by "
            f"key {', '.join(sorted(foreign_ids))} instead of the {anchor} key {trusted_id[:16]}..."
        )
    if forged:
        found.add(
            f"bad signatures: the tree heads for sizes {_ranges(forged)} do not verify under "
            f"the {anchor} key (forged or altered heads, or the key was replaced)"
        )
    return verified


def _check_split_view(verified: Mapping[int, Sequence[SignedTreeHead]], found: _Findings) -> None:
    """Step 3c: two validly signed heads of one size must not disagree on the root."""
    for size in sorted(verified):
        roots = {h.root_hash for h in verified[size]}
        if len(roots) > 1:
            found.add(
                f"split view: {len(roots)} validly signed tree heads for size {size} disagree on the root"
            )


def _check_signed_roots(
    tree: MerkleTree,
    n: int,
    verified: Mapping[int, Sequence[SignedTreeHead]],
    sequence_intact: bool,
    found: _Findings,
) -> None:
    """Step 4: every signed root must equal the root recomputed at its size (RFC 9162 §2.1.1).

    Heads exist for every size, so the first disagreeing size pins an edit to one entry (or
    to the range since the last agreeing head). Sizes beyond the download are step 5's.
    """
    first_mismatch: int | None = None
    last_match = 0
    mismatches = 0
    for size in sorted(verified):
        if size > n:
            continue
        root = tree.root(size)
        # With a split view one head may match the download; that is reported in step 3c, and
        # the entries are only blamed when no signed head of this size agrees with them.
        if all(h.root_hash != root for h in verified[size]):
            mismatches += 1
            if first_mismatch is None:
                first_mismatch = size
        elif first_mismatch is None:
            last_match = size
    if first_mismatch is None:
        return
    size = first_mismatch
    if size == 0:
        where, bad = "the empty log", None
    elif last_match == size - 1:
        where, bad = f"entry {size - 1}", size - 1
    else:
        # No validly signed head in between: the edit is somewhere in this range.
        where, bad = f"an entry in {last_match}..{size - 1}", last_match
    also = f"; {mismatches} signed sizes disagree in all" if mismatches > 1 else ""
    if sequence_intact:
        found.add(
            f"edited entry: {where} was changed: the root recomputed at size {size} differs "
            f"from the signed tree head for size {size}{also}",
            bad,
        )
    else:
        found.add(
            f"{where} does not match the signed tree head for size {size} (see the index problems){also}",
            bad,
        )


def _check_coverage(
    n: int,
    unique: Sequence[SignedTreeHead],
    verified: Mapping[int, Sequence[SignedTreeHead]],
    sequence_intact: bool,
    require_every_size: bool,
    found: _Findings,
) -> None:
    """Step 5: the download must match what was signed — no truncated tail, no unsigned entries,
    and (with ``require_every_size``) a published head for every size 1..n."""
    max_verified = max(verified, default=0)
    if max_verified > n:
        if sequence_intact:
            found.add(
                f"truncated tail: the log signed a tree head for size {max_verified} but only {n} "
                f"entries were downloaded ({_entries(range(n, max_verified))} missing)",
                n,
            )
        else:
            found.add(
                f"missing entries: the log signed a tree head for size {max_verified} but only {n} "
                "entries were downloaded",
                n,
            )
    claimed_sizes = {h.tree_size for h in unique}
    max_claimed = max(claimed_sizes, default=0)
    if n > max_claimed:
        found.add(
            f"unsigned entries: {_entries(range(max_claimed, n))} not covered by any signed tree head",
            max_claimed,
        )
    if require_every_size:
        unheaded = [s for s in range(1, min(n, max_claimed) + 1) if s not in claimed_sizes]
        if unheaded:
            found.add(
                f"missing tree heads: no signed tree head was published for sizes "
                f"{_ranges(unheaded)} (the gateway signs one after every append)"
            )


def _check_extends_checkpoint(
    tree: MerkleTree,
    n: int,
    pinned: _Checkpoint,
    verified: Mapping[int, Sequence[SignedTreeHead]],
    found: _Findings,
) -> None:
    """Step 6: the log must extend the checkpoint (RFC 9162 §2.1.4).

    The root at the checkpoint's size must be the pinned root, and the latest validly signed
    head must be consistent with it: the proof is computed from the recomputed tree (§2.1.4.1)
    and checked as a client would (§2.1.4.2).
    """
    size1 = pinned.tree_size
    if size1 > n:
        found.add(
            f"truncated tail: the checkpoint pinned {size1} entries but the log now has only "
            f"{n} ({_entries(range(n, size1))} missing)",
            n,
        )
        return
    if tree.root(size1) != pinned.root_hash:
        found.add(
            f"history rewritten: the root recomputed at the checkpoint's size {size1} "
            "differs from the checkpoint's root"
        )
    if size1 == 0:
        # Every log extends the empty tree (its root was compared just above); RFC 9162
        # defines no consistency proof from it.
        return
    later = [s for s in verified if size1 <= s <= n]
    if not later:
        found.add(f"no validly signed tree head at or beyond the checkpoint's size {size1}")
        return
    size2 = max(later)
    proof = tree.consistency_proof(size1, size2)
    for root2 in sorted({h.root_hash for h in verified[size2]}):
        try:
            verify_consistency(size1, size2, pinned.root_hash, root2, proof)
        except ProofError as exc:
            found.add(
                f"not an extension: the signed tree head for size {size2} is not "
                f"consistent with the checkpoint at size {size1}: {exc.detail}"
            )


def make_checkpoint(report: VerifyReport, public_key: bytes | str) -> dict[str, Any]:
    """Checkpoint to save after a successful run: ``{tree_size, root_hash, public_key, key_id}``.

    Refuses (:class:`ProofError`) to pin a log that failed verification.
    """
    if not report.ok:
        first = report.problems[0] if report.problems else "unknown problem"
        raise ProofError(f"refusing to checkpoint a log that failed verification: {first}")
    key = _decode_key(public_key)
    return {
        "tree_size": report.tree_size,
        "root_hash": report.root_hash.hex(),
        "public_key": key.hex(),
        "key_id": key_id_for(key),
    }


def verify_receipt(
    entry: Mapping[str, Any],
    index: int,
    tree_size: int,
    inclusion_proof: Sequence[bytes | str] | None,
    sth: SignedTreeHead | Mapping[str, Any],
    public_key: bytes | str,
) -> Literal[True]:
    """Check a delivered result's receipt; return True or raise :class:`ProofError`.

    The receipt says: ``entry`` is leaf ``index`` of the log at ``tree_size``, as committed by
    the signed head ``sth``. Checks the head's signature under ``public_key``, that the head
    is for ``tree_size``, that the entry's own ``index`` (if present) agrees, and the RFC 9162
    §2.1.3.2 inclusion proof of ``hash_leaf(canonical_json(entry))`` against the head's root.
    Proof hashes may be bytes or hex strings.
    """
    head = sth if isinstance(sth, SignedTreeHead) else SignedTreeHead.from_dict(sth)
    key = _decode_key(public_key, "the log's public key")
    verify_tree_head(head, key)
    if head.tree_size != tree_size:
        raise ProofError(f"receipt is for tree size {tree_size} but its signed head is for {head.tree_size}")
    if isinstance(entry, Mapping) and "index" in entry and entry["index"] != index:
        raise ProofError(f"entry says index {entry['index']!r} but the receipt says {index}")
    try:
        leaf = hash_leaf(canonical_json(entry))
    except CanonicalJsonError as exc:
        raise ProofError(f"entry cannot be canonically encoded: {exc.detail}") from None
    proof = [_decode_hash(p, f"inclusion proof[{i}]") for i, p in enumerate(inclusion_proof or [])]
    verify_inclusion(leaf, index, tree_size, proof, head.root_hash)
    return True
