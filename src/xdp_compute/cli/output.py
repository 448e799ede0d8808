"""What ``xdp`` prints: one JSON document (``--json``) or readable tables on stdout; notes and
waiting lines on stderr, so that stdout stays parseable."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping
from typing import Any

import typer


def as_data(obj: Any) -> Any:
    """An SDK result as plain JSON-ready data: pydantic models dumped, containers walked.

    The one conversion at the CLI's boundary with the SDK, whatever shape the SDK returns
    (dicts today, typed pydantic models as the SDK moves to them)."""
    dump = getattr(obj, "model_dump", None)
    if callable(dump):
        return dump(mode="json")
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: as_data(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): as_data(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [as_data(x) for x in obj]
    return obj


def print_json(obj: Any) -> None:
    """Print ``obj`` as one JSON document on stdout."""
    typer.echo(json.dumps(as_data(obj), indent=2, default=str))


def note(message: str) -> None:
    """Say something the command did that the caller did not ask for (stderr)."""
    typer.echo(f"note: {message}", err=True)


def waiting(message: str) -> None:
    typer.echo(f"waiting: {message}", err=True)


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (list, tuple)):
        return ", ".join(_cell(x) for x in v)
    if isinstance(v, Mapping):
        return ", ".join(f"{k}={_cell(x)}" for k, x in v.items())
    return str(v)


def print_table(rows: Iterable[Mapping[str, Any]], columns: list[str], title: str | None = None,
                empty: str = "(none)") -> None:
    """A plain table on stdout (rich; wide when stdout is not a terminal, so pipes see whole lines)."""
    from rich.console import Console
    from rich.table import Table

    rows = list(rows)
    console = Console()
    if not console.is_terminal:
        console = Console(width=200)
    if not rows:
        if title:
            console.print(title, markup=False, highlight=False)
        console.print(empty, markup=False, highlight=False)
        return
    t = Table(title=title, title_justify="left", box=None, header_style="bold", pad_edge=False)
    for c in columns:
        t.add_column(c, overflow="fold")
    for r in rows:
        t.add_row(*[_cell(r.get(c)) for c in columns])
    console.print(t)


def epsilon_note(requested: float, spent: float) -> str | None:
    """The note when a query spends less ε than asked (``plan_noise`` caps it at what the noise buys)."""
    if requested <= 0 or spent >= requested * (1 - 1e-4):
        return None
    return (f"ε lowered from {requested:g} to {spent:.4g}: the noise is already at its floor (each node adds "
            "at least the smallest discrete Gaussian the distributed bound allows, σ² = 1/4; Kairouz, Liu, "
            "Steinke 2021), so a larger ε buys no accuracy; only the lower ε is charged")
