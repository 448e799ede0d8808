"""t-of-n Shamir sharing over GF(2^521 - 1) (crypto/shamir.py)."""

from __future__ import annotations

import itertools
import random
import secrets

import pytest

from xdp_compute.crypto import shamir
from xdp_compute.crypto.shamir import PRIME, Share
from xdp_compute.errors import BadRequest, InvalidSpec


def test_any_t_shares_recover_the_secret() -> None:
    secret = secrets.token_bytes(32)
    shares = shamir.split_secret(secret, 3, 6)
    assert [s.x for s in shares] == [1, 2, 3, 4, 5, 6]
    for subset in itertools.combinations(shares, 3):
        assert shamir.reconstruct_secret(subset, 3, secret_len=32) == secret
    assert shamir.reconstruct_secret(shares, 3) == secret


@pytest.mark.parametrize("secret", [b"", b"\x00", b"\x00\x00\x01", b"\xff" * 64, bytes(32)])
def test_edge_secrets_roundtrip(secret: bytes) -> None:
    shares = shamir.split_secret(secret, 2, 3)
    assert shamir.reconstruct_secret(shares[1:], 2) == secret


def test_fewer_than_t_shares_are_refused() -> None:
    shares = shamir.split_secret(b"k" * 32, 4, 5)
    with pytest.raises(shamir.InvalidShare):
        shamir.reconstruct_secret(shares[:3], 4)


def test_t_minus_one_shares_fit_every_secret() -> None:
    # Perfect secrecy: for any candidate secret there is a degree t-1 polynomial through the
    # t-1 shares, so interpolating them with the candidate at x=0 is always consistent.
    t = 3
    shares = shamir.split_secret(b"real secret", t, 5)[: t - 1]
    for candidate in (b"real secret", b"other", b""):
        s0 = int.from_bytes(b"\x01" + candidate, "big")
        xs = (0, *(s.x for s in shares))
        ys = (s0, *(s.y for s in shares))
        # The unique polynomial through these t points evaluated at a fresh x is a valid share.
        x_new = 5

        def basis(i: int, xs: tuple[int, ...] = xs, x_new: int = x_new) -> int:
            num = den = 1
            for j, xj in enumerate(xs):
                if j != i:
                    num = num * (x_new - xj) % PRIME
                    den = den * (xs[i] - xj) % PRIME
            return num * pow(den, -1, PRIME) % PRIME

        y_new = sum(ys[i] * basis(i) for i in range(t)) % PRIME
        assert shamir.reconstruct_secret([*shares, Share(x_new, y_new)], t) == candidate


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
    bad = Share(shares[0].x, secrets.randbelow(PRIME))
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
        Share.decode(raw[:2] + PRIME.to_bytes(66, "big"))
    assert issubclass(shamir.InvalidShare, BadRequest)


@pytest.mark.parametrize(
    ("secret", "t", "n", "xs"),
    [
        (b"a" * 65, 2, 3, None),
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
