"""Auditors' read-only routes: entries, signed tree heads, proofs, JSON Lines export, metering."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Query
from fastapi import Path as FastPath
from fastapi.responses import PlainTextResponse
from sqlalchemy import select

from xdp_compute.contract import api as A
from xdp_compute.errors import BadRequest, NotFound
from xdp_compute.gateway import models as m
from xdp_compute.gateway.deps import Auditor, CurrentPrincipal, Svc
from xdp_compute.gateway.openapi import operation_id, problems
from xdp_compute.gateway.release import ReleaseLog, head_dict
from xdp_compute.gateway.witnessing import cosigned_checkpoints, registered_witnesses

router = APIRouter(prefix="/v1/audit", tags=["audit"], generate_unique_id_function=operation_id)
MAX_PAGE = 100_000
# Larger indices do not fit the database's 64-bit integers: a 422, not a 500 (issue #12).
MAX_INDEX = 2**62


def _log(svc: Svc) -> ReleaseLog:
    return svc.release_log


def _entries(svc: Svc, start: int = 0, limit: int = MAX_PAGE) -> list[dict[str, Any]]:
    with svc.store.read() as s:
        rows = s.scalars(select(m.LogEntry.entry_json).where(m.LogEntry.idx >= start)
                         .order_by(m.LogEntry.idx).limit(limit)).all()
    return [json.loads(r) for r in rows]


@router.get("/public-key", response_model=A.PublicKey)
def public_key(svc: Svc, who: CurrentPrincipal) -> dict[str, Any]:
    """The Ed25519 key that signs tree heads (any signed-in principal may pin it)."""
    lg = _log(svc)
    return {"algorithm": "Ed25519", "public_key": lg.public_key_hex, "key_id": lg.signer.key_id}


@router.get("/head", response_model=A.LogHead)
def latest_head(svc: Svc, who: Auditor) -> dict[str, Any]:
    lg = _log(svc)
    with svc.store.read() as s:
        h = s.scalar(select(m.TreeHead).order_by(m.TreeHead.tree_size.desc()).limit(1))
    return {"tree_size": h.tree_size if h else 0, "signed_tree_head": head_dict(h) if h else None,
            "integrity_problem": lg.integrity_problem}


@router.get("/heads", response_model=list[A.SignedTreeHead])
def heads(svc: Svc, who: Auditor, start: int = Query(1, ge=0, le=MAX_INDEX)) -> list[dict[str, Any]]:
    with svc.store.read() as s:
        rows = s.scalars(select(m.TreeHead).where(m.TreeHead.tree_size >= start).order_by(m.TreeHead.tree_size)
                         .limit(MAX_PAGE)).all()
    return [head_dict(h) for h in rows]


@router.get("/entries", response_model=list[A.LogEntry])
def entries(svc: Svc, who: Auditor, dataset: str | None = None, principal: str | None = None,
            kind: str | None = None, since: float | None = None, until: float | None = None,
            start: int = Query(0, ge=0, le=MAX_INDEX), limit: int = Query(1000, ge=1, le=MAX_PAGE)) -> list[dict[str, Any]]:
    """Entries filtered by dataset, principal, kind and time range (digests and costs, no values)."""
    out = []
    for e in _entries(svc, start, MAX_PAGE):
        if dataset and dataset not in (e.get("datasets") or []):
            continue
        if principal and e.get("principal") != principal:
            continue
        if kind and e.get("kind") != kind:
            continue
        if since is not None and e.get("time", 0) < since:
            continue
        if until is not None and e.get("time", 0) > until:
            continue
        out.append(e)
        if len(out) >= limit:
            break
    return out


@router.get("/export", response_class=PlainTextResponse,
            responses={200: {"content": {"application/x-ndjson": {"schema": {"type": "string"}}},
                             "description": "One canonical entry per line"}})
def export(svc: Svc, who: Auditor) -> PlainTextResponse:
    """The whole log as JSON Lines (one canonical entry per line)."""
    with svc.store.read() as s:
        rows = s.scalars(select(m.LogEntry.entry_json).order_by(m.LogEntry.idx)).all()
    return PlainTextResponse("".join(r + "\n" for r in rows), media_type="application/x-ndjson")


@router.get("/proof/inclusion", response_model=A.InclusionProof, responses=problems(400, 503))
def inclusion(svc: Svc, who: Auditor, index: int = Query(..., ge=0, le=MAX_INDEX),
              size: int | None = Query(None, ge=1, le=MAX_INDEX)) -> dict[str, Any]:
    lg = _log(svc)
    committed = lg.committed_size
    size = size or committed
    if not 0 <= index < size <= committed:
        raise BadRequest(f"need 0 <= index < size <= {committed}")
    return {"index": index, "tree_size": size, "proof": [h.hex() for h in lg.inclusion_proof(index, size)]}


@router.get("/proof/consistency", response_model=A.ConsistencyProof, responses=problems(400, 503))
def consistency(svc: Svc, who: Auditor, first: int = Query(..., ge=0, le=MAX_INDEX),
                second: int | None = Query(None, ge=0, le=MAX_INDEX)) -> dict[str, Any]:
    lg = _log(svc)
    committed = lg.committed_size
    second = committed if second is None else second
    if not 0 < first <= second <= committed:
        raise BadRequest(f"need 0 < first <= second <= {committed}")
    return {"first": first, "second": second, "proof": [h.hex() for h in lg.consistency_proof(first, second)]}


def leaf_bytes(svc: Svc, index: int) -> bytes:
    """The stored leaf of entry ``index``: its canonical JSON bytes, as the Merkle tree hashed them."""
    with svc.store.read() as s:
        row = s.get(m.LogEntry, index)
    if row is None:
        raise NotFound(f"no log entry {index}")
    return row.entry_json.encode()


@router.get("/entries/{index}", response_model=A.LogEntry, responses=problems(404))
def entry(svc: Svc, who: Auditor, index: int = FastPath(..., ge=0, le=MAX_INDEX)) -> dict[str, Any]:
    return json.loads(leaf_bytes(svc, index))  # type: ignore[no-any-return]


# -- witnessing (C2SP checkpoints and cosignatures; gateway/witnessing.py) --------------------


@router.get("/checkpoint", response_class=PlainTextResponse,
            responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                             "description": "A C2SP signed note"}})
def checkpoint(svc: Svc, who: Auditor) -> PlainTextResponse:
    """The latest C2SP checkpoint as a signed note (text/plain, as tlog tooling expects)."""
    _, note = _log(svc).checkpoint()
    return PlainTextResponse(note)


@router.get("/cosigned", response_model=A.Cosigned)
def cosigned(svc: Svc, who: Auditor) -> dict[str, Any]:
    """Every checkpoint a witness cosigned: signed notes with the log's and the witnesses' lines."""
    lg = _log(svc)
    return {"origin": lg.origin, "log_vkey": lg.vkey, "checkpoints": cosigned_checkpoints(lg)}


@router.get("/witnesses", response_model=list[A.Witness])
def witnesses(svc: Svc, who: Auditor) -> list[dict[str, Any]]:
    """The nodes witnessing this log, with their verifier keys (pin them once; do not re-fetch)."""
    return registered_witnesses(_log(svc))
