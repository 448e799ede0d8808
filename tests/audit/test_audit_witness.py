"""Witnessed release log: C2SP notes, the witness's refusal rules and the auditor's quorum policy."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from xdp_compute.audit import MerkleTree, TreeHeadSigner, canonical_json, verify_log
from xdp_compute.audit.note import (
    ALG_COSIGNATURE_V1,
    ALG_ED25519,
    Checkpoint,
    format_note,
    log_origin,
    note_key_id,
    parse_note,
    parse_vkey,
    verify_cosignature,
    vkey,
)
from xdp_compute.audit.witness import (
    WitnessRefusal,
    WitnessView,
    format_add_checkpoint,
    parse_add_checkpoint,
    witness_checkpoint,
)
from xdp_compute.audit.witnessed import PinnedWitness, parse_witness_file
from xdp_compute.errors import ProofError

NOW = 1_700_000_000


def raw(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


class Log:
    """A log as the gateway keeps it: entries, a head per size, a signer; checkpoints on demand."""

    def __init__(self, n: int, signer: TreeHeadSigner | None = None) -> None:
        self.signer = signer or TreeHeadSigner.generate()
        self.origin = log_origin(self.signer.key_id)
        self.entries: list[dict[str, object]] = []
        self.tree = MerkleTree()
        self.heads: list[dict[str, object]] = []
        for _ in range(n):
            self.add()

    def add(self, kind: str = "released") -> None:
        e = {"index": len(self.entries), "kind": kind}
        self.entries.append(e)
        self.tree.append(canonical_json(e))
        self.heads.append(self.signer.sign(self.tree.size, self.tree.root()).to_dict())

    def note(self, size: int | None = None) -> str:
        size = self.tree.size if size is None else size
        body = Checkpoint(self.origin, size, self.tree.root(size)).body()
        return format_note(body, [self.signer.sign_note(self.origin, body)])

    def offer(self, old: int) -> str:
        proof = self.tree.consistency_proof(old, self.tree.size) if 0 < old < self.tree.size else []
        return format_add_checkpoint(old, proof, self.note())

    @property
    def vkey(self) -> str:
        return vkey(self.origin, ALG_ED25519, self.signer.public_key_bytes())


class Witness:
    def __init__(self, name: str) -> None:
        self.name, self.key = name, Ed25519PrivateKey.generate()
        self.view: WitnessView | None = None

    def see(self, log: Log, now: int = NOW) -> str:
        view = self.view or WitnessView(log.vkey)
        self.view, line = witness_checkpoint(view, parse_add_checkpoint(log.offer(view.tree_size)), self.key,
                                             self.name, now)
        return line.line()

    @property
    def pinned(self) -> PinnedWitness:
        return PinnedWitness(self.name, raw(self.key))


def cosigned(log: Log, lines: list[str], size: int | None = None) -> str:
    return log.note(size) + "".join(lines)


# -- formats ------------------------------------------------------------------------------------


def test_checkpoint_and_note_formats_follow_c2sp() -> None:
    log = Log(3)
    body, sigs = parse_note(log.note())
    lines = body.decode().split("\n")
    assert lines[0] == log.origin and lines[1] == "3" and base64.b64decode(lines[2]) == log.tree.root()
    assert lines[3] == ""  # body ends with a newline, no extension lines
    assert Checkpoint.from_body(body) == Checkpoint(log.origin, 3, log.tree.root())
    # signed-note: key ID = SHA-256(name || 0x0A || 0x01 || key)[:4], signature over the body.
    assert sigs[0].name == log.origin
    assert sigs[0].key_id == note_key_id(log.origin, ALG_ED25519, log.signer.public_key_bytes())
    assert log.note().split("\n\n")[1].startswith("\u2014 " + log.origin + " ")
    assert parse_vkey(log.vkey) == (log.origin, ALG_ED25519, log.signer.public_key_bytes())
    with pytest.raises(ProofError):
        Checkpoint.from_body(b"o\n03\n" + base64.b64encode(b"\0" * 32) + b"\n")  # leading zero


def test_cosignature_is_timestamped_and_verifies() -> None:
    log, w = Log(2), Witness("xdp-node/a")
    line = w.see(log)
    body, _ = parse_note(log.note())
    _, sigs = parse_note(cosigned(log, [line]))
    cs = verify_cosignature(body, sigs[1], w.name, raw(w.key))
    assert cs.timestamp == NOW and sigs[1].key_id == note_key_id(w.name, ALG_COSIGNATURE_V1, raw(w.key))
    assert len(sigs[1].signature) == 72  # u64 timestamp || Ed25519 signature
    with pytest.raises(ProofError):
        verify_cosignature(body.replace(b"\n2\n", b"\n3\n"), sigs[1], w.name, raw(w.key))
    assert parse_witness_file(f"# c\n\n{vkey(w.name, ALG_COSIGNATURE_V1, raw(w.key))}\n") == [w.pinned]
    with pytest.raises(ProofError, match="type 0x04"):
        parse_witness_file(log.vkey)


# -- the witness refuses -------------------------------------------------------------------------


def test_witness_follows_an_append_only_log() -> None:
    log, w = Log(3), Witness("xdp-node/a")
    w.see(log)
    for _ in range(5):
        log.add()
        w.see(log)
        assert w.view is not None and w.view.tree_size == log.tree.size


def test_witness_refuses_a_rewritten_log_resigned_with_the_same_key() -> None:
    log, w = Log(5), Witness("xdp-node/a")
    w.see(log)
    forged = Log(0, log.signer)
    for i in range(6):
        forged.add("denied" if i == 2 else "released")
    with pytest.raises(WitnessRefusal, match="not consistent"):
        w.see(forged)
    assert w.view is not None and w.view.tree_size == 5 and w.view.root_hash == log.tree.root()


def test_witness_refuses_a_shrinking_log_and_a_fork_of_equal_size() -> None:
    log, w = Log(5), Witness("xdp-node/a")
    w.see(log)
    truncated = Log(3, log.signer)
    with pytest.raises(WitnessRefusal, match="shrank"):
        w.see(truncated)
    fork = Log(0, log.signer)
    for i in range(5):
        fork.add("denied" if i == 4 else "released")
    with pytest.raises(WitnessRefusal):
        w.see(fork)


def test_witness_refuses_another_key_and_a_wrong_base() -> None:
    log, w = Log(3), Witness("xdp-node/a")
    w.see(log)
    other = Log(4)  # another key: another origin
    view = w.view
    assert view is not None
    with pytest.raises(WitnessRefusal, match="follows"):
        witness_checkpoint(view, parse_add_checkpoint(other.offer(3)), w.key, w.name, NOW)
    log.add()
    with pytest.raises(WitnessRefusal, match="proves from size 1"):
        witness_checkpoint(view, parse_add_checkpoint(log.offer(1)), w.key, w.name, NOW)


# -- the auditor's quorum ------------------------------------------------------------------------


def audit(log: Log, notes: list[str], pinned: list[PinnedWitness], *, now: int = NOW, max_age: float = 600,
          quorum: int | None = None):
    return verify_log(log.entries, log.heads, log.signer.public_key_bytes(), witnesses=pinned, cosigned=notes,
                      quorum=quorum, now=now, max_age=max_age)


def test_honest_log_verifies_with_a_majority_of_three() -> None:
    log, ws = Log(4), [Witness(f"xdp-node/{c}") for c in "abc"]
    lines = [w.see(log) for w in ws[:2]]  # the third is offline: 2 of 3 is a majority
    report = audit(log, [cosigned(log, lines)], [w.pinned for w in ws])
    assert report.ok, report.problems
    assert not audit(log, [cosigned(log, lines)], [w.pinned for w in ws], quorum=3).ok


def test_rewrite_resigned_with_the_log_key_fails_without_a_checkpoint() -> None:
    log, ws = Log(5), [Witness(f"xdp-node/{c}") for c in "ab"]
    notes = [cosigned(log, [w.see(log) for w in ws])]
    log.entries[2] = {"index": 2, "kind": "denied"}  # edit and re-sign every head
    forged = Log(0, log.signer)
    for e in log.entries:
        forged.add(str(e["kind"]))
    assert verify_log(forged.entries, forged.heads, forged.signer.public_key_bytes()).ok  # the old hole
    report = audit(forged, notes, [w.pinned for w in ws])
    assert not report.ok and any("history rewritten" in p for p in report.problems), report.problems
    # Deleting the witnesses' cosignatures does not help: no quorum vouches for the rewrite.
    report = audit(forged, [], [w.pinned for w in ws])
    assert not report.ok and any("not witnessed" in p for p in report.problems)


def test_truncation_fails_by_the_larger_cosigned_head_or_by_staleness() -> None:
    log, ws = Log(3), [Witness(f"xdp-node/{c}") for c in "ab"]
    old_notes = [cosigned(log, [w.see(log, NOW) for w in ws])]
    for _ in range(2):
        log.add()
    new_notes = [cosigned(log, [w.see(log, NOW + 60) for w in ws])]
    truncated = Log(3, log.signer)
    report = audit(truncated, new_notes, [w.pinned for w in ws], now=NOW + 70)
    assert not report.ok and any("truncated tail" in p for p in report.problems)
    assert report.first_bad_index == 3
    # The operator keeps only the cosignatures of size 3: they verify, but they are old, and
    # honest witnesses will never cosign size 3 again.
    report = audit(truncated, old_notes, [w.pinned for w in ws], now=NOW + 700)
    assert not report.ok and any("stale" in p for p in report.problems), report.problems
    with pytest.raises(WitnessRefusal, match="shrank"):
        ws[0].see(truncated)


def test_unpinned_or_forged_cosignatures_do_not_count() -> None:
    log, honest, sybil = Log(2), Witness("xdp-node/a"), Witness("xdp-node/b")
    line_a = honest.see(log)
    impostor = Witness("xdp-node/b")  # same name, the operator's own key
    line_b = impostor.see(log)
    report = audit(log, [cosigned(log, [line_a, line_b])], [honest.pinned, sybil.pinned])
    assert not report.ok and any("not witnessed" in p for p in report.problems)
