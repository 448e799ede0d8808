"""validate_source on a dataset open to hidden lookups: what a lookup table would leave out, in counts.

The node's build leaves out every row of a repeated key, the keys beyond the declared capacity
and records longer than ``label_bytes`` (the analyst sees the same table either way); the holder
learns it here and in its node's log. Counts only: never a key or a value.
"""

from __future__ import annotations

from pathlib import Path

from xdp_compute.domain.manifest import parse_manifest_text
from xdp_compute.node.validate import validate_source

MANIFEST = """
[node]
name = "bureau"
region = "CN-FJ"

[[datasets]]
name = "credit"
source = "credit.csv"
classification = "sensitive"
epsilon_budget = 5.0

[datasets.lookup]
key = "citizen_id"
columns = ["score", "note"]
capacity = 6
label_bytes = 40

[datasets.columns]
citizen_id = { type = "text", uses = [] }
score      = { type = "int", min = 300, max = 900, uses = ["aggregate"] }
note       = { type = "text", uses = [] }
"""


def report(tmp_path: Path, rows: list[str]) -> dict:
    (tmp_path / "credit.csv").write_text("citizen_id,score,note\n" + "".join(r + "\n" for r in rows))
    m = parse_manifest_text(MANIFEST, base_dir=tmp_path, check_files=False)
    return validate_source(m, m.datasets[0])


def test_a_clean_source_leaves_nothing_out(tmp_path: Path) -> None:
    r = report(tmp_path, [f"ID{i},{400 + i},ok" for i in range(4)] + [",500,no key"])
    assert r["ok"], r["problems"]
    assert r["lookup"] == {"capacity": 6, "label_bytes": 40, "rows": 4, "entries": 4, "repeated_keys": 0,
                           "repeated_rows": 0, "beyond_capacity": 0, "labels_too_long": 0, "left_out": 0}


def test_repeated_keys_keys_beyond_capacity_and_long_labels_are_counted_never_shown(tmp_path: Path) -> None:
    rows = ([f"ID{i},{400 + i},ok" for i in range(8)]             # 8 keys for 6 slots
            + ["ID1,401,SECRET_DUP", " ID1 ,402,again"]          # ID1 three times (trimmed like a lookup key)
            + ["ID0,400,SECRET_" + "x" * 40])                    # ID0 twice, one of them too long
    r = report(tmp_path, rows)
    assert not r["ok"]
    assert r["lookup"] == {"capacity": 6, "label_bytes": 40, "rows": 11, "entries": 6, "repeated_keys": 2,
                           "repeated_rows": 5, "beyond_capacity": 0, "labels_too_long": 0, "left_out": 5}
    assert any("2 value(s) of the lookup key 'citizen_id' are repeated (5 rows)" in p for p in r["problems"])
    rows = [f"ID{i:02d},{400 + i},ok" for i in range(9)] + ["ID03,1,also"] + ["ID01,400," + "y" * 40]
    r = report(tmp_path, rows)
    # ID01 and ID03 are repeated; of the 7 other keys the first 6 in key order stay.
    assert r["lookup"]["repeated_keys"] == 2 and r["lookup"]["beyond_capacity"] == 1
    assert r["lookup"]["entries"] == 6
    r = report(tmp_path, ["A1,400,ok", "A2,400," + "z" * 40])
    assert r["lookup"]["labels_too_long"] == 1 and r["lookup"]["entries"] == 1
    assert any("longer than the declared label_bytes 40" in p for p in r["problems"])
    text = repr(r) + repr(report(tmp_path, rows))
    assert "SECRET" not in text and "ID0" not in text and "A2" not in text and "zzz" not in text


def test_a_missing_key_column_is_a_structural_problem_only(tmp_path: Path) -> None:
    (tmp_path / "credit.csv").write_text("score,note\n400,ok\n")
    m = parse_manifest_text(MANIFEST, base_dir=tmp_path, check_files=False)
    r = validate_source(m, m.datasets[0])
    assert not r["ok"] and "column 'citizen_id' missing" in r["problems"] and "lookup" not in r
