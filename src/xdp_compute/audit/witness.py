"""A witness's decision: cosign a new checkpoint only if it extends the last one it cosigned.

The exchange is C2SP tlog-witness ``add-checkpoint``, turned around because nodes dial out:
the node asks, the gateway answers with the request body the spec defines::

    old <size the witness last cosigned>\\n
    <base64 consistency proof hash>\\n ...      (RFC 9162 §2.1.4.1, from old size to the new)
    \\n
    <signed checkpoint note>

and the witness returns its cosignature line. The checks (tlog-witness "add-checkpoint"):
the log's signature verifies under the key the witness pinned for that origin; ``old`` is the
size it last cosigned (a smaller new size is a shrinking log); equal sizes need equal roots;
otherwise the RFC 9162 §2.1.4.2 consistency proof from its last root must verify. A witness
that refuses keeps its last view: a log that forked or shrank never gets its cosignature again.

Pure logic; the node keeps the state on disk and does the I/O (``node/witness.py``).
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from xdp_compute.audit.merkle import HASH_SIZE, verify_consistency
from xdp_compute.audit.note import (
    ALG_ED25519,
    Checkpoint,
    NoteSignature,
    cosign,
    parse_note,
    parse_vkey,
    verify_note_signature,
)
from xdp_compute.errors import ProofError

__all__ = ["AddCheckpoint", "WitnessRefusal", "WitnessView", "format_add_checkpoint", "parse_add_checkpoint",
           "witness_checkpoint", "witness_name"]

_MAX_PROOF = 63  # tlog-witness: "MUST NOT send more than 63 consistency proof lines"


def witness_name(node_name: str) -> str:
    """The note key name a node witnesses under; the gateway only accepts a node's own name."""
    return f"xdp-node/{node_name}"


class WitnessRefusal(ProofError):
    """The witness will not cosign: the checkpoint is forged, shrinking or inconsistent."""

    slug, title = "witness-refusal", "Witness refused to cosign"


@dataclass(frozen=True, slots=True)
class AddCheckpoint:
    """A parsed add-checkpoint body: the old size, the proof and the signed checkpoint note."""

    old_size: int
    proof: tuple[bytes, ...]
    note: str


def format_add_checkpoint(old_size: int, proof: list[bytes], note: str) -> str:
    """The tlog-witness add-checkpoint request body."""
    return f"old {old_size}\n" + "".join(base64.b64encode(p).decode() + "\n" for p in proof) + "\n" + note


def parse_add_checkpoint(text: str) -> AddCheckpoint:
    """Parse an add-checkpoint body; :class:`ProofError` naming what is malformed."""
    head, sep, note = text.partition("\n\n")
    if not sep:
        raise ProofError("add-checkpoint body has no empty line before the checkpoint")
    lines = head.split("\n")
    first = lines[0]
    size = first[4:] if first.startswith("old ") else ""
    if not size.isascii() or not size.isdigit() or (size != "0" and size[0] == "0"):
        raise ProofError(f"add-checkpoint must start with 'old <size>', got {first[:40]!r}")
    if len(lines) - 1 > _MAX_PROOF:
        raise ProofError(f"add-checkpoint carries more than {_MAX_PROOF} proof hashes")
    proof = []
    for line in lines[1:]:
        try:
            h = base64.b64decode(line, validate=True)
        except binascii.Error:
            raise ProofError("consistency proof line is not base64") from None
        if len(h) != HASH_SIZE:
            raise ProofError(f"consistency proof hash must be {HASH_SIZE} bytes")
        proof.append(h)
    return AddCheckpoint(int(size), tuple(proof), note)


@dataclass(frozen=True, slots=True)
class WitnessView:
    """What a witness remembers: the log it follows and the last checkpoint it cosigned."""

    log_vkey: str          # the log's pinned verifier key (its name is the origin)
    tree_size: int = 0
    root_hash: bytes = b""
    cosigned_at: int = 0   # POSIX seconds of the last cosignature

    @property
    def origin(self) -> str:
        return parse_vkey(self.log_vkey)[0]


def witness_checkpoint(view: WitnessView, offer: AddCheckpoint, key: Ed25519PrivateKey, name: str,
                       now: int) -> tuple[WitnessView, NoteSignature]:
    """Check ``offer`` against ``view``; return the new view and a cosignature, or raise.

    Raises :class:`WitnessRefusal` for a checkpoint this witness must never cosign (bad log
    signature, other origin, shrinking, a different root at the same size, a failed RFC 9162
    §2.1.4.2 proof); the caller keeps the old view and says so loudly.
    """
    origin, alg, log_key = parse_vkey(view.log_vkey)
    if alg != ALG_ED25519:
        raise WitnessRefusal(f"pinned log key for {origin} is not an Ed25519 note key")
    try:
        body, sigs = parse_note(offer.note)
        cp = Checkpoint.from_body(body)
    except ProofError as exc:
        raise WitnessRefusal(f"malformed checkpoint: {exc.detail}") from None
    if cp.origin != origin:
        raise WitnessRefusal(f"checkpoint is for log {cp.origin!r}, this witness follows {origin!r}")
    try:
        verify_note_signature(body, sigs, origin, log_key)
    except ProofError:
        raise WitnessRefusal(f"checkpoint of size {cp.tree_size} is not signed by the pinned log key") from None
    if offer.old_size != view.tree_size:
        # The gateway must prove from what this witness last cosigned; any other base is refused
        # (tlog-witness answers 409 with its size; here the node just refuses and keeps its view).
        raise WitnessRefusal(f"offer proves from size {offer.old_size} but this witness last cosigned "
                             f"size {view.tree_size}")
    if cp.tree_size < view.tree_size:
        raise WitnessRefusal(f"log shrank: checkpoint of size {cp.tree_size} after this witness cosigned "
                             f"size {view.tree_size}")
    if view.tree_size == 0:
        if offer.proof:
            raise WitnessRefusal("a proof from the empty tree must be empty")
    else:
        try:
            verify_consistency(view.tree_size, cp.tree_size, view.root_hash, cp.root_hash, list(offer.proof))
        except ProofError as exc:
            raise WitnessRefusal(f"checkpoint of size {cp.tree_size} is not consistent with the size "
                                 f"{view.tree_size} this witness cosigned: {exc.detail}") from None
    line = cosign(key, name, body, now)
    return WitnessView(view.log_vkey, cp.tree_size, cp.root_hash, now), line
