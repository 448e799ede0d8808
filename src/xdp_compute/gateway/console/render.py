"""Rendering console pages: one Jinja2 environment, autoescaped, with the session in every page."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import jinja2
from fastapi import Request
from fastapi.responses import HTMLResponse

from xdp_compute.gateway.console.session import ConsoleSession

HERE = Path(__file__).resolve().parent

# Navigation by role: (path under /console, label). Pages of a role add themselves here.
NAV: dict[str, list[tuple[str, str]]] = {
    "holder": [("/holder/approvals", "Approvals"), ("/holder/nodes", "Nodes"),
               ("/holder/budgets", "Budgets"), ("/holder/jobs", "Jobs on my data")],
    "analyst": [("/analyst/catalog", "Catalog"), ("/analyst/budgets", "Budgets"), ("/analyst/jobs", "Jobs")],
    "auditor": [("/audit/log", "Release log"), ("/audit/verify", "Verify the log"), ("/audit/metering", "Metering")],
    "admin": [],
}


def _when(ts: Any) -> str:
    """A Unix time as UTC text (pages show times, never raw floats)."""
    if ts is None or ts == "":
        return "—"
    try:
        return dt.datetime.fromtimestamp(float(ts), dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (TypeError, ValueError, OverflowError, OSError):
        return str(ts)


def _num(x: Any, digits: int = 4) -> str:
    if x is None:
        return "—"
    if isinstance(x, bool) or not isinstance(x, int | float):
        return str(x)
    if isinstance(x, int):
        return str(x)
    return f"{x:.{digits}g}" if abs(x) < 1e-3 and x != 0 else f"{x:.{digits}f}".rstrip("0").rstrip(".") or "0"


def _flat(v: Any) -> str | None:
    """A list of plain values as one comma-separated line (None for anything nested)."""
    if isinstance(v, list | tuple) and all(x is None or isinstance(x, str | int | float | bool) for x in v):
        return ", ".join("—" if x is None else str(x) for x in v) or "none"
    return None


def environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"),
                             autoescape=True,  # every value is HTML-escaped unless a template says otherwise
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["when"] = _when
    env.filters["num"] = _num
    env.filters["flat"] = _flat
    return env


class Pages:
    """Renders templates; ``base.html`` gets the user, its nav, its CSRF token and flash messages."""

    def __init__(self) -> None:
        self.env = environment()

    def render(self, request: Request, template: str, user: ConsoleSession | None = None, status: int = 200,
               **context: Any) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        ctx = {"root": root, "user": user, "nav": NAV.get(user.role, []) if user else [],
               "csrf": user.csrf if user else "", "flash": user.take_flash() if user else [],
               "path": request.url.path[len(root):] if root else request.url.path, **context}
        html = self.env.get_template(template).render(ctx)
        return HTMLResponse(html, status_code=status)


def pages(request: Request) -> Pages:
    return request.app.state.pages  # type: ignore[no-any-return]
