"""Keyword PIR primitives: the RFC 9497 OPRF over the join group, and the padded, encrypted table."""

from __future__ import annotations

import os

import pytest

from xdp_compute.crypto.pir import (
    LookupTable,
    OprfKey,
    TableError,
    blind,
    build_table,
    finalize,
    select_records,
)
from xdp_compute.crypto.pir.table import HEADER_BYTES, entry_bytes
from xdp_compute.crypto.psi import InvalidPoint, check_point


def test_blinded_evaluation_equals_the_holders_own_evaluation() -> None:
    k = OprfKey()
    for key in (b"ID0001", b"", "张三".encode()):
        state = blind(key)
        assert finalize(state, k.blind_evaluate(state.blinded)) == k.evaluate(key)


def test_blinded_points_are_fresh_valid_elements_whatever_the_key() -> None:
    a, b = blind(b"same"), blind(b"same")
    assert a.blinded != b.blinded  # a fresh r each time: the holder cannot link two lookups of one key
    assert check_point(a.blinded) == a.blinded and check_point(b.blinded) == b.blinded


def test_another_key_gives_another_output() -> None:
    state = blind(b"x")
    assert finalize(state, OprfKey().blind_evaluate(state.blinded)) != OprfKey().evaluate(b"x")


def test_small_order_and_non_canonical_points_are_refused() -> None:
    k = OprfKey()
    for bad in (bytes(32), b"\x01" + bytes(31), b"\xff" * 32, b"short"):
        with pytest.raises(InvalidPoint):
            k.blind_evaluate(bad)
    with pytest.raises(InvalidPoint):
        finalize(blind(b"x"), bytes(32))


def test_secrets_do_not_show_in_repr() -> None:
    assert "secret" in repr(OprfKey()) and "x" not in repr(blind(b"x")).replace("<secret>", "")


def test_table_finds_present_keys_and_nothing_for_absent_ones() -> None:
    k, version = OprfKey(), os.urandom(16)
    records = [(f"id{i}".encode(), {"score": i, "name": f"n{i}"}) for i in range(30)]
    table = LookupTable.parse(build_table(k, version, records, capacity=64, label_bytes=48))
    for key, want in ((b"id7", {"score": 7, "name": "n7"}), (b"id29", {"score": 29, "name": "n29"}),
                      (b"id30", None), (b"", None)):
        state = blind(key)
        assert table.find(finalize(state, k.blind_evaluate(state.blinded))) == want


def test_table_size_depends_on_capacity_only() -> None:
    k, version = OprfKey(), os.urandom(16)
    few = build_table(k, version, [(b"a", {"x": 1})], capacity=40, label_bytes=32)
    many = build_table(k, version, [(bytes([i]), {"x": 10**6}) for i in range(40)], capacity=40, label_bytes=32)
    assert len(few) == len(many) == HEADER_BYTES + 40 * entry_bytes(32)


def test_an_evaluation_of_another_version_decrypts_nothing() -> None:
    k = OprfKey()
    t1 = LookupTable.parse(build_table(k, os.urandom(16), [(b"a", {"x": 1})], capacity=4, label_bytes=32))
    t2 = LookupTable.parse(build_table(OprfKey(), os.urandom(16), [(b"a", {"x": 1})], capacity=4, label_bytes=32))
    state = blind(b"a")
    out = finalize(state, k.blind_evaluate(state.blinded))
    assert t1.find(out) == {"x": 1} and t2.find(out) is None


def _found(table: LookupTable, k: OprfKey, key: bytes) -> dict | None:
    state = blind(key)
    return table.find(finalize(state, k.blind_evaluate(state.blinded)))


def test_build_leaves_out_repeated_keys_keys_beyond_capacity_and_long_labels_never_fails() -> None:
    """Observable rule: the source's defects never stop a build (a failure the analyst would see)."""
    k, version = OprfKey(), os.urandom(16)
    records = [(b"b", {"x": 1}), (b"a", {"x": 2}), (b"d", {"x": 3}), (b"a", {"x": 4}), (b"c", {"t": "x" * 40}),
               (b"e", {"x": 5}), (b"a", {"x": 6})]
    chosen = select_records(records, capacity=3, label_bytes=32)
    # every row of the repeated key "a" is left out; of b, c, d, e the first three in byte order stay;
    # c's label does not fit, so its slot is a dummy.
    assert [key for key, _ in chosen.entries] == [b"b", b"d"]
    assert chosen.counts() == {"rows": 7, "entries": 2, "repeated_keys": 1, "repeated_rows": 3,
                               "beyond_capacity": 1, "labels_too_long": 1}
    assert chosen.left_out == 5
    table = LookupTable.parse(build_table(k, version, records, capacity=3, label_bytes=32))
    assert table.capacity == 3
    assert [_found(table, k, key) for key in (b"a", b"b", b"c", b"d", b"e")] == [None, {"x": 1}, None, {"x": 3}, None]


def test_which_keys_stay_does_not_depend_on_the_source_order() -> None:
    rows = [(f"k{i:03d}".encode(), {"x": i}) for i in range(50)] + [(b"k007", {"x": -1})]
    a = select_records(rows, capacity=20, label_bytes=32)
    b = select_records(list(reversed(rows)), capacity=20, label_bytes=32)
    assert a.entries == b.entries and a.counts() == b.counts()
    assert [key for key, _ in a.entries] == sorted(f"k{i:03d}".encode() for i in range(21) if i != 7)


def test_a_table_with_defects_has_the_size_and_steps_of_one_without() -> None:
    k, version = OprfKey(), os.urandom(16)
    clean = build_table(k, version, [(bytes([i]), {"x": i}) for i in range(10)], capacity=10, label_bytes=32)
    broken = build_table(k, version, [(bytes([i % 5]), {"x": i}) for i in range(30)], capacity=10, label_bytes=32)
    assert len(clean) == len(broken) == HEADER_BYTES + 10 * entry_bytes(32)
    with pytest.raises(ValueError, match="capacity"):  # only the declared shape can be refused
        build_table(k, version, [], capacity=0, label_bytes=32)


def test_parse_refuses_what_is_not_a_table() -> None:
    good = build_table(OprfKey(), os.urandom(16), [], capacity=3, label_bytes=32)
    for bad in (b"", b"XDPLT0" + good[6:], good[:-1], good + b"\0"):
        with pytest.raises(TableError):
            LookupTable.parse(bad)


def test_evaluation_proofs_bind_the_answer_to_the_tables_key() -> None:
    from xdp_compute.crypto.pir.oprf import verify_proof

    k, other = OprfKey(), OprfKey()
    table = LookupTable.parse(build_table(k, os.urandom(16), [(b"a", {"x": 1})], capacity=2, label_bytes=32))
    assert table.public_key == k.public_key()
    state = blind(b"a")
    z = k.blind_evaluate(state.blinded)
    assert verify_proof(table.public_key, state.blinded, z, k.prove(state.blinded, z))
    # A holder answering with another key, or a proof for another point, is caught.
    wrong = other.blind_evaluate(state.blinded)
    assert not verify_proof(table.public_key, state.blinded, wrong, other.prove(state.blinded, wrong))
    assert not verify_proof(table.public_key, state.blinded, wrong, k.prove(state.blinded, z))
    proof = bytearray(k.prove(state.blinded, z))
    proof[40] ^= 1
    assert not verify_proof(table.public_key, state.blinded, z, bytes(proof))
    assert not verify_proof(table.public_key, state.blinded, z, b"\xff" * 64)
