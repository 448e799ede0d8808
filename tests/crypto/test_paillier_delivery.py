"""Paillier encrypted delivery end to end: nodes encrypt, gateway adds, SDK decrypts; borders."""

from __future__ import annotations

import json
import random

import gmpy2
import pytest

from xdp_compute.crypto import paillier as P
from xdp_compute.crypto._paillier_worker import obfuscator_batch
from xdp_compute.errors import InvalidCiphertext, PayloadTooLarge, WrongKey

KeyPair = tuple[P.PaillierPublic, P.PaillierPrivate]


@pytest.fixture(scope="module")
def keypair() -> KeyPair:
    return P.generate_keypair(2048)


@pytest.fixture(scope="module")
def other_keypair() -> KeyPair:
    return P.generate_keypair(2048)


def _vector(rng: random.Random, length: int, bits: int) -> list[int]:
    top = (1 << bits) - 1
    return [rng.choice([top, -top, 0, rng.randint(-top, top)]) for _ in range(length)]


def test_three_nodes_sum_through_the_envelope(keypair: KeyPair) -> None:
    pub, priv = keypair
    rng = random.Random(3)
    scheme = P.PackingScheme(pub.bits, 62, 128)
    nodes = [_vector(rng, 100, 62) for _ in range(3)]
    with P.ObfuscatorPool(pub, target=4, workers=0) as pool:
        sent = [P.encrypt_partials(pub, values, scheme, pool=pool).to_bytes(pub) for values in nodes]
    # Gateway: parse with limits, add, forward. It never touches the private key.
    received = [P.EncryptedVector.from_bytes(b, pub, max_bytes=1 << 20) for b in sent]
    total = P.aggregate_encrypted(pub, received)
    assert total.n_contributions == 3
    wire = json.loads(json.dumps(total.to_dict()))
    result = P.decrypt_aggregate(priv, P.EncryptedVector.from_dict(wire, pub, max_bytes=1 << 20))
    assert result == [sum(col) for col in zip(*nodes, strict=True)]


def test_ciphertexts_are_randomised(keypair: KeyPair) -> None:
    pub, _ = keypair
    scheme = P.PackingScheme(pub.bits, 10)
    assert P.encrypt_vector(pub, [1, 2], scheme) != P.encrypt_vector(pub, [1, 2], scheme)


def test_100_encrypted_contributions(keypair: KeyPair) -> None:
    pub, priv = keypair
    scheme = P.PackingScheme(pub.bits, 62, 100)
    top = (1 << 62) - 1
    parties = [[top, -top, top, 0, party] for party in range(100)]
    cts = [P.encrypt_vector(pub, row, scheme) for row in parties]
    summed = P.add_encrypted(pub, cts)
    assert P.decrypt_vector(priv, summed, scheme, 100, 5) == [100 * top, -100 * top, 100 * top, 0, 4950]


def test_aggregate_refuses_more_than_max_parties(keypair: KeyPair) -> None:
    pub, _ = keypair
    scheme = P.PackingScheme(pub.bits, 16, 2)
    vec = P.encrypt_partials(pub, [1], scheme)
    assert P.aggregate_encrypted(pub, [vec, vec]).n_contributions == 2
    with pytest.raises(P.PackingOverflow, match="max_parties=2"):
        P.aggregate_encrypted(pub, [vec, vec, vec])


def test_wrong_private_key_is_detected_by_fingerprint(keypair: KeyPair, other_keypair: KeyPair) -> None:
    pub, _ = keypair
    scheme = P.PackingScheme(pub.bits, 32)
    vec = P.encrypt_partials(pub, [1, -2, 3], scheme)
    with pytest.raises(WrongKey, match="fingerprint"):
        P.decrypt_aggregate(other_keypair[1], vec)


def test_wrong_private_key_is_detected_from_the_plaintext(keypair: KeyPair, other_keypair: KeyPair) -> None:
    # Without the fingerprint (e.g. a relabelled result), the packing check still catches it.
    pub, _ = keypair
    other_pub, other_priv = other_keypair
    scheme = P.PackingScheme(pub.bits, 32)
    cts = P.encrypt_vector(pub, list(range(-50, 50)), scheme)
    reduced = [c % other_pub.n_square for c in cts]  # make them in range for the other key
    assert all(gmpy2.gcd(c, other_pub.n) == 1 for c in reduced)
    with pytest.raises(WrongKey, match="integrity"):
        P.decrypt_vector(other_priv, reduced, scheme, 1, 100)


def test_claimed_contribution_count_must_match(keypair: KeyPair) -> None:
    pub, priv = keypair
    scheme = P.PackingScheme(pub.bits, 32)
    vec = P.encrypt_partials(pub, [5, 6], scheme)
    summed = P.aggregate_encrypted(pub, [vec, vec])
    with pytest.raises(InvalidCiphertext, match="holds 2 contributions"):
        P.decrypt_vector(priv, summed.ciphertexts, scheme, 3, 2)


@pytest.mark.parametrize(
    ("make_c", "check"),
    [
        (lambda pub, priv: 0, "0 < c"),
        (lambda pub, priv: -5, "0 < c"),
        (lambda pub, priv: pub.n_square, "c < n\\^2"),
        (lambda pub, priv: pub.n_square + 12345, "c < n\\^2"),
        (lambda pub, priv: priv.p * 977, "gcd"),
        (lambda pub, priv: pub.n, "gcd"),
    ],
    ids=["zero", "negative", "n2", "above-n2", "shares-p", "n"],
)
def test_validate_ciphertext_rejects(keypair: KeyPair, make_c, check: str) -> None:  # type: ignore[no-untyped-def]
    pub, priv = keypair
    c = make_c(pub, priv)
    with pytest.raises(InvalidCiphertext, match=check):
        P.validate_ciphertext(c, pub.n)
    good = P.encrypt_vector(pub, [1], P.PackingScheme(pub.bits, 8))
    with pytest.raises(InvalidCiphertext, match="ciphertext 1"):
        P.add_encrypted(pub, [good + [good[0]], good + [c]])


def test_validate_ciphertext_accepts_valid_and_rejects_non_ints(keypair: KeyPair) -> None:
    pub, _ = keypair
    (c,) = P.encrypt_vector(pub, [1], P.PackingScheme(pub.bits, 8))
    P.validate_ciphertext(c, pub.n)
    with pytest.raises(InvalidCiphertext):
        P.validate_ciphertext(True, pub.n)  # type: ignore[arg-type]
    with pytest.raises(InvalidCiphertext):
        P.validate_ciphertext(str(c), pub.n)  # type: ignore[arg-type]


def test_ciphertext_bytes_round_trip_and_malformed_input(keypair: KeyPair, other_keypair: KeyPair) -> None:
    pub, _ = keypair
    cts = P.encrypt_vector(pub, list(range(60)), P.PackingScheme(pub.bits, 16))
    data = P.ciphertexts_to_bytes(cts, pub)
    assert P.ciphertexts_from_bytes(data, pub, max_bytes=len(data)) == cts
    with pytest.raises(PayloadTooLarge) as info:
        P.ciphertexts_from_bytes(data, pub, max_bytes=len(data) - 1)
    assert info.value.status == 413
    for cut in (3, 9, len(data) - 1, len(data) - 256):
        with pytest.raises(InvalidCiphertext, match="truncated"):
            P.ciphertexts_from_bytes(data[:cut], pub, max_bytes=1 << 20)
    with pytest.raises(InvalidCiphertext, match="trailing"):
        P.ciphertexts_from_bytes(data + b"\x00", pub, max_bytes=1 << 20)
    with pytest.raises(InvalidCiphertext, match="magic"):
        P.ciphertexts_from_bytes(b"JUNK" + data[4:], pub, max_bytes=1 << 20)
    zeroed = data[: len(data) - pub.ciphertext_bytes] + bytes(pub.ciphertext_bytes)
    with pytest.raises(InvalidCiphertext, match="0 < c"):
        P.ciphertexts_from_bytes(zeroed, pub, max_bytes=1 << 20)
    # A different key of the same size: values may exceed its n^2 or fail later, never silently.
    with pytest.raises(InvalidCiphertext):
        P.EncryptedVector.from_bytes(
            P.encrypt_partials(pub, [1], P.PackingScheme(pub.bits, 8)).to_bytes(pub),
            other_keypair[0],
            max_bytes=1 << 20,
        )


def test_encrypted_vector_bytes_truncated_or_oversized(keypair: KeyPair) -> None:
    pub, _ = keypair
    data = P.encrypt_partials(pub, list(range(10)), P.PackingScheme(pub.bits, 16)).to_bytes(pub)
    for cut in (2, 7, 20, len(data) - 1):
        with pytest.raises(InvalidCiphertext):
            P.EncryptedVector.from_bytes(data[:cut], pub, max_bytes=1 << 20)
    with pytest.raises(PayloadTooLarge):
        P.EncryptedVector.from_bytes(data, pub, max_bytes=100)


def test_ciphertext_json_limits(keypair: KeyPair) -> None:
    pub, _ = keypair
    cts = P.encrypt_vector(pub, [1, 2, 3], P.PackingScheme(pub.bits, 8))
    items = P.ciphertexts_to_json(cts)
    assert P.ciphertexts_from_json(items, pub, max_bytes=1 << 20) == cts
    with pytest.raises(PayloadTooLarge):
        P.ciphertexts_from_json(items * 1000, pub, max_bytes=1 << 16)
    with pytest.raises(InvalidCiphertext, match="not valid hex"):
        P.ciphertexts_from_json(["zz"], pub, max_bytes=1 << 20)
    with pytest.raises(InvalidCiphertext, match="hex string"):
        P.ciphertexts_from_json(["f" * 10_000], pub, max_bytes=1 << 20)
    with pytest.raises(InvalidCiphertext):
        P.ciphertexts_from_json("deadbeef", pub, max_bytes=1 << 20)


def test_obfuscators_are_fresh_encryptions_of_zero(keypair: KeyPair) -> None:
    pub, priv = keypair
    batch = obfuscator_batch(pub.n, 3)
    assert len(set(batch)) == 3
    assert all(priv.raw_decrypt(r) == 0 for r in batch)  # r^n = E(0)


def test_pool_in_worker_process_hands_out_each_obfuscator_once(keypair: KeyPair) -> None:
    pub, priv = keypair
    with P.ObfuscatorPool(pub, target=6, workers=1, chunk=3) as pool:
        pool.fill(wait_done=True)
        assert pool.available >= 6
        first = pool.take(4)
        second = pool.take(9)  # more than the stock: the shortfall is computed on demand
    taken = first + second
    assert len(taken) == len(set(taken)) == 13
    assert all(priv.raw_decrypt(r) == 0 for r in taken[:3])
    with pytest.raises(RuntimeError):
        pool.take(1)


def test_pool_is_safe_under_concurrent_takes(keypair: KeyPair) -> None:
    from concurrent.futures import ThreadPoolExecutor

    pub, _ = keypair
    with P.ObfuscatorPool(pub, target=2, workers=1, chunk=2) as pool, ThreadPoolExecutor(4) as threads:
        batches = list(threads.map(lambda _: pool.take(3), range(4)))
    flat = [r for batch in batches for r in batch]
    assert all(len(batch) == 3 for batch in batches)
    assert len(set(flat)) == 12
