"""Auditor pages: the release log (paged, filtered), an entry with its inclusion proof checked in
the browser, the whole log verified against a saved checkpoint, and metering as charts.

Each page calls the function its REST route calls (``routers/audit.py``, ``routers/metering.py``)
as the signed-in auditor. The entry page's proof is checked by ``static/merkle.js`` in the
auditor's browser (RFC 9162 §2.1.3.2 and the head's Ed25519 signature with WebCrypto); the
small JSON endpoints under ``/audit/api`` hand it the same proof, head and key the REST API gives.
The whole-log check runs the gateway-side verifier of ``xdp audit verify`` (``audit/verify.py``)
over what the log serves now.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi import Path as FastPath
from fastapi.responses import JSONResponse, Response

from xdp_compute.audit import make_checkpoint, verify_log
from xdp_compute.audit.heads import SignedTreeHead, verify_tree_head
from xdp_compute.audit.note import Checkpoint, parse_note, verify_note_signature
from xdp_compute.errors import BadRequest, ProofError
from xdp_compute.gateway.console.charts import bar_chart, step_line_chart
from xdp_compute.gateway.console.render import pages
from xdp_compute.gateway.console.session import AuditorUser, ConsoleSvc, Form
from xdp_compute.gateway.release import (
    APPROVAL_GIVEN,
    APPROVAL_REFUSED,
    BUDGET_EXHAUSTED,
    DENIED,
    FAILED,
    RELEASED,
)
from xdp_compute.gateway.routers import audit as rest
from xdp_compute.gateway.routers.metering import metering, metering_series

router = APIRouter(prefix="/audit")

PAGE = 50
KINDS = (RELEASED, DENIED, BUDGET_EXHAUSTED, FAILED, APPROVAL_REFUSED, APPROVAL_GIVEN)
MAX_CHECKPOINT = 16 * 1024


# -- the release log ------------------------------------------------------------------------


def _time(value: str, what: str) -> float | None:
    """A ``datetime-local`` field (read as UTC) or a Unix time; a clear 400 for anything else."""
    value = value.strip()
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        return dt.datetime.fromisoformat(value).replace(tzinfo=dt.UTC).timestamp()
    except ValueError:
        raise BadRequest(f"{what}: {value!r} is not a date and time (YYYY-MM-DDTHH:MM, UTC)") from None


@router.get("/log")
async def log_page(request: Request, user: AuditorUser, svc: ConsoleSvc,
                   kind: str = "", principal: str = "", dataset: str = "", since: str = "", until: str = "",
                   start: int = Query(0, ge=0, le=rest.MAX_INDEX)) -> Response:
    lo, hi = _time(since, "from"), _time(until, "until")
    # One more than a page tells whether a next page exists.
    rows = await asyncio.to_thread(rest.entries, svc, user.principal, dataset.strip() or None,
                                   principal.strip() or None, kind or None, lo, hi, start, PAGE + 1)
    more = len(rows) > PAGE
    rows = rows[:PAGE]
    head = await asyncio.to_thread(rest.latest_head, svc, user.principal)
    query = {"kind": kind, "principal": principal, "dataset": dataset, "since": since, "until": until}
    return pages(request).render(
        request, "audit_log.html", user, title="Release log", rows=rows, kinds=KINDS, query=query,
        start=start, next_start=(rows[-1]["index"] + 1) if more else None, tree_size=head["tree_size"],
        integrity_problem=head["integrity_problem"])


# -- one entry, its proof checked in the browser -------------------------------------------


@router.get("/entries/{index}")
async def entry_page(request: Request, user: AuditorUser, svc: ConsoleSvc,
                     index: int = FastPath(..., ge=0, le=rest.MAX_INDEX)) -> Response:
    entry = await asyncio.to_thread(rest.entry, svc, user.principal, index)
    return pages(request).render(request, "audit_entry.html", user, title=f"Log entry #{index}", entry=entry,
                                 index=index)


@router.get("/entries/{index}/leaf")
async def entry_leaf(user: AuditorUser, svc: ConsoleSvc, index: int = FastPath(..., ge=0, le=rest.MAX_INDEX)) -> Response:
    """The entry's leaf bytes exactly as stored: what the browser hashes (RFC 9162 §2.1.1)."""
    return Response(await asyncio.to_thread(rest.leaf_bytes, svc, index), media_type="application/octet-stream")


@router.get("/api/inclusion")
async def inclusion(user: AuditorUser, svc: ConsoleSvc, index: int = Query(..., ge=0, le=rest.MAX_INDEX),
                    size: int = Query(..., ge=1, le=rest.MAX_INDEX)) -> JSONResponse:
    """GET /v1/audit/proof/inclusion, for the session."""
    return JSONResponse(await asyncio.to_thread(rest.inclusion, svc, user.principal, index, size))


@router.get("/api/head")
async def head(user: AuditorUser, svc: ConsoleSvc) -> JSONResponse:
    """GET /v1/audit/head and the published key, plus the gateway's own check of the head's
    signature, which the page uses (and says so) only if this browser has no Ed25519."""
    latest = await asyncio.to_thread(rest.latest_head, svc, user.principal)
    key = await asyncio.to_thread(rest.public_key, svc, user.principal)
    gateway_check = None
    if latest["signed_tree_head"] is not None:
        try:
            verify_tree_head(SignedTreeHead.from_dict(latest["signed_tree_head"]), bytes.fromhex(key["public_key"]))
            gateway_check = "verified"
        except ProofError as e:
            gateway_check = f"FAILED: {e.detail}"
    return JSONResponse({**latest, "public_key": key["public_key"], "key_id": key["key_id"],
                         "gateway_signature_check": gateway_check})


# -- the whole log against a checkpoint -----------------------------------------------------

# The verifier's steps (audit/verify.py, verify_log) and the phrases its problems start with,
# matched in this order so each problem is listed under the check that found it.
CHECKS: list[tuple[str, str, str, tuple[str, ...]]] = [
    ("checkpoint", "Extends the checkpoint",
     ("The root at the checkpoint's size is the checkpoint's root, and the latest signed head is consistent "
     "with it (RFC 9162 §2.1.4)"),
     ("checkpoint is malformed", "history rewritten", "not an extension", "truncated tail: the checkpoint",
      "no validly signed tree head at or beyond")),
    ("key", "Signing key", "Tree heads are signed by the trusted key (the checkpoint's pinned key, else the published one)",
     ("signing key replaced", "the log's published public key")),
    ("sequence", "Index sequence", "Entries carry indices 0..n-1 in order: none deleted, duplicated or moved",
     ("deleted entr", "duplicated entries", "reordered entries", "entry at position")),
    ("signatures", "Tree head signatures", ("Every published tree head is well formed and its Ed25519 signature "
     "verifies; no two signed heads of one size disagree"), ("published tree head", "bad signatures", "split view")),
    ("roots", "Signed roots", ("The root recomputed from the entries (RFC 9162 §2.1.1) equals the signed root "
     "at every size"), ("edited entry", "entry ", "an entry in")),
    ("coverage", "Coverage", ("Every entry is covered by a signed head, a head exists for every size, and no "
     "head covers entries the log does not serve"), ("truncated tail", "missing entries", "unsigned entries",
                                                    "missing tree heads")),
]


def _checkpoint_from(text: str, public_key_hex: str) -> dict[str, Any]:
    """The pasted checkpoint as ``verify_log`` takes it.

    Either the JSON ``xdp audit verify --checkpoint`` saves, or the C2SP signed note of
    ``GET /v1/audit/checkpoint`` (its signature checked under the log's published key, which it
    then pins: a note carries no key of its own).
    """
    text = text.strip()
    if len(text) > MAX_CHECKPOINT:
        raise BadRequest(f"checkpoint: at most {MAX_CHECKPOINT} bytes")
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except ValueError as e:
            raise BadRequest(f"checkpoint: not valid JSON ({e.msg} at line {e.lineno})") from None
        if not isinstance(data, dict):
            raise BadRequest("checkpoint: a JSON object is expected")
        missing = {"tree_size", "root_hash", "public_key", "key_id"} - data.keys()
        if missing:
            raise BadRequest(f"checkpoint: lacks {', '.join(sorted(missing))} (is it the file `xdp audit verify "
                             "--checkpoint` saves?)")
        return data
    try:
        body, signatures = parse_note(text + "\n")
        cp = Checkpoint.from_body(body)
        verify_note_signature(body, signatures, cp.origin, bytes.fromhex(public_key_hex))
    except ProofError as e:
        raise BadRequest(f"checkpoint: neither the JSON of `xdp audit verify --checkpoint` nor a signed "
                         f"checkpoint note ({e.detail})") from None
    from xdp_compute.audit.heads import key_id_for

    key = bytes.fromhex(public_key_hex)
    return {"tree_size": cp.tree_size, "root_hash": cp.root_hash.hex(), "public_key": key.hex(),
            "key_id": key_id_for(key)}


def _run_verifier(svc: Any, who: Any, checkpoint: dict[str, Any] | None) -> dict[str, Any]:
    """Download the log as ``xdp audit verify`` does (export, heads, key) and run its verifier."""
    text = rest.export(svc, who).body.decode()
    entries = [json.loads(line) for line in text.splitlines() if line.strip()]
    heads = rest.heads(svc, who, 1)
    key = rest.public_key(svc, who)["public_key"]
    report = verify_log(entries, heads, key, checkpoint)
    problems = list(report.problems)
    checks = []
    for slug, name, what, prefixes in CHECKS:
        found = [p for p in problems if p.startswith(prefixes)]
        problems = [p for p in problems if p not in found]
        ran = slug != "checkpoint" or checkpoint is not None
        checks.append({"slug": slug, "name": name, "what": what, "ran": ran, "problems": found})
    # Shown in the verifier's own order (audit/verify.py steps 1-6).
    order = ["key", "sequence", "signatures", "roots", "coverage", "checkpoint"]
    checks.sort(key=lambda c: order.index(c["slug"]))
    if problems:  # anything the table above does not name
        checks.append({"slug": "other", "name": "Other", "what": "Further findings", "ran": True,
                       "problems": problems})
    return {"report": report.to_dict(), "checks": checks,
            "new_checkpoint": make_checkpoint(report, key) if report.ok else None}


@router.get("/verify")
async def verify_form(request: Request, user: AuditorUser) -> Response:
    return pages(request).render(request, "audit_verify.html", user, title="Verify the log", result=None,
                                 checkpoint_text="", error="")


@router.post("/verify")
async def verify_run(request: Request, user: AuditorUser, svc: ConsoleSvc, form: Form) -> Response:
    text = form.get("checkpoint", "")
    try:
        key = (await asyncio.to_thread(rest.public_key, svc, user.principal))["public_key"]
        checkpoint = _checkpoint_from(text, key) if text.strip() else None
    except BadRequest as e:
        return pages(request).render(request, "audit_verify.html", user, status=400, title="Verify the log",
                                     result=None, checkpoint_text=text, error=e.detail)
    result = await asyncio.to_thread(_run_verifier, svc, user.principal, checkpoint)
    return pages(request).render(request, "audit_verify.html", user, title="Verify the log", result=result,
                                 checkpoint_text=text, error="", with_checkpoint=checkpoint is not None,
                                 new_checkpoint=json.dumps(result["new_checkpoint"], indent=2)
                                 if result["new_checkpoint"] else "")


# -- metering as charts ---------------------------------------------------------------------


def _charts(name: str, track: dict[str, Any]) -> dict[str, Any]:
    points = [(p["time"], p["epsilon"]) for p in track["epsilon_over_time"]]
    bars = sorted(track["jobs_by_kind"].items())
    return {
        "name": name, "points": track["epsilon_over_time"], "bars": bars,
        "line": step_line_chart(points, title=f"ε spent over time: {name}",
                                desc=f"Cumulative ε released for {name}, one point per released log entry "
                                     f"({len(points)} points)."),
        "bar": bar_chart([(k, float(v)) for k, v in bars], title=f"Jobs by kind: {name}",
                         desc=f"Metered log entries for {name} by kind ({len(bars)} kinds)."),
    }


@router.get("/metering")
async def metering_page(request: Request, user: AuditorUser, svc: ConsoleSvc) -> Response:
    series = await asyncio.to_thread(metering_series, svc, user.principal)
    totals = await asyncio.to_thread(metering, svc, user.principal)
    return pages(request).render(
        request, "audit_metering.html", user, title="Metering",
        analysts=[_charts(k, v) for k, v in series["per_analyst"].items()],
        datasets=[_charts(k, v) for k, v in series["per_dataset"].items()], totals=totals)
