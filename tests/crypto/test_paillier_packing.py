"""Paillier plaintext packing: layout, round trips at the extremes, n-way sums, overflow."""

from __future__ import annotations

import random

import numpy as np
import pytest

from xdp_compute.crypto import paillier as P
from xdp_compute.errors import InvalidCiphertext, InvalidSpec, WrongKey


def test_layout_for_3072_bit_keys() -> None:
    s = P.PackingScheme(3072, 62, 128)
    assert s.headroom_bits == 7
    assert s.slot_bits == 62 + 1 + 7
    assert s.slots_per_plaintext == (3072 - 2) // 70 == 43
    assert s.check_slots == 1 and s.values_per_plaintext == 42
    assert s.plaintexts_needed(10_000) == 239
    s32 = P.PackingScheme(3072, 32)
    assert (s32.slot_bits, s32.check_slots, s32.values_per_plaintext) == (40, 2, 74)
    assert P.PackingScheme(2048, 16, 1).headroom_bits == 0


def test_scheme_dict_round_trip_and_bad_parameters() -> None:
    s = P.PackingScheme(2048, 40, 100)
    assert P.PackingScheme.from_dict(s.to_dict()) == s
    with pytest.raises(InvalidSpec):
        P.PackingScheme(2048, 0)
    with pytest.raises(InvalidSpec):
        P.PackingScheme(2048, 40, 0)
    with pytest.raises(InvalidSpec, match="cannot hold"):
        P.PackingScheme(2048, 2040)
    with pytest.raises(InvalidSpec):
        P.PackingScheme.from_dict({"n_bits": 2048})


@pytest.mark.parametrize("value_bits", [1, 7, 32, 62, 200])
def test_round_trip_extremes_negatives_zeros(value_bits: int) -> None:
    s = P.PackingScheme(2048, value_bits, 128)
    top = (1 << value_bits) - 1
    values = [top, -top, 0, 1, -1, top, 0, -top] * 20 + [top - 1, 1 - top]
    plaintexts = s.encode(values)
    assert len(plaintexts) == s.plaintexts_needed(len(values))
    assert all(0 < m < 1 << (2048 - 2) for m in plaintexts)
    assert s.decode(plaintexts, 1, len(values)) == values


def test_accepts_numpy_integers_rejects_floats() -> None:
    s = P.PackingScheme(2048, 20)
    arr = np.array([3, -4, 5], dtype=np.int64)
    assert s.decode(s.encode(arr), 1, 3) == [3, -4, 5]
    with pytest.raises(TypeError):
        s.encode([1.5])
    with pytest.raises(InvalidSpec):
        s.encode([])


def test_overflow_of_value_bits_is_a_clear_error_at_encode_time() -> None:
    s = P.PackingScheme(2048, 16)
    with pytest.raises(P.PackingOverflow, match="index 2") as info:
        s.encode([1, -1, 1 << 16, 0])
    assert info.value.status == 400
    assert str(1 << 16) not in info.value.detail  # a private partial is not echoed
    with pytest.raises(P.PackingOverflow, match="index 0"):
        s.encode([-(1 << 16)])
    s.encode([(1 << 16) - 1, -((1 << 16) - 1)])  # the extremes themselves fit


def _add_plaintexts(per_party: list[list[int]]) -> list[int]:
    # Paillier addition is addition of plaintexts mod n; packing guarantees no wrap, so plain
    # integer addition models the decrypted sum exactly.
    return [sum(col) for col in zip(*per_party, strict=True)]


def test_100_way_sums_of_extremes_do_not_overflow() -> None:
    s = P.PackingScheme(2048, 62, 100)
    top = (1 << 62) - 1
    length = 100
    rng = random.Random(7)
    parties = [
        [rng.choice([top, -top, 0, rng.randint(-top, top)]) for _ in range(length)] for _ in range(100)
    ]
    parties[0] = [top] * length
    for row in parties[1:50]:
        row[:10] = [top] * 10  # columns 0..9: 50 x max ...
    for row in parties[50:]:
        row[:10] = [top] * 10  # ... and 100 x max: the worst case for carries
        row[10:20] = [-top] * 10
    summed = _add_plaintexts([s.encode(row) for row in parties])
    assert s.decode(summed, 100, length) == [sum(col) for col in zip(*parties, strict=True)]
    assert all(m < 1 << (2048 - 2) for m in summed)


def test_all_negative_extremes_sum() -> None:
    s = P.PackingScheme(2048, 30, 128)
    top = (1 << 30) - 1
    parties = [[-top] * 80 for _ in range(128)]
    summed = _add_plaintexts([s.encode(row) for row in parties])
    assert s.decode(summed, 128, 80) == [-128 * top] * 80


def test_decode_detects_count_mismatch_and_garbage() -> None:
    s = P.PackingScheme(2048, 20, 8)
    three = _add_plaintexts([s.encode([1, 2, 3]) for _ in range(3)])
    assert s.decode(three, 3, 3) == [3, 6, 9]
    with pytest.raises(InvalidCiphertext, match="holds 3 contributions"):
        s.decode(three, 2, 3)
    rng = random.Random(1)
    garbage = [rng.getrandbits(2040) for _ in three]
    with pytest.raises(WrongKey):
        s.decode(garbage, 3, 3)
    with pytest.raises(InvalidCiphertext):
        s.decode(three, 3, 10_000)  # wrong number of ciphertexts for the length
    with pytest.raises(InvalidSpec):
        s.decode(three, 9, 3)  # above max_parties
