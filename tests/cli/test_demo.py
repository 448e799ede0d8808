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
    # Issue #16: a second holder's node; a private join of two holders' datasets, printed with its intervals.
    assert "a second holder, 'xiamen-insurer-holder', runs xiamen-insurer" in out
    assert "catalog: 'claims' (owner xiamen-insurer-holder) on xiamen-insurer; join key citizen (citizen-id)" in out
    assert "dry run: join_aggregate over admissions, claims; indicators from 'admissions', values from 'claims'" in out
    at = next(i for i, ln in enumerate(lines) if ln.startswith("ward ") and "people" in ln and "avg_claim" in ln)
    assert lines[at - 1].strip().startswith("SQL: SELECT h.ward, COUNT(*) AS people, AVG(i.claim)") or any(
        "JOIN claims i ON h.citizen = i.citizen" in ln for ln in lines[max(0, at - 5):at])
    truth = dict(re.findall(r"(cardiology|general|oncology) (\d+) people, mean claim", out))
    assert len(truth) == 3 and sum(map(int, truth.values())) == 32  # 32 shared citizens, every one in a ward
    for ward in ("cardiology", "general", "oncology"):  # every group, printed with its 95% intervals "[lo, hi]"
        row = re.search(rf"^{ward}\s+(.*)$", out, re.MULTILINE)
        assert row, ward
        n = re.match(r"(-?\d+) \[(-?\d+), (-?\d+)\]", row[1])
        if n:  # a cell whose noisy count fell below min_group_size is blanked by the SDK (rare at ε=8)
            value, low, high = (int(x) for x in n.groups())
            # 1.5 widths of a 95% interval is z = 5.9: a correct join misses it less than once in 10^8
            assert abs(value - int(truth[ward])) <= 1.5 * (high - low) + 1, (ward, row[1], truth)
    assert re.search(r"private join released in \d+\.\ds .* delivered encrypted", out)
    # Issue #17: the exchange — an asset, a query product, an approved subscription, a metered query.
    assert re.search(r"xiamen-insurer-holder registers asset 'claims' version 1 \(log #\d+\): content commitment "
                     r"[0-9a-f]{16}\.\.\., metadata commitment [0-9a-f]{16}", out)
    assert "from now on queries on 'claims' need a subscription" in out
    sub = re.search(r"health-bureau-analyst subscribes: (\w+) pending", out)
    assert sub and f"xiamen-insurer-holder approves subscription {sub[1]}: approved" in out
    assert re.search(r"^basic\s+\S+ \[", out, re.MULTILINE) and "metered on release: 0.4 epsilon, amount 40.00" in out
    # A hidden lookup: the present key's record, the absent key not found, the holder saw neither.
    assert re.search(r"lookup 350203198807150042: found \{'tier': '(basic|gold)', 'premium': [\d.]+\}", out)
    assert re.search(r"lookup 350203199912319999: not found \(log #\d+\); 8 calls left", out)
    assert "opted in ([datasets.lookup], capacity 256)" in out
    assert "xiamen-insurer-holder's node saw neither key" in out
    # Settlement: one statement per party, each from the log; both equal the metered usage.
    assert re.search(r"settles \d{4}-\d\d: 2 statements written", out)
    for side, party in (("subscriber", "health-bureau-analyst"), ("holder", "xiamen-insurer-holder")):
        assert re.search(rf"statement \d{{4}}-\d\d {side} {party}: total 41\.00 \(settled, log #\d+\)", out), party
    # The auditor verifies the whole log, the new kinds included.
    for kind in (r"join_aggregate", r"asset_registered", r"product_listed", r"subscription_decided",
                 r"lookup\s+lookup", r"statement_issued"):
        assert re.search(rf"#\d+\s+\w*\s*{kind}", out), kind
    n = re.search(r"verified: True; (\d+) entries", out)
    assert n and int(n[1]) == len(re.findall(r"^  #\d+ ", out, re.MULTILINE))
    assert "verified: True" in out and "demo finished" in out
    # Every process it started is gone.
    assert descendants(os.getpid()) <= before
