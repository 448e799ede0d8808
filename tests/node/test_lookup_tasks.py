"""The node's side of hidden lookups: its own opt-in policy, the table, one evaluation per lookup."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from xdp_compute.contract.tasks import (
    LOOKUP_STALE,
    LookupEvaluate,
    LookupPrepare,
    LookupTablePart,
    decode_reply,
    encode,
)
from xdp_compute.crypto.pir import LookupTable, blind, finalize, lookup_key_bytes
from xdp_compute.crypto.pir.table import HEADER_BYTES
from xdp_compute.crypto.psi import random_point
from xdp_compute.domain.manifest import load_manifest
from xdp_compute.node.executors import TaskExecutor

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
columns = ["score", "defaulted"]
capacity = 50
label_bytes = 64

[datasets.columns]
citizen_id = { type = "text", uses = [] }
score      = { type = "int", min = 300, max = 900, uses = ["aggregate"] }
defaulted  = { type = "bool", uses = ["aggregate"] }
income     = { type = "float", min = 0, max = 1e6, uses = ["aggregate"] }

[[datasets]]
name = "closed"
source = "credit.csv"
classification = "sensitive"
epsilon_budget = 5.0

[datasets.columns]
citizen_id = { type = "text", uses = [] }
score      = { type = "int", min = 300, max = 900, uses = ["aggregate"] }
"""
ROWS = "citizen_id,score,defaulted,income\n" + "".join(
    f"ID{i:04d},{300 + i},{'true' if i % 3 == 0 else 'false'},{1000 * i}\n" for i in range(20))


@pytest.fixture
def node(tmp_path: Path) -> TaskExecutor:
    (tmp_path / "credit.csv").write_text(ROWS)
    (tmp_path / "node.toml").write_text(MANIFEST)
    ex = TaskExecutor(load_manifest(tmp_path / "node.toml"))
    ex.node_id = "n1"
    return ex


def run(ex: TaskExecutor, request: object) -> object:
    header, blobs = encode(request)  # type: ignore[arg-type]
    out = ex.handle(request.KIND, "lookup", header, blobs)  # type: ignore[attr-defined]
    if not out.ok:
        raise RuntimeError(out.error)
    return decode_reply(request.KIND, out.header, out.blobs)  # type: ignore[attr-defined]


def fetch(ex: TaskExecutor, columns: list[str]) -> tuple[object, LookupTable]:
    info = run(ex, LookupPrepare(dataset="credit", product="p1", columns=columns))
    data = b"".join(run(ex, LookupTablePart(dataset="credit", product="p1", version=info.version,  # type: ignore[attr-defined]
                                            part=i)).data for i in range(info.parts))  # type: ignore[attr-defined]
    return info, LookupTable.parse(data)


def lookup(ex: TaskExecutor, info: object, table: LookupTable, key: str) -> dict | None:
    state = blind(lookup_key_bytes("text", key))  # type: ignore[arg-type]
    reply = run(ex, LookupEvaluate(dataset="credit", product="p1", version=info.version,  # type: ignore[attr-defined]
                                   point=state.blinded, principal="ana"))
    return table.find(finalize(state, reply.point))  # type: ignore[attr-defined]


def test_present_key_gives_its_record_and_absent_key_none(node: TaskExecutor) -> None:
    info, table = fetch(node, ["score", "defaulted"])
    assert info.capacity == 50 and info.key_type == "text"  # type: ignore[attr-defined]
    assert lookup(node, info, table, "ID0006") == {"score": 306, "defaulted": True}
    assert lookup(node, info, table, " ID0007 ") == {"score": 307, "defaulted": False}  # trimmed like the node
    assert lookup(node, info, table, "ID9999") is None


def test_table_size_is_the_declared_capacity_not_the_row_count(node: TaskExecutor, tmp_path: Path) -> None:
    info, table = fetch(node, ["score"])
    size = info.table_bytes  # type: ignore[attr-defined]
    (tmp_path / "credit.csv").write_text(ROWS.splitlines()[0] + "\n" + "ID1,400,true,1\n")
    os.utime(tmp_path / "credit.csv", ns=(1, 1))
    info2, _ = fetch(node, ["score"])
    assert info2.version != info.version and info2.table_bytes == size == table.capacity * (16 + 64 + 16) + HEADER_BYTES  # type: ignore[attr-defined]


def test_data_change_makes_the_old_version_stale(node: TaskExecutor, tmp_path: Path) -> None:
    info, table = fetch(node, ["score"])
    (tmp_path / "credit.csv").write_text(ROWS + "ID5000,800,false,5\n")
    with pytest.raises(RuntimeError, match=LOOKUP_STALE):
        lookup(node, info, table, "ID0001")
    info2, table2 = fetch(node, ["score"])
    assert lookup(node, info2, table2, "ID5000") == {"score": 800}


def test_node_refuses_datasets_and_columns_not_opted_in(node: TaskExecutor) -> None:
    with pytest.raises(RuntimeError, match="not open to hidden lookups"):
        run(node, LookupPrepare(dataset="closed", product="p1", columns=["score"]))
    with pytest.raises(RuntimeError, match="'income' .* not open to lookups"):
        run(node, LookupPrepare(dataset="credit", product="p1", columns=["score", "income"]))


def test_node_refuses_an_invalid_point(node: TaskExecutor) -> None:
    info, _ = fetch(node, ["score"])
    for bad in (bytes(32), b"\x01" + bytes(31), b"\xff" * 32):  # identity, small order, non-canonical
        with pytest.raises(RuntimeError, match="prime-order subgroup"):
            run(node, LookupEvaluate(dataset="credit", product="p1", version=info.version, point=bad))  # type: ignore[attr-defined]
    # a valid point is evaluated whatever it is: the node cannot tell a key's point from a random one
    run(node, LookupEvaluate(dataset="credit", product="p1", version=info.version, point=random_point()))  # type: ignore[attr-defined]


def test_a_repeated_key_or_rows_beyond_capacity_change_nothing_the_gateway_sees(
        node: TaskExecutor, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The observable rule: a source's defects no longer fail the build (the gateway and the analyst
    would see the failure); the rows are left out by a fixed rule and only the holder is told."""
    header = ROWS.splitlines()[0] + "\n"
    seen = []
    sources = [ROWS,
               ROWS + "ID0001,999,true,1\n",  # ID0001 twice: both rows left out
               ROWS + "".join(f"ZZ{i:03d},400,true,1\n" for i in range(40)),  # 60 keys for 50 slots
               header + "".join(f"ID{i:04d},{300 + i},false,1\n" for i in range(20)) + "ID0003,301,true,2\n"]
    for text in sources:
        (tmp_path / "credit.csv").write_text(text)
        info, table = fetch(node, ["score"])
        seen.append(({k: v for k, v in info.__dict__.items() if k != "version"}, table.capacity,  # type: ignore[attr-defined]
                     lookup(node, info, table, "ID0006"), lookup(node, info, table, "ID9999")))
        if text is sources[1]:
            assert lookup(node, info, table, "ID0001") is None  # a repeated key reads as absent
        if text is sources[2]:
            assert lookup(node, info, table, "ZZ029") == {"score": 400}   # the first 50 in key order stay
            assert lookup(node, info, table, "ZZ030") is None             # the last 10 are left out
    assert all(s == seen[0] for s in seen[1:]), seen
    messages = [r.getMessage() for r in caplog.records if r.name == "xdp.node.lookup"]
    assert any("1 key repeated (2 rows;" in m for m in messages), messages
    assert any("10 keys beyond the capacity 50" in m for m in messages), messages
    assert not any("ID0001" in m or "ZZ0" in m for m in messages)


def test_a_source_that_cannot_be_read_says_the_same_whatever_the_reason(node: TaskExecutor, tmp_path: Path) -> None:
    (tmp_path / "credit.csv").write_text("citizen_id,defaulted\nID1,true\n")  # the score column is missing
    with pytest.raises(RuntimeError) as missing:
        fetch(node, ["score"])
    (tmp_path / "credit.csv").unlink()
    with pytest.raises(RuntimeError) as gone:
        fetch(node, ["score"])
    assert str(missing.value) == str(gone.value) and "node's log" in str(missing.value)


def test_int_keys_are_canonical_decimals() -> None:
    assert lookup_key_bytes("int", " 007 ") == b"7" == lookup_key_bytes("int", 7)
    assert lookup_key_bytes("int", 7.0) == b"7" and lookup_key_bytes("int", 7.5) is None
    assert lookup_key_bytes("int", "7.5") is None and lookup_key_bytes("int", "x") is None
    assert lookup_key_bytes("text", "  ") is None
