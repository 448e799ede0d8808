"""t-of-n Shamir sharing, 17 lanes over GF(2^21 - 9) (crypto/shamir.py)."""

from __future__ import annotations

import itertools
import random
import secrets

import numpy as np
import pytest

from xdp_compute.crypto import shamir
from xdp_compute.crypto.shamir import LANES, PRIME, Share
from xdp_compute.errors import BadRequest, InvalidSpec


def test_any_t_shares_recover_the_secret() -> None:
    secret = secrets.token_bytes(32)
    shares = shamir.split_secret(secret, 3, 6)
    assert [s.x for s in shares] == [1, 2, 3, 4, 5, 6]
    for subset in itertools.combinations(shares, 3):
        assert shamir.reconstruct_secret(subset, 3, secret_len=32) == secret
    assert shamir.reconstruct_secret(shares, 3) == secret


@pytest.mark.parametrize("secret", [b"", b"\x00", b"\x00\x00\x01", b"\x80", b"a\x80\x00", b"\xff" * 32, bytes(32)])
def test_edge_secrets_roundtrip(secret: bytes) -> None:
    shares = shamir.split_secret(secret, 2, 3)
    assert shamir.reconstruct_secret(shares[1:], 2) == secret


def test_fewer_than_t_shares_are_refused() -> None:
    shares = shamir.split_secret(b"k" * 32, 4, 5)
    with pytest.raises(shamir.InvalidShare):
        shamir.reconstruct_secret(shares[:3], 4)


def _lane_values(secret: bytes) -> list[int]:
    padded = secret + b"\x80" + bytes(2 * LANES - len(secret) - 1)
    return [int.from_bytes(padded[2 * i : 2 * i + 2], "big") for i in range(LANES)]


def test_t_minus_one_shares_fit_every_secret() -> None:
    # Perfect secrecy, lane by lane: for any candidate secret there is, in every lane, a degree
    # t-1 polynomial through the t-1 shares and the candidate's lane at x=0; its value at a
    # fresh x is a share that, with the t-1, rebuilds the candidate.
    t = 3
    shares = shamir.split_secret(b"real secret", t, 5)[: t - 1]
    for candidate in (b"real secret", b"other", b"", bytes(32)):
        xs = (0, *(s.x for s in shares))
        x_new = 5

        def basis(i: int, xs: tuple[int, ...] = xs, x_new: int = x_new) -> int:
            num = den = 1
            for j, xj in enumerate(xs):
                if j != i:
                    num = num * (x_new - xj) % PRIME
                    den = den * (xs[i] - xj) % PRIME
            return num * pow(den, -1, PRIME) % PRIME

        lanes = []
        for lane, s0 in enumerate(_lane_values(candidate)):
            ys = (s0, *(s.values[lane] for s in shares))
            lanes.append(sum(ys[i] * basis(i) for i in range(t)) % PRIME)
        assert shamir.reconstruct_secret([*shares, Share.of(x_new, lanes)], t) == candidate


def test_lanes_and_secrets_get_independent_polynomials() -> None:
    # bytes(32) pads to lanes 0..15 = 0 and lane 16 = 0x8000: equal secret lanes must still get
    # different share values (own random coefficients per lane); two secrets shared together
    # likewise. A correct implementation fails with probability < 2^-200.
    zero = bytes(32)
    a, b = shamir.split_secrets([zero, zero], 2, [1, 2, 3])
    for share in (*a, *b):
        assert len(set(share.values[:16])) > 1
    assert [s.y for s in a] != [s.y for s in b]
    assert shamir.reconstruct_secret(a[1:], 2, secret_len=32) == zero
    assert shamir.reconstruct_secret(b[:2], 2, secret_len=32) == zero


def test_sharing_many_secrets_at_once_matches_one_by_one() -> None:
    values = [secrets.token_bytes(32), b"", b"seed"]
    xs = [3, 9, 27, 81]
    for secret, shares in zip(values, shamir.split_secrets(values, 3, xs), strict=True):
        assert [s.x for s in shares] == xs
        for subset in itertools.combinations(shares, 3):
            assert shamir.reconstruct_secret(subset, 3) == secret


def test_coefficients_are_uniform_below_the_prime(monkeypatch: pytest.MonkeyPatch) -> None:
    # 21-bit draws (higher bits dropped); those at or above p are redrawn (rejection
    # sampling), never folded, so each coefficient is exactly uniform in GF(p).
    def words(*values: int) -> bytes:
        return b"".join(v.to_bytes(4, "little") for v in values)

    draws = [words(2**21 - 1, 0xFFE00004, PRIME), words(PRIME - 1, 2**21 - 5), words(11)]
    monkeypatch.setattr(shamir.os, "urandom", lambda n: draws.pop(0))
    assert shamir._uniform(3).tolist() == [PRIME - 1, 4, 11]
    assert not draws


def test_exact_products_beyond_one_float_block() -> None:
    # More than 2^11 terms: the sum is split into exact float64 blocks, then reduced mod p.
    rng = random.Random(7)
    inner = 2**11 + 5
    a = [[rng.randrange(PRIME) for _ in range(inner)] for _ in range(3)]
    b = [[rng.randrange(PRIME) for _ in range(2)] for _ in range(inner)]
    got = shamir._mulmod(np.array(a, dtype=np.int64), np.array(b, dtype=np.int64))
    want = [[sum(a[r][i] * b[i][c] for i in range(inner)) % PRIME for c in range(2)] for r in range(3)]
    assert got.tolist() == want


def test_sharing_is_randomised() -> None:
    a = shamir.split_secret(b"same", 2, 3)
    b = shamir.split_secret(b"same", 2, 3)
    assert [s.y for s in a] != [s.y for s in b]


def test_explicit_x_coordinates() -> None:
    secret = secrets.token_bytes(32)
    shares = shamir.split_secret(secret, 3, 4, xs=[7, 19, 300, 65535])
    assert [s.x for s in shares] == [7, 19, 300, 65535]
    assert shamir.reconstruct_secret(random.Random(1).sample(shares, 3), 3) == secret


def test_garbage_share_detected_with_known_length() -> None:
    shares = shamir.split_secret(secrets.token_bytes(32), 3, 5)
    bad = Share.of(shares[0].x, [secrets.randbelow(PRIME) for _ in range(LANES)])
    with pytest.raises(shamir.InvalidShare):
        shamir.reconstruct_secret([bad, *shares[1:3]], 3, secret_len=32)


def test_conflicting_duplicates_refused() -> None:
    shares = shamir.split_secret(b"x" * 32, 2, 3)
    with pytest.raises(shamir.InvalidShare):
        shamir.reconstruct_secret([shares[0], Share(shares[0].x, shares[1].y)], 2)
    # An exact duplicate counts once.
    with pytest.raises(shamir.InvalidShare):
        shamir.reconstruct_secret([shares[0], shares[0]], 2)


def test_share_encoding_roundtrip_and_validation() -> None:
    sh = shamir.split_secret(b"abc", 2, 3)[2]
    raw = sh.encode()
    assert len(raw) == shamir.SHARE_BYTES
    assert Share.decode(raw) == sh
    with pytest.raises(shamir.InvalidShare):
        Share.decode(raw[:-1])
    with pytest.raises(shamir.InvalidShare):
        Share.decode(b"\x00\x00" + raw[2:])  # x = 0 would be the secret itself
    with pytest.raises(shamir.InvalidShare):
        Share.decode(raw[:-4] + PRIME.to_bytes(4, "big"))  # a lane equal to p
    with pytest.raises(shamir.InvalidShare):
        Share.of(1, [0] * (LANES - 1))
    assert Share.of(sh.x, sh.values) == sh
    assert issubclass(shamir.InvalidShare, BadRequest)


@pytest.mark.parametrize(
    ("secret", "t", "n", "xs"),
    [
        (b"a" * 33, 2, 3, None),
        (b"a", 0, 3, None),
        (b"a", 4, 3, None),
        (b"a", 2, 3, [1, 1, 2]),
        (b"a", 2, 3, [0, 1, 2]),
        (b"a", 2, 3, [1, 2, 70000]),
    ],
)
def test_split_rejects_bad_parameters(secret: bytes, t: int, n: int, xs: list[int] | None) -> None:
    with pytest.raises(InvalidSpec):
        shamir.split_secret(secret, t, n, xs=xs)


def test_lagrange_coefficients_sum_to_one() -> None:
    # sum_i L_i(0) = 1 for any point set (interpolating the constant polynomial 1).
    for xs in [(1, 2), (3, 9, 27), tuple(range(1, 52))]:
        assert sum(shamir.lagrange_at_zero(xs)) % PRIME == 1


@pytest.mark.parametrize("lane", [0, 7, LANES - 1])
def test_each_lane_is_range_checked_at_the_prime(lane: int) -> None:
    # decode checks all lanes on one integer; every lane must still be held to [0, p).
    for value, ok in ((0, True), (PRIME - 1, True), (PRIME, False), (2**21 - 1, False), (2**21, False),
                      (2**32 - 1, False)):
        lanes = [PRIME - 1] * LANES
        lanes[lane] = value
        raw = (3).to_bytes(2, "big") + b"".join(v.to_bytes(4, "big") for v in lanes)
        if ok:
            assert Share.decode(raw).values == tuple(lanes)
        else:
            with pytest.raises(shamir.InvalidShare, match="not a field element"):
                Share.decode(raw)
