"""What ``xdp audit verify``, ``witnesses`` and ``entries`` do once they hold a client (options live in main)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from xdp_compute.cli.output import as_data, print_json, print_table

DEFAULT_MAX_AGE = 600.0  # seconds: witnesses re-cosign the latest head every 30 s while online


def verify_and_report(client: Any, checkpoint: Path | None, witnesses: Path | None, quorum: int | None,
                      max_age: float, wait: float, as_json: bool = False) -> None:
    """Verify the log; print the outcome; raise ``typer.Exit(1)`` naming every problem on failure."""
    from xdp_compute.sdk.audit import load_witnesses, verify_remote

    pinned = load_witnesses(witnesses) if witnesses else None
    if pinned is None and checkpoint is None:
        typer.echo("warning: no --witnesses and no --checkpoint: the log is checked only against its own "
                   "key, which its operator holds; a rewrite re-signed with it is not detected", err=True)
    report, _ = verify_remote(client, checkpoint, witnesses=pinned, quorum=quorum, max_age=max_age or None,
                              wait=wait if pinned is not None else 0.0)
    if as_json:
        from xdp_compute.audit.witnessed import default_quorum

        print_json({"ok": report.ok, "tree_size": report.tree_size,
                    "root_hash": report.root_hash.hex() if report.root_hash else None,
                    "first_bad_index": report.first_bad_index, "problems": list(report.problems),
                    "witnesses_pinned": len(pinned) if pinned is not None else None,
                    "quorum": (quorum if quorum is not None else default_quorum(len(pinned))) if pinned else None,
                    "checkpoint": str(checkpoint) if checkpoint and report.ok else None})
        if not report.ok:
            raise typer.Exit(1)
        return
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


def fetch_and_pin(client: Any, save: Path, as_json: bool = False) -> None:
    """Fetch the gateway's witnesses once and save their vkeys for ``--witnesses``."""
    from xdp_compute.sdk.audit import fetch_witnesses, save_witnesses

    found = as_data(fetch_witnesses(client))
    if not found:
        typer.echo("the gateway knows no witnesses yet (nodes cosign once they are online)", err=True)
        raise typer.Exit(1)
    save_witnesses(save, found)
    if as_json:
        print_json({"witnesses": found, "saved": str(save)})
        return
    for w in found:
        typer.echo(f"{w['vkey']}  (cosigned size {w['tree_size']})")
    typer.echo(f"{len(found)} witnesses pinned in {save}; check each with its holder, then use "
               f"`xdp audit verify --witnesses {save}`")


def print_entries(entries: list[dict[str, Any]], as_json: bool) -> None:
    """Release-log entries as a table (index, kind, operation, principal, ε, datasets, payload digest)."""
    import datetime as dt

    if as_json:
        print_json(entries)
        return
    rows = [{"index": e.get("index"), "time (UTC)": dt.datetime.fromtimestamp(e["time"], dt.UTC)
             .strftime("%Y-%m-%d %H:%M:%S") if e.get("time") else "-", "kind": e.get("kind"),
             "operation": e.get("operation"), "principal": e.get("principal"),
             "epsilon": (e.get("privacy_cost") or {}).get("epsilon"), "datasets": e.get("datasets"),
             "job": e.get("job_id"), "payload": (e.get("payload_digest") or "-")[:16]} for e in entries]
    print_table(rows, ["index", "time (UTC)", "kind", "operation", "principal", "epsilon", "datasets", "job",
                       "payload"], empty="(no entries)")
