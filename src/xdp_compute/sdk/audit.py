"""Auditor-side download and offline verification of the release log (``xdp audit verify``)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from xdp_compute.audit import make_checkpoint, verify_log
from xdp_compute.audit.verify import VerifyReport
from xdp_compute.audit.witnessed import PinnedWitness, parse_witness_file
from xdp_compute.errors import BadRequest, ProofError


def download_log(client: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]], str]:
    """All entries (JSON Lines export), all signed heads and the published key."""
    from xdp_compute.sdk.client import Call, raise_for_problem

    resp = client._response(Call("GET", "/v1/audit/export", lambda d: d))  # raw JSON Lines; fails over

    raise_for_problem(resp)
    entries = [json.loads(line) for line in resp.text.splitlines() if line.strip()]
    heads = client._get("/v1/audit/heads")
    key = client.public_key()
    return entries, heads, key


def load_checkpoint(path: Path | None) -> dict[str, Any] | None:
    if path is None or not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise BadRequest(f"{path}: not a readable checkpoint ({e})") from None
    if not isinstance(data, dict):
        raise BadRequest(f"{path}: not a checkpoint object")
    return data


def save_checkpoint(path: Path, checkpoint: dict[str, Any]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(checkpoint, indent=2))
    os.replace(tmp, path)


def load_witnesses(path: Path) -> list[PinnedWitness]:
    """The auditor's pinned witnesses: one C2SP vkey per line (see ``xdp audit witnesses``)."""
    try:
        text = path.read_text()
    except OSError as e:
        raise BadRequest(f"{path}: cannot read the witness file ({e.strerror})") from None
    try:
        return parse_witness_file(text)
    except ProofError as e:
        raise BadRequest(f"{path}: {e.detail}") from None


def fetch_witnesses(client: Any) -> list[dict[str, Any]]:
    """The witnesses the gateway knows (name, vkey): trust on first use, to pin and keep."""
    return client._get("/v1/audit/witnesses")  # type: ignore[no-any-return]


def save_witnesses(path: Path, witnesses: list[dict[str, Any]]) -> None:
    lines = ["# Release-log witnesses pinned by this auditor (C2SP vkeys, cosignature/v1).",
             "# Check each against its holder out of band; `xdp audit verify --witnesses` trusts only these.",
             *[w["vkey"] for w in witnesses]]
    parse_witness_file("\n".join(lines))  # refuse to save anything malformed
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)


def verify_remote(client: Any, checkpoint_path: Path | None, *, witnesses: list[PinnedWitness] | None = None,
                  quorum: int | None = None, max_age: float | None = None,
                  wait: float = 0.0) -> tuple[VerifyReport, dict[str, Any] | None]:
    """Download, recompute, check every signature, consistency from the checkpoint and the witnesses.

    With ``witnesses``, a quorum of them must have cosigned the whole log within ``max_age``
    seconds; witnesses cosign a new head within a few seconds, so a failing check is retried
    for up to ``wait`` seconds before it is reported.
    """
    checkpoint = load_checkpoint(checkpoint_path)
    deadline = time.monotonic() + wait
    while True:
        entries, heads, key = download_log(client)
        cosigned: list[str] = []
        if witnesses is not None:
            cosigned = list(client._get("/v1/audit/cosigned").get("checkpoints") or [])
        report = verify_log(entries, heads, key, checkpoint, witnesses=witnesses, cosigned=cosigned,
                            quorum=quorum, max_age=max_age)
        if report.ok or time.monotonic() >= deadline:
            break
        time.sleep(1.0)
    new = make_checkpoint(report, key) if report.ok else None
    if new is not None and checkpoint_path is not None:
        save_checkpoint(checkpoint_path, new)
    return report, new
