"""Fixed-point encoding into Z_2^64 (crypto/fixedpoint.py)."""

from __future__ import annotations

import numpy as np
import pytest

from xdp_compute.crypto import fixedpoint as fp
from xdp_compute.errors import BadRequest, InvalidSpec


def test_roundtrip_positive_and_negative() -> None:
    x = np.array([0.0, 1.5, -1.5, 3.25, -1000.125, 1e-3])
    enc = fp.encode(x, frac_bits=16)
    assert enc.dtype == np.uint64
    np.testing.assert_allclose(fp.decode(enc, frac_bits=16), x, atol=2**-17)


def test_negative_is_twos_complement() -> None:
    enc = fp.encode([-1.0, -(2.0**-8)], frac_bits=8)
    assert int(enc[0]) == 2**64 - 256
    assert int(enc[1]) == 2**64 - 1


def test_rounds_to_nearest_half_even() -> None:
    enc = fp.encode([0.5, 1.5, 2.5, -0.5, 0.49], frac_bits=0)
    assert enc.view(np.int64).tolist() == [0, 2, 2, 0, 0]


def test_sum_of_encodings_decodes_to_sum() -> None:
    rng = np.random.default_rng(7)
    parts = [rng.uniform(-50, 50, size=100) for _ in range(10)]
    total = fp.sum_mod(fp.encode(p, 20) for p in parts)
    np.testing.assert_allclose(fp.decode(total, 20), np.sum(parts, axis=0), atol=10 * 2**-21)


def test_wraparound_intermediate_still_decodes() -> None:
    # Masks make every intermediate value wrap; only the final total must be in range.
    a = fp.encode([-3.0], 4)
    mask = np.array([2**64 - 5], dtype=np.uint64)
    masked = fp.add_mod(a, mask)
    assert fp.decode(fp.sub_mod(masked, mask), 4)[0] == -3.0


def test_add_sub_neg_wrap_mod_2_64() -> None:
    top = np.array([2**64 - 1], dtype=np.uint64)
    one = np.array([1], dtype=np.uint64)
    assert int(fp.add_mod(top, one)[0]) == 0
    assert int(fp.sub_mod(np.zeros(1, np.uint64), one)[0]) == 2**64 - 1
    assert int(fp.neg_mod(one)[0]) == 2**64 - 1
    assert int(fp.neg_mod(np.zeros(1, np.uint64))[0]) == 0


def test_mod_helpers_reject_wrong_dtype() -> None:
    with pytest.raises(InvalidSpec):
        fp.add_mod(np.zeros(2, np.int64), np.zeros(2, np.uint64))
    with pytest.raises(InvalidSpec):
        fp.sum_mod([])
    with pytest.raises(InvalidSpec):
        fp.sum_mod([np.zeros(2, np.uint64), np.zeros(3, np.uint64)])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_encode_rejects_non_finite(bad: float) -> None:
    with pytest.raises(fp.FixedPointOverflow):
        fp.encode([1.0, bad])


def test_encode_rejects_out_of_range() -> None:
    fp.encode([2.0**38], frac_bits=24)  # 2^62 fits
    with pytest.raises(fp.FixedPointOverflow):
        fp.encode([2.0**39], frac_bits=24)  # 2^63 does not
    fp.encode([-(2.0**39)], frac_bits=24)  # -2^63 is the int64 minimum
    with pytest.raises(fp.FixedPointOverflow):
        fp.encode([-(2.0**40)], frac_bits=24)


def test_overflow_is_a_bad_request() -> None:
    assert issubclass(fp.FixedPointOverflow, BadRequest)


def test_headroom_check_boundary() -> None:
    # 1000 terms of |v| <= 2^20 at 2^32 scale: 2^52 * 1000 < 2^63 passes ...
    fp.headroom_check(2.0**20, 1000, frac_bits=32)
    # ... while 2^11 terms of 2^(63-11) exactly reach 2^63 and must fail.
    with pytest.raises(fp.FixedPointOverflow) as exc:
        fp.headroom_check(2.0**20, 2**11, frac_bits=32)
    assert exc.value.extra["n_terms"] == 2**11
    fp.headroom_check(2.0**20, 2**11 - 1, frac_bits=32)


def test_headroom_guarantees_exact_decoding_at_limit() -> None:
    bits = fp.max_frac_bits(100.0, 50)
    fp.headroom_check(100.0, 50, bits)
    with pytest.raises(fp.FixedPointOverflow):
        fp.headroom_check(100.0, 50, bits + 1)
    worst = fp.sum_mod([fp.encode([100.0], bits)] * 50)
    assert fp.decode(worst, bits)[0] == 5000.0
    worst_neg = fp.sum_mod([fp.encode([-100.0], bits)] * 50)
    assert fp.decode(worst_neg, bits)[0] == -5000.0


@pytest.mark.parametrize(
    ("max_abs", "n", "bits"), [(-1.0, 2, 8), (float("nan"), 2, 8), (1.0, 0, 8), (1.0, 2, 63), (1.0, 2, -1)]
)
def test_headroom_check_rejects_bad_arguments(max_abs: float, n: int, bits: int) -> None:
    with pytest.raises(InvalidSpec):
        fp.headroom_check(max_abs, n, bits)


def test_decode_accepts_int64_and_rejects_floats() -> None:
    assert fp.decode(np.array([-256], dtype=np.int64), 8)[0] == -1.0
    with pytest.raises(InvalidSpec):
        fp.decode(np.array([1.0]), 8)


def test_scalar_and_vector_forms_are_one_encoding() -> None:
    # The query plan's exact scalar path (encode_fixed + to_ring) and the vector path must give
    # the same ring element, ties (half to even) and negatives included; from_ring inverts both.
    rng = np.random.default_rng(11)
    values = [0.5, 1.5, 2.5, -0.5, -2.5, -1.5, 0.03125, -1000.125, *rng.uniform(-1e6, 1e6, 50).tolist()]
    for frac_bits in (0, 4, 16, 24):
        vec = fp.encode(values, frac_bits)
        assert [fp.to_ring(fp.encode_fixed(v, frac_bits)) for v in values] == [int(x) for x in vec]
        assert [fp.from_ring(int(x)) for x in vec] == vec.view(np.int64).tolist()
    with pytest.raises(ValueError):
        fp.encode_fixed(float("nan"), 4)
