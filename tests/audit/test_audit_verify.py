"""Offline log verifier (``xdp audit verify``): every tampering case is detected and named."""

from __future__ import annotations

import copy
import dataclasses
import json
import random
from dataclasses import dataclass, field
from typing import Any

import pytest

from xdp_compute.audit.canonical import canonical_json
from xdp_compute.audit.heads import SignedTreeHead, TreeHeadSigner
from xdp_compute.audit.merkle import EMPTY_ROOT, MerkleTree, hash_leaf
from xdp_compute.audit.verify import (
    VerifyReport,
    entry_leaf_hash,
    make_checkpoint,
    verify_log,
    verify_receipt,
)
from xdp_compute.errors import ProofError

SIGNER = TreeHeadSigner.from_private_bytes(b"\x11" * 32)
PUB = SIGNER.public_key_bytes()


def _entry(i: int) -> dict[str, Any]:
    return {
        "index": i,
        "job": f"job-{i:04d}",
        "principal": "analyst:ana" if i % 3 else "ml:team-1",
        "decision": ["released", "denied", "suppressed"][i % 3],
        "datasets": ["hospital_visits"],
        "privacy_cost": {"epsilon": 0.1 * (i % 7 + 1), "delta": 1e-9},
        "payload_digest": f"{i:064x}",
        "time_ms": 1_700_000_000_000 + i,
    }


@dataclass
class Log:
    """What the gateway does: append, then sign a head after every append."""

    signer: TreeHeadSigner = SIGNER
    entries: list[dict[str, Any]] = field(default_factory=list)
    heads: list[SignedTreeHead] = field(default_factory=list)
    tree: MerkleTree = field(default_factory=MerkleTree)

    def append(self, entry: dict[str, Any]) -> None:
        self.entries.append(entry)
        self.tree.append(canonical_json(entry))
        n = len(self.tree)
        self.heads.append(self.signer.sign(n, self.tree.root(), timestamp_ms=1_700_000_000_000 + n))

    def grow(self, count: int) -> Log:
        for _ in range(count):
            self.append(_entry(len(self.entries)))
        return self

    def download(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Entries and heads as an auditor receives them (through JSON)."""
        entries = json.loads(json.dumps(self.entries))
        heads = json.loads(json.dumps([h.to_dict() for h in self.heads]))
        return entries, heads


def _resign(entries: list[dict[str, Any]], signer: TreeHeadSigner) -> list[SignedTreeHead]:
    """An operator rewriting history: rebuild the tree and sign fresh heads for every size."""
    tree = MerkleTree()
    heads = []
    for entry in entries:
        tree.append(canonical_json(entry))
        heads.append(signer.sign(len(tree), tree.root(), timestamp_ms=1))
    return heads


def _has(report: VerifyReport, *fragments: str) -> bool:
    return any(all(f in p for f in fragments) for p in report.problems)


@pytest.fixture
def log20() -> Log:
    return Log().grow(20)


# -- untouched logs pass --------------------------------------------------------------------


def test_untouched_log_passes(log20: Log) -> None:
    entries, heads = log20.download()
    report = verify_log(entries, heads, PUB)
    assert report.ok, report.problems
    assert report.problems == [] and report.first_bad_index is None
    assert report.tree_size == 20 and report.root_hash == log20.tree.root()
    assert report.to_dict()["root_hash"] == log20.tree.root().hex()


def test_repeated_and_shuffled_heads_and_hex_key_pass(log20: Log) -> None:
    entries, heads = log20.download()
    heads = heads + heads[:5] + [log20.heads[-1]]  # repeats; dicts and objects mixed
    random.Random(3).shuffle(heads)
    report = verify_log(entries, heads, PUB.hex())
    assert report.ok, report.problems


def test_empty_log() -> None:
    report = verify_log([], [], PUB)
    assert report.ok and report.tree_size == 0 and report.root_hash == EMPTY_ROOT
    checkpoint = make_checkpoint(report, PUB)
    assert checkpoint["tree_size"] == 0
    grown = Log().grow(3)
    assert verify_log(*grown.download(), PUB, checkpoint).ok


def test_checkpoint_round_trip_and_growth(log20: Log) -> None:
    entries, heads = log20.download()
    first = verify_log(entries, heads, PUB)
    checkpoint = json.loads(json.dumps(make_checkpoint(first, PUB)))
    assert checkpoint == {
        "tree_size": 20,
        "root_hash": log20.tree.root().hex(),
        "public_key": PUB.hex(),
        "key_id": SIGNER.key_id,
    }
    assert verify_log(entries, heads, PUB, checkpoint).ok  # same size
    log20.grow(17)
    report = verify_log(*log20.download(), PUB, checkpoint)
    assert report.ok, report.problems
    assert report.tree_size == 37


# -- edited entry -----------------------------------------------------------------------------


@pytest.mark.parametrize("k", [0, 7, 19])
def test_edited_entry_is_named(log20: Log, k: int) -> None:
    entries, heads = log20.download()
    entries[k]["privacy_cost"]["epsilon"] = 0.0001
    report = verify_log(entries, heads, PUB)
    assert not report.ok
    assert _has(report, "edited entry", f"entry {k} ", f"size {k + 1}")
    assert report.first_bad_index == k
    assert len(report.problems) == 1, report.problems


def test_edit_is_localised_to_a_range_when_heads_are_missing(log20: Log) -> None:
    entries, heads = log20.download()
    entries[9]["decision"] = "tampered"
    heads = [h for h in heads if not 6 <= h["tree_size"] <= 11]
    report = verify_log(entries, heads, PUB, require_every_size=False)
    assert _has(report, "edited entry", "an entry in 5..11", "size 12")
    assert report.first_bad_index == 5
    strict = verify_log(entries, heads, PUB)
    assert _has(strict, "missing tree heads", "6..11")


def test_added_field_counts_as_an_edit(log20: Log) -> None:
    entries, heads = log20.download()
    entries[4]["approver"] = "someone"
    report = verify_log(entries, heads, PUB)
    assert report.first_bad_index == 4 and _has(report, "edited entry", "entry 4 ")


# -- deleted entries --------------------------------------------------------------------------


@pytest.mark.parametrize("k", [0, 8, 18])
def test_deleted_entry_is_named(log20: Log, k: int) -> None:
    entries, heads = log20.download()
    del entries[k]
    report = verify_log(entries, heads, PUB)
    assert not report.ok
    assert _has(report, "deleted entry", f"index {k} is missing")
    assert not _has(report, "None")
    assert report.first_bad_index == k
    assert not _has(report, "edited entry")  # named for what it is
    assert _has(report, "missing entries", "size 20", "only 19")  # heads still cover 20


def test_deleted_entries_range(log20: Log) -> None:
    entries, heads = log20.download()
    del entries[5:9]
    report = verify_log(entries, heads, PUB)
    assert _has(report, "deleted entries", "5..8")
    assert report.first_bad_index == 5


def test_deleted_last_entry(log20: Log) -> None:
    entries, heads = log20.download()
    entries.pop()
    report = verify_log(entries, heads, PUB)
    assert _has(report, "truncated tail", "entry 19 is missing")
    assert report.first_bad_index == 19


# -- reordered entries ------------------------------------------------------------------------


@pytest.mark.parametrize(("i", "j"), [(3, 11), (0, 1), (18, 19)])
def test_two_reordered_entries_are_named(log20: Log, i: int, j: int) -> None:
    entries, heads = log20.download()
    entries[i], entries[j] = entries[j], entries[i]
    report = verify_log(entries, heads, PUB)
    assert not report.ok
    assert _has(report, "reordered entries", f"position {i} holds entry {j}", f"position {j} holds entry {i}")
    assert report.first_bad_index == i
    assert not _has(report, "edited entry") and not _has(report, "deleted")


def test_reordered_with_renumbered_indices_is_still_caught(log20: Log) -> None:
    """Swapping contents but keeping index fields in place looks like two edits."""
    entries, heads = log20.download()
    a, b = copy.deepcopy(entries[5]), copy.deepcopy(entries[6])
    a["index"], b["index"] = 6, 5
    entries[5], entries[6] = b, a
    report = verify_log(entries, heads, PUB)
    assert report.first_bad_index == 5 and _has(report, "edited entry", "entry 5 ")


# -- truncated tail ---------------------------------------------------------------------------


def test_truncated_tail_against_checkpoint(log20: Log) -> None:
    checkpoint = make_checkpoint(verify_log(*log20.download(), PUB), PUB)
    entries, heads = log20.download()
    # A consistent-looking shorter log: entries and heads both cut at 14.
    entries, heads = entries[:14], [h for h in heads if h["tree_size"] <= 14]
    assert verify_log(entries, heads, PUB).ok  # nothing to compare against without a checkpoint
    report = verify_log(entries, heads, PUB, checkpoint)
    assert not report.ok
    assert _has(report, "truncated tail", "checkpoint pinned 20", "only 14", "14..19")
    assert report.first_bad_index == 14


def test_rewritten_history_fails_consistency_with_checkpoint(log20: Log) -> None:
    checkpoint = make_checkpoint(verify_log(*log20.download(), PUB), PUB)
    # The operator edits entry 3, re-signs every head with the same key and keeps appending.
    entries = copy.deepcopy(log20.entries)
    entries[3]["decision"] = "denied"
    entries += [_entry(i) for i in range(20, 26)]
    heads = [h.to_dict() for h in _resign(entries, SIGNER)]
    assert verify_log(entries, heads, PUB).ok  # self-consistent on its own
    report = verify_log(entries, heads, PUB, checkpoint)
    assert not report.ok
    assert _has(report, "history rewritten", "size 20")
    assert _has(report, "not an extension", "size 26", "checkpoint at size 20")


def test_signed_head_not_extending_checkpoint(log20: Log) -> None:
    """Even with the pinned prefix intact, a latest head over another tree is refused."""
    checkpoint = make_checkpoint(verify_log(*log20.download(), PUB), PUB)
    log20.grow(5)
    entries, heads = log20.download()
    bogus = SIGNER.sign(25, hash_leaf(b"elsewhere"), timestamp_ms=9)
    heads = [h for h in heads if h["tree_size"] != 25] + [bogus.to_dict()]
    report = verify_log(entries, heads, PUB, checkpoint)
    assert _has(report, "not an extension", "size 25")
    assert _has(report, "edited entry", "entry 24 ")


# -- replaced signing key ---------------------------------------------------------------------


def test_replaced_key_against_checkpoint(log20: Log) -> None:
    checkpoint = make_checkpoint(verify_log(*log20.download(), PUB), PUB)
    thief = TreeHeadSigner.from_private_bytes(b"\x22" * 32)
    entries = copy.deepcopy(log20.entries) + [_entry(20)]
    heads = [h.to_dict() for h in _resign(entries, thief)]
    assert verify_log(entries, heads, thief.public_key_bytes()).ok  # trust on first use
    report = verify_log(entries, heads, thief.public_key_bytes(), checkpoint)
    assert not report.ok
    assert _has(report, "signing key replaced", "now publishes key", thief.key_id[:16], SIGNER.key_id[:16])
    assert _has(report, "signing key replaced", "sizes 1..21")
    assert report.first_bad_index is None  # no single entry to blame


def test_heads_signed_by_other_key_without_checkpoint(log20: Log) -> None:
    entries, heads = log20.download()
    other = TreeHeadSigner.from_private_bytes(b"\x33" * 32)
    heads[12] = other.sign(13, log20.tree.root(13), timestamp_ms=1).to_dict()
    report = verify_log(entries, heads, PUB)
    assert _has(report, "signing key replaced", "size", "13", other.key_id[:16])
    assert _has(report, "missing tree heads") is False  # the head exists, it just fails


def test_bad_signature_is_named(log20: Log) -> None:
    entries, heads = log20.download()
    heads[6]["timestamp_ms"] += 1  # any altered field invalidates the signature
    forged = dataclasses.replace(log20.heads[9], root_hash=hash_leaf(b"x"))
    heads[9] = forged.to_dict()
    report = verify_log(entries, heads, PUB)
    assert not report.ok
    assert _has(report, "bad signatures", "7", "10")
    assert report.first_bad_index is None


def test_malformed_published_key(log20: Log) -> None:
    report = verify_log(*log20.download(), b"\x00" * 5)
    assert not report.ok and _has(report, "public key")


# -- other problems ---------------------------------------------------------------------------


def test_split_view(log20: Log) -> None:
    entries, heads = log20.download()
    other_root = hash_leaf(b"other history")
    heads.append(SIGNER.sign(12, other_root, timestamp_ms=5).to_dict())
    report = verify_log(entries, heads, PUB)
    assert _has(report, "split view", "size 12")
    assert not _has(report, "edited") and report.first_bad_index is None  # the download agrees with one view
    # An auditor who was shown the other view at size 12 and pinned it is told so.
    other_view = {
        "tree_size": 12,
        "root_hash": other_root.hex(),
        "public_key": PUB.hex(),
        "key_id": SIGNER.key_id,
    }
    pinned = verify_log(entries, heads, PUB, other_view)
    assert _has(pinned, "history rewritten", "size 12") and _has(pinned, "not an extension", "size 20")


def test_unsigned_entries(log20: Log) -> None:
    entries, heads = log20.download()
    entries += [_entry(20), _entry(21)]
    report = verify_log(entries, heads, PUB)
    assert _has(report, "unsigned entries", "20..21")
    assert report.first_bad_index == 20


def test_missing_heads(log20: Log) -> None:
    entries, heads = log20.download()
    heads = [h for h in heads if h["tree_size"] not in (4, 5, 9)]
    report = verify_log(entries, heads, PUB)
    assert _has(report, "missing tree heads", "4..5, 9")
    assert verify_log(entries, heads, PUB, require_every_size=False).ok


def test_malformed_inputs_are_reported_not_raised(log20: Log) -> None:
    entries, heads = log20.download()
    heads[3] = {"tree_size": 4}
    entries[2]["privacy_cost"]["epsilon"] = float("nan")  # json.loads accepts NaN; we don't
    entries[5] = dict(entries[5])
    del entries[5]["index"]
    report = verify_log(entries, heads, PUB, checkpoint={"tree_size": 3})
    assert not report.ok
    assert _has(report, "tree head #3 is malformed", "lacks")
    assert _has(report, "position 2 cannot be canonically encoded", "nan")
    assert _has(report, "position 5 has no integer 'index'")
    assert _has(report, "checkpoint is malformed")
    assert report.first_bad_index == 2


def test_checkpoint_with_wrong_key_id(log20: Log) -> None:
    checkpoint = make_checkpoint(verify_log(*log20.download(), PUB), PUB)
    checkpoint["key_id"] = "00" * 32
    report = verify_log(*log20.download(), PUB, checkpoint)
    assert _has(report, "checkpoint is malformed", "key_id")


def test_make_checkpoint_refuses_failed_report(log20: Log) -> None:
    entries, heads = log20.download()
    entries[1]["job"] = "x"
    with pytest.raises(ProofError, match="refusing"):
        make_checkpoint(verify_log(entries, heads, PUB), PUB)


def test_larger_log_every_edit_position_found() -> None:
    log = Log().grow(300)
    entries, heads = log.download()
    for k in (0, 1, 127, 128, 255, 256, 299):
        tampered = copy.deepcopy(entries)
        tampered[k]["payload_digest"] = "f" * 64
        report = verify_log(tampered, heads, PUB)
        assert report.first_bad_index == k and _has(report, "edited entry", f"entry {k} ")


# -- receipts ---------------------------------------------------------------------------------


def test_receipts_verify_for_every_entry_and_size() -> None:
    log = Log().grow(13)
    for size in range(1, 14):
        sth = log.heads[size - 1]
        for index in range(size):
            proof = log.tree.inclusion_proof(index, size)
            entry = json.loads(json.dumps(log.entries[index]))
            assert verify_receipt(entry, index, size, proof, sth, PUB) is True
    # JSON shapes: head as dict, proof as hex, key as hex.
    proof_hex = [h.hex() for h in log.tree.inclusion_proof(4, 13)]
    assert verify_receipt(log.entries[4], 4, 13, proof_hex, log.heads[-1].to_dict(), PUB.hex())
    assert entry_leaf_hash(log.entries[4]) == log.tree.leaf_hash(4)


def test_receipt_tampering_rejected() -> None:
    log = Log().grow(13)
    sth, index, size = log.heads[-1], 6, 13
    proof = log.tree.inclusion_proof(index, size)
    entry = copy.deepcopy(log.entries[index])
    other = TreeHeadSigner.from_private_bytes(b"\x44" * 32)

    edited = dict(entry, decision="released" if entry["decision"] != "released" else "denied")
    bad_proof = [proof[0][:-1] + bytes([proof[0][-1] ^ 1]), *proof[1:]]
    cases: list[tuple[tuple[Any, ...], str]] = [
        ((edited, index, size, proof, sth, PUB), "yields root"),
        ((entry, 5, size, proof, sth, PUB), "entry says index 6"),
        ((dict(entry, index=5), 5, size, proof, sth, PUB), "yields root"),
        ((entry, index, 12, proof, sth, PUB), "tree size 12"),
        ((entry, index, size, bad_proof, sth, PUB), "yields root"),
        ((entry, index, size, proof[:-1], sth, PUB), "too short"),
        ((entry, index, size, proof, sth, other.public_key_bytes()), "signed by key"),
        (
            (entry, index, size, proof, dataclasses.replace(sth, root_hash=hash_leaf(b"r")), PUB),
            "does not verify",
        ),
        ((entry, index, size, proof, other.sign(size, sth.root_hash, 1), PUB), "signed by key"),
        ((entry, index, size, ["zz"], sth, PUB), "hex"),
        ((dict(entry, bad=float("inf")), index, size, proof, sth, PUB), "canonically"),
    ]
    for args, fragment in cases:
        with pytest.raises(ProofError, match=fragment):
            verify_receipt(*args)


def test_deletion_plus_swap_and_duplicate_are_each_named(log20: Log) -> None:
    entries, heads = log20.download()
    del entries[2]  # positions now hold 0, 1, 3, 4, 5, 6, ...
    entries[4], entries[5] = entries[5], entries[4]  # indices 5 and 6 swapped
    report = verify_log(entries, heads, PUB)
    assert _has(report, "deleted entry", "index 2 is missing")
    assert _has(report, "reordered entries", "index 5 at position 5 follows index 6")
    assert report.first_bad_index == 2

    entries, heads = log20.download()
    entries.insert(5, copy.deepcopy(entries[4]))  # a replayed entry
    report = verify_log(entries, heads, PUB)
    assert _has(report, "duplicated entries", "index 4 appears more than once")
    assert report.first_bad_index == 4


def test_single_entry_receipt_with_empty_proof() -> None:
    log = Log().grow(1)
    assert verify_receipt(log.entries[0], 0, 1, [], log.heads[0], PUB)
    assert verify_receipt(log.entries[0], 0, 1, None, log.heads[0].to_dict(), PUB)
