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

    def to_pandas(self, intervals: bool = False) -> Any:
        """The rows as a ``pandas.DataFrame`` (suppressed cells are missing values).

        ``intervals=True`` adds ``<column>_low`` and ``<column>_high`` for every column that has a
        confidence interval at ``level``. Needs pandas: ``pip install 'xdp-compute[pandas]'``.
        """
        try:
            import pandas as pd  # type: ignore[import-untyped,unused-ignore]
        except ImportError:
            raise ImportError("QueryResult.to_pandas() needs pandas, which the SDK does not install by default: "
                              "pip install 'xdp-compute[pandas]'") from None
        cols = self.columns or (list(self.rows[0]) if self.rows else [])
        records: list[dict[str, Any]] = []
        for row, iv in zip(self.rows, self.intervals or [{}] * len(self.rows), strict=False):
            rec = {c: row.get(c) for c in cols}
            if intervals:
                for c in cols:
                    if c in (iv or {}):
                        pair = (iv or {}).get(c)
                        rec[f"{c}_low"], rec[f"{c}_high"] = pair if pair is not None else (None, None)
            records.append(rec)
        frame = pd.DataFrame.from_records(records, columns=None if intervals else cols)
        frame.attrs.update(epsilon=self.epsilon, delta=self.delta, level=self.level, job_id=self.job_id)
        return frame

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
    """A QueryResult from a released delivery (``POST /v1/queries`` or ``GET /v1/jobs/{id}``)."""
    res = delivery["result"]
    intervals = [{k: (tuple(v) if v is not None else None) for k, v in iv.items()} for iv in res["intervals"]]
    cols = res.get("columns") or []
    rows = [{k: r.get(k) for k in cols} for r in res["rows"]] if cols else res["rows"]
    return QueryResult(rows=rows, intervals=intervals, epsilon=res["epsilon"], delta=res["delta"],
                       remaining=delivery.get("budget_left", {}), columns=cols, level=res.get("level", 0.95),
                       job_id=delivery.get("job_id"), nodes=res.get("nodes", []), receipt=delivery.get("receipt"),
                       delivery=delivery)
