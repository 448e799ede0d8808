"""The private-join group (crypto/psi/group.py): hash-to-group, commutative blinding, tags, point checks."""

from __future__ import annotations

import random

import pytest
from nacl import bindings as sodium

from xdp_compute.crypto.psi import (
    GROUP_ORDER,
    TAG_BYTES,
    BlindingScalar,
    InvalidPoint,
    blind,
    check_point,
    hash_to_group,
    random_point,
    tag,
    tags,
)
from xdp_compute.errors import BadRequest

# Points of small order on edwards25519 (libsodium's blocklist, encoded): identity, order 2, 4, 8.
IDENTITY = bytes([1]) + bytes(31)
ORDER_2 = bytes.fromhex("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f")
ORDER_4 = bytes(32)  # y = 0: the points (±sqrt(-1), 0), of order 4
P = 2**255 - 19


def _scalar(rng: random.Random) -> BlindingScalar:
    return BlindingScalar(rng.randrange(1, GROUP_ORDER).to_bytes(32, "little"))


def test_hash_to_group_gives_valid_distinct_points_per_key_and_domain() -> None:
    a = hash_to_group("citizen-id", b"110101199003077777")
    assert check_point(a) == a
    assert hash_to_group("citizen-id", b"110101199003077777") == a  # deterministic
    assert hash_to_group("citizen-id", b"110101199003077778") != a
    assert hash_to_group("phone", b"110101199003077777") != a
    # The domain is length-prefixed: shifting a byte between domain and key changes the point.
    assert hash_to_group("ab", b"c") != hash_to_group("a", b"bc")


def test_hash_to_group_refuses_empty_or_long_domain() -> None:
    with pytest.raises(ValueError, match="join domain"):
        hash_to_group("", b"k")
    with pytest.raises(ValueError, match="join domain"):
        hash_to_group("d" * 256, b"k")


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_double_blinding_commutes_and_matches_exactly_equal_keys(seed: int) -> None:
    rng = random.Random(seed)
    a, b = _scalar(rng), _scalar(rng)
    left = [str(rng.randrange(10**6)).encode() for _ in range(40)]
    right = left[:15] + [str(10**6 + rng.randrange(10**6)).encode() for _ in range(25)]
    rng.shuffle(right)  # keys in a different order on each side
    ha = [hash_to_group("citizen-id", k) for k in left]
    hb = [hash_to_group("citizen-id", k) for k in right]
    # Ion et al. 2020 §3: A sends a·H(x), B raises it to b; B sends b·H(y), A raises it to a.
    ab = blind(blind(ha, a), b)
    ba = blind(blind(hb, b), a)
    assert ab == blind(blind(ha, b), a)  # H(k)^(ab) == H(k)^(ba) for every key
    matches = set(tags(ab)) & set(tags(ba))
    assert len(matches) == len(set(left) & set(right)) == 15
    # A single blinding under one holder's scalar matches nothing.
    assert not set(tags(blind(ha, a))) & set(tags(ba))


def test_distinct_keys_give_distinct_tags_and_other_scalars_other_tags() -> None:
    rng = random.Random(7)
    a, b, c = _scalar(rng), _scalar(rng), _scalar(rng)
    pts = [hash_to_group("phone", f"+86{i:010d}".encode()) for i in range(300)]
    t = tags(blind(blind(pts, a), b))
    assert len(set(t)) == 300 and all(len(x) == TAG_BYTES for x in t)
    # Another job (fresh scalar) gives unlinkable tags for the same keys.
    assert not set(t) & set(tags(blind(blind(pts, a), c)))


def test_blinding_preserves_order_so_a_shuffle_is_the_holders_own() -> None:
    rng = random.Random(11)
    a = _scalar(rng)
    pts = [hash_to_group("d", str(i).encode()) for i in range(50)]
    order = list(range(50))
    rng.shuffle(order)
    assert blind([pts[i] for i in order], a) == [blind(pts, a)[i] for i in order]


@pytest.mark.parametrize("bad", [IDENTITY, ORDER_2, ORDER_4], ids=["identity", "order-2", "order-4"])
def test_small_order_points_from_outside_are_refused(bad: bytes) -> None:
    a = _scalar(random.Random(1))
    with pytest.raises(InvalidPoint, match="prime-order subgroup"):
        check_point(bad)
    with pytest.raises(InvalidPoint):
        blind([hash_to_group("d", b"k"), bad], a)
    with pytest.raises(InvalidPoint):
        tag(bad)


def test_non_canonical_off_curve_mixed_order_and_wrong_length_points_are_refused() -> None:
    good = hash_to_group("d", b"k")
    # y >= p is a non-canonical encoding.
    non_canonical = (P + 1).to_bytes(32, "little")
    # A point with a torsion component: good + a point of order 2 (not in the main subgroup).
    mixed = bytes(sodium.crypto_core_ed25519_add(good, ORDER_2))
    off_curve = None
    for y in range(2, 200):  # some small y is not on the curve
        enc = y.to_bytes(32, "little")
        if not sodium.crypto_core_ed25519_is_valid_point(enc):
            off_curve = enc
            break
    assert off_curve is not None
    for bad in (non_canonical, mixed, off_curve, good[:31], good + b"\x00", b""):
        with pytest.raises(InvalidPoint):
            check_point(bad)
    assert issubclass(InvalidPoint, BadRequest)  # a 4xx, never a 500


def test_scalars_are_secret_nonzero_and_fresh() -> None:
    with pytest.raises(ValueError):
        BlindingScalar(bytes(32))
    with pytest.raises(ValueError):
        BlindingScalar(GROUP_ORDER.to_bytes(32, "little"))
    with pytest.raises(ValueError):
        BlindingScalar(b"\x01" * 31)
    s1, s2 = BlindingScalar(), BlindingScalar()
    p = hash_to_group("d", b"k")
    assert s1.blind_one(p) != s2.blind_one(p)
    assert "secret" in repr(s1) and "_s" not in repr(s1)


def test_random_points_are_valid_and_unrelated_to_keys() -> None:
    pts = {random_point() for _ in range(100)}
    assert len(pts) == 100
    assert all(check_point(p) == p for p in pts)


@pytest.mark.parametrize("seed", range(5))
def test_randomised_intersections_match_plaintext_set_intersection(seed: int) -> None:
    rng = random.Random(1000 + seed)
    universe = [f"id-{rng.randrange(10**9)}".encode() for _ in range(120)]
    left = rng.sample(universe, rng.randrange(0, 80))
    right = rng.sample(universe, rng.randrange(0, 80))
    a, b = _scalar(rng), _scalar(rng)
    t_left = tags(blind(blind([hash_to_group("citizen-id", k) for k in left], a), b))
    t_right = tags(blind(blind([hash_to_group("citizen-id", k) for k in right], b), a))
    by_tag = dict(zip(t_left, left, strict=True))
    assert {by_tag[t] for t in t_right if t in by_tag} == set(left) & set(right)
