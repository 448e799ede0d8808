"""``xdp demo`` (issue #15 item 4): every role its own principal, a holder approving a job on a dataset
that requires approval, the SQL before each result, the validation report read from its real keys,
and the ML team using the released model.

Before: the analyst also trained the model; no job needed approval; the holders' lines said
``violations=0`` from a key the validation report never contains.
"""

from __future__ import annotations

import io
import os
import re
from pathlib import Path

import pytest
from rich.console import Console

from xdp_compute.cli.demo import validation_line


def descendants(pid: int) -> set[int]:
    """Live (non-zombie) descendants of ``pid``, from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out: set[int] = set()
    todo = [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in out:
                out.add(c)
                todo.append(c)
    return out


def test_the_validation_line_reads_the_reports_real_keys() -> None:
    report = {"dataset": "patients", "source_kind": "csv", "ok": False, "rows": 12, "malformed_lines": 0,
              "problems": ["column 'age' missing"], "warnings": ["the database role can INSERT on the table"],
              "columns": {"age": {"present": False, "nulls": None, "type_violations": None, "out_of_bounds": None,
                                  "undeclared_values": None},
                          "cost": {"present": True, "nulls": 2, "type_violations": 3, "out_of_bounds": 4,
                                   "undeclared_values": 0},
                          "chronic": {"present": True, "nulls": 0, "type_violations": 0, "out_of_bounds": 0,
                                      "undeclared_values": 5}}}
    line = validation_line(report)
    assert "valid=False rows=12" in line
    assert "type violations=3, out of bounds=4, undeclared values=5, nulls=2" in line
    assert "problem: column 'age' missing" in line and "warning: the database role can INSERT" in line


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_demo_walks_every_role_as_its_own_principal() -> None:
    from xdp_compute.cli.demo import run_demo

    before = descendants(os.getpid())
    buf = io.StringIO()
    assert run_demo(Console(file=buf, width=200)) == 0
    out = buf.getvalue()
    # Every role is its own principal, as the gateway knows them.
    for name, role in [("city-data-office", "admin"), ("health-bureau-analyst", "analyst"),
                       ("hospital-ml-team", "analyst"), ("city-auditor", "auditor"),
                       ("siming-hospital-holder", "holder"), ("huli-hospital-holder", "holder"),
                       ("jimei-hospital-holder", "holder")]:
        assert re.search(rf"{name}\s+\S\s+{role}\b", out), name
    # The validation report as it is: counts from its columns, never the key it never had.
    assert "violations=0 " not in out.replace("type violations=0", "")
    assert len(re.findall(r"valid=True rows=\d+; type violations=0, out of bounds=0", out)) == 6
    # The holder approves the analyst's job on the dataset that requires approval; it then runs.
    assert "awaiting_approval" in out
    assert re.search(r"siming-hospital-holder sees: query by 'health-bureau-analyst'; cost epsilon=0\.5", out)
    assert re.search(r"siming-hospital-holder approves job \w+: approved", out)
    assert re.search(r"approval_given\s+query\s+siming-hospital-holder", out)
    # The SQL is printed before each result table.
    lines = out.splitlines()
    for header in ("district  patients ", "drug        prescriptions"):
        at = next(i for i, ln in enumerate(lines) if ln.startswith(header))
        assert any(ln.strip().startswith("SQL: SELECT") for ln in lines[max(0, at - 25):at]), header
    # The ML team trains and uses the released model on raw rows, and exports it.
    assert re.search(r"released\s+training\s+hospital-ml-team", out)
    assert "features: age, stay_days, chronic, cost; label 'readmitted' (classes no, yes)" in out
    m = re.search(r"accuracy (\d\.\d+) \[(\d\.\d+), (\d\.\d+)\], loss (\d+\.\d+)", out)
    assert m and 0 <= float(m[2]) <= float(m[1]) <= float(m[3]) <= 1 and float(m[4]) >= 0
    assert "predict() on raw rows" in out and "onnxruntime alone gives P(readmitted=yes)" in out
    acc = re.search(r"accuracy of predict\(\) on 400 fresh synthetic patients' raw rows: (\d\.\d+)", out)
    assert acc and 0.0 <= float(acc[1]) <= 1.0
    assert "verified: True" in out and "demo finished" in out
    # Every process it started is gone.
    assert descendants(os.getpid()) <= before
