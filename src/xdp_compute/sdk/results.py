"""Result types the SDK returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class QueryResult:
    """A released answer: ``rows`` keyed by column alias (None where suppressed), same-shaped
    ``intervals`` of (low, high) pairs, the privacy cost and the budget left, plus the receipt."""

    rows: list[dict[str, Any]]
    intervals: list[dict[str, tuple[float, float] | None]]
    epsilon: float
    delta: float
    remaining: dict[str, float]
    columns: list[str] = field(default_factory=list)
    level: float = 0.95
    job_id: str | None = None
    nodes: list[str] = field(default_factory=list)
    receipt: dict[str, Any] | None = None
    delivery: dict[str, Any] = field(default_factory=dict, repr=False)

    def table(self, digits: int = 2) -> str:
        """A plain-text table with intervals."""
        cols = self.columns or (list(self.rows[0]) if self.rows else [])
        head = []
        for c in cols:
            head.append(c)
        lines = [head]
        for row, iv in zip(self.rows, self.intervals, strict=False):
            cells = []
            for c in cols:
                v = row.get(c)
                i = iv.get(c) if iv else None
                if v is None:
                    cells.append("(suppressed)" if c not in (iv or {}) or i is None else "-")
                elif isinstance(v, float):
                    d = 0 if v.is_integer() and (i is None or (float(i[0]).is_integer() and float(i[1]).is_integer())) \
                        else digits
                    cells.append(f"{v:,.{d}f}" + (f" [{i[0]:,.{d}f}, {i[1]:,.{d}f}]" if i else ""))
                else:
                    cells.append(str(v))
            lines.append(cells)
        widths = [max(len(r[k]) for r in lines) for k in range(len(cols))]
        out = ["  ".join(x.ljust(w) for x, w in zip(r, widths, strict=True)) for r in lines]
        out.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(out)


def query_result(delivery: dict[str, Any]) -> QueryResult:
    res = delivery["result"]
    intervals = [{k: (tuple(v) if v is not None else None) for k, v in iv.items()} for iv in res["intervals"]]
    cols = res.get("columns") or []
    rows = [{k: r.get(k) for k in cols} for r in res["rows"]] if cols else res["rows"]
    return QueryResult(rows=rows, intervals=intervals, epsilon=res["epsilon"], delta=res["delta"],
                       remaining=delivery.get("budget_left", {}), columns=cols, level=res.get("level", 0.95),
                       job_id=delivery.get("job_id"), nodes=res.get("nodes", []), receipt=delivery.get("receipt"),
                       delivery=delivery)
