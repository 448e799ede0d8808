"""The gateway's side of witnessing: offer nodes the log's checkpoint, keep their cosignatures.

A node asks for the latest checkpoint with the size it last cosigned; the gateway answers with
a C2SP tlog-witness add-checkpoint body (old size, RFC 9162 §2.1.4.1 consistency proof, signed
checkpoint note) and the node returns a cosignature/v1 line, which is checked and stored (one
row per witness: its latest). Auditors download the cosigned checkpoints and check them against
the witnesses' keys they pinned; nothing here is trusted by them.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any

from sqlalchemy import select

from xdp_compute.audit.note import (
    ALG_COSIGNATURE_V1,
    Checkpoint,
    NoteSignature,
    format_note,
    parse_note,
    parse_signature_line,
    verify_cosignature,
    vkey,
)
from xdp_compute.audit.witness import format_add_checkpoint, witness_name
from xdp_compute.errors import BadRequest, Conflict, ProofError
from xdp_compute.gateway import models as m
from xdp_compute.gateway.release import ReleaseLog

log = logging.getLogger("xdp.gateway.witness")


def checkpoint_offer(release_log: ReleaseLog, old_size: int) -> str:
    """The add-checkpoint body for a witness that last cosigned ``old_size`` ("" for an empty log).

    A witness ahead of this log (it cosigned more than the log now holds) gets the latest
    checkpoint with no proof: it will refuse it, which is the point.
    """
    # The latest size this replica knows (read from the store only if the witness saw more).
    cp, note = release_log.checkpoint(release_log.at_least(old_size))
    if cp.tree_size == 0:
        return ""
    proof: list[bytes] = []
    if 0 < old_size < cp.tree_size:
        proof = release_log.consistency_proof(old_size, cp.tree_size)
    return format_add_checkpoint(old_size, proof, note)


def accept_cosignature(release_log: ReleaseLog, node: m.Node, public_key: bytes, note: str,
                       line: str) -> None:
    """Check a node's cosignature on a checkpoint this log signed and store it as the node's latest."""
    name = witness_name(node.name)
    if len(public_key) != 32:
        raise BadRequest("witness public key must be 32 raw Ed25519 bytes")
    try:
        body, _ = parse_note(note)
        cp = Checkpoint.from_body(body)
        sig = parse_signature_line(line)
        cs = verify_cosignature(body, sig, name, public_key)
    except ProofError as exc:
        raise BadRequest(f"cosignature refused: {exc.detail}") from None
    if cp.origin != release_log.origin:
        raise BadRequest(f"cosignature is for log {cp.origin!r}, not this log")
    ours, _ = release_log.checkpoint(min(cp.tree_size, release_log.at_least(cp.tree_size)))
    if ours != cp:
        raise BadRequest(f"cosigned checkpoint of size {cp.tree_size} is not one this log signed")
    with release_log.store.write() as s:
        row = s.get(m.WitnessCosignature, name)
        if row is not None and row.node_id != node.id:
            raise Conflict(f"witness name {name} belongs to another node")
        if row is None:
            row = m.WitnessCosignature(name=name, node_id=node.id)
            s.add(row)
            log.info("witness %s registered (key %s...)", name, public_key.hex()[:16])
        elif row.public_key != public_key.hex():
            log.warning("witness %s presents a new key %s...; auditors who pinned the old one will not "
                        "count it", name, public_key.hex()[:16])
        elif (cp.tree_size, cs.timestamp) <= (row.tree_size, row.cosigned_at):
            return  # not newer than what is kept
        row.public_key, row.tree_size, row.root_hash = public_key.hex(), cp.tree_size, cp.root_hash.hex()
        row.cosigned_at, row.signature_line = cs.timestamp, sig.line()


def cosigned_checkpoints(release_log: ReleaseLog) -> list[str]:
    """Every checkpoint some witness cosigned, as a signed note with the log's and the witnesses' lines."""
    with release_log.store.read() as s:
        rows = s.execute(select(m.WitnessCosignature.tree_size, m.WitnessCosignature.root_hash,
                                m.WitnessCosignature.signature_line)).all()
    lines: dict[tuple[int, str], list[NoteSignature]] = defaultdict(list)
    for size, root, text in rows:
        try:
            lines[(size, root)].append(parse_signature_line(text))
        except ProofError:
            continue
    out = []
    for (size, root), sigs in sorted(lines.items()):
        body = Checkpoint(release_log.origin, size, bytes.fromhex(root)).body()
        out.append(format_note(body, [release_log.signer.sign_note(release_log.origin, body), *sigs]))
    return out


def registered_witnesses(release_log: ReleaseLog) -> list[dict[str, Any]]:
    """The witnesses known to this gateway, with their vkeys (for auditors to pin, once)."""
    with release_log.store.read() as s:
        rows = s.scalars(select(m.WitnessCosignature).order_by(m.WitnessCosignature.name)).all()
        return [{"name": r.name, "vkey": vkey(r.name, ALG_COSIGNATURE_V1, bytes.fromhex(r.public_key)),
                 "tree_size": r.tree_size, "cosigned_at": r.cosigned_at} for r in rows]
