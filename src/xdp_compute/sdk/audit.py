"""Auditor-side download and offline verification of the release log (``xdp audit verify``)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from xdp_compute.audit import make_checkpoint, verify_log
from xdp_compute.audit.verify import VerifyReport
from xdp_compute.errors import BadRequest


def download_log(client: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]], str]:
    """All entries (JSON Lines export), all signed heads and the published key."""
    resp = client._http.get("/v1/audit/export")
    from xdp_compute.sdk.client import raise_for_problem

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


def verify_remote(client: Any, checkpoint_path: Path | None) -> tuple[VerifyReport, dict[str, Any] | None]:
    """Download, recompute, check every signature and consistency from the checkpoint."""
    entries, heads, key = download_log(client)
    checkpoint = load_checkpoint(checkpoint_path)
    report = verify_log(entries, heads, key, checkpoint)
    new = make_checkpoint(report, key) if report.ok else None
    if new is not None and checkpoint_path is not None:
        save_checkpoint(checkpoint_path, new)
    return report, new
