"""What ``xdp audit verify`` and ``xdp audit witnesses`` do once they hold a client (options live in main)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

DEFAULT_MAX_AGE = 600.0  # seconds: witnesses re-cosign the latest head every 30 s while online


def verify_and_report(client: Any, checkpoint: Path | None, witnesses: Path | None, quorum: int | None,
                      max_age: float, wait: float) -> None:
    """Verify the log; print the outcome; raise ``typer.Exit(1)`` naming every problem on failure."""
    from xdp_compute.sdk.audit import load_witnesses, verify_remote

    pinned = load_witnesses(witnesses) if witnesses else None
    if pinned is None and checkpoint is None:
        typer.echo("warning: no --witnesses and no --checkpoint: the log is checked only against its own "
                   "key, which its operator holds; a rewrite re-signed with it is not detected", err=True)
    report, _ = verify_remote(client, checkpoint, witnesses=pinned, quorum=quorum, max_age=max_age or None,
                              wait=wait if pinned is not None else 0.0)
    if report.ok:
        typer.echo(f"release log verified: {report.tree_size} entries, root {report.root_hash.hex()}")
        if pinned is not None:
            from xdp_compute.audit.witnessed import default_quorum

            k = quorum if quorum is not None else default_quorum(len(pinned))
            typer.echo(f"witnessed by a quorum of {k} of {len(pinned)} pinned witnesses")
        if checkpoint:
            typer.echo(f"checkpoint saved to {checkpoint}")
        return
    where = f" (first bad index: {report.first_bad_index})" if report.first_bad_index is not None else ""
    typer.echo(f"release log verification FAILED{where}:", err=True)
    for p in report.problems:
        typer.echo(f"  - {p}", err=True)
    raise typer.Exit(1)


def fetch_and_pin(client: Any, save: Path) -> None:
    """Fetch the gateway's witnesses once and save their vkeys for ``--witnesses``."""
    from xdp_compute.sdk.audit import fetch_witnesses, save_witnesses

    found = fetch_witnesses(client)
    if not found:
        typer.echo("the gateway knows no witnesses yet (nodes cosign once they are online)", err=True)
        raise typer.Exit(1)
    save_witnesses(save, found)
    for w in found:
        typer.echo(f"{w['vkey']}  (cosigned size {w['tree_size']})")
    typer.echo(f"{len(found)} witnesses pinned in {save}; check each with its holder, then use "
               f"`xdp audit verify --witnesses {save}`")
