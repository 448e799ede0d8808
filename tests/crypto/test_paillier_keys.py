"""Paillier keys: generation, validation of outside keys, private key files, interop with phe."""

from __future__ import annotations

import json
import os
import stat

import gmpy2
import pytest

from xdp_compute.crypto import paillier as P
from xdp_compute.crypto._paillier_worker import obfuscator_batch
from xdp_compute.errors import Conflict, InvalidKey


@pytest.fixture(scope="module")
def keypair() -> tuple[P.PaillierPublic, P.PaillierPrivate]:
    return P.generate_keypair(2048)


def _prime(bits: int, seed: int) -> int:
    state = gmpy2.random_state(seed)
    return int(gmpy2.next_prime(gmpy2.mpz_urandomb(state, bits) | (1 << (bits - 1))))


def test_generate_keypair_refuses_short_keys() -> None:
    with pytest.raises(InvalidKey, match="at least 2048"):
        P.generate_keypair(1024)
    with pytest.raises(InvalidKey):
        P.generate_keypair(2047)


def test_generate_keypair_default_is_3072_bits() -> None:
    pub, priv = P.generate_keypair()
    assert pub.bits == 3072 == P.DEFAULT_KEY_BITS
    assert priv.p * priv.q == pub.n and priv.p < priv.q


def test_keypair_decrypts_and_matches_phe(keypair: tuple[P.PaillierPublic, P.PaillierPrivate]) -> None:
    pub, priv = keypair
    phe_pub, phe_priv = pub.to_phe(), priv.to_phe()
    # Our encryption (g = n+1 trick, own obfuscator) decrypts with phe, and phe's with ours.
    scheme = P.PackingScheme(pub.bits, 8, 4)
    (m,) = scheme.encode([5, -3])
    (c,) = P.encrypt_plaintexts(pub, [m], obfuscator_batch(pub.n, 1))
    assert phe_priv.raw_decrypt(c) == m == priv.raw_decrypt(c)
    c2 = phe_pub.raw_encrypt(123456789)
    assert priv.raw_decrypt(c2) == 123456789


def test_validate_public_key_accepts_a_real_modulus(
    keypair: tuple[P.PaillierPublic, P.PaillierPrivate],
) -> None:
    P.validate_public_key(keypair[0].n)


@pytest.mark.parametrize(
    ("make_n", "message"),
    [
        (lambda: _prime(1024, 1) * _prime(1023, 2), "at least 2048"),
        (lambda: 1 << 9000 | 1, "at most 8192"),
        (lambda: _prime(1024, 3) * _prime(1025, 4) * 2, "even"),
        (lambda: _prime(1025, 5) ** 2, "perfect power"),
        (lambda: 7919 * _prime(2040, 6), "small factor 7919"),
        (lambda: _prime(2048, 7), "prime"),
    ],
    ids=["short", "huge", "even", "square", "small-factor", "prime"],
)
def test_validate_public_key_rejects(make_n, message: str) -> None:  # type: ignore[no-untyped-def]
    n = make_n()
    with pytest.raises(InvalidKey, match=message):
        P.validate_public_key(n)
    with pytest.raises(InvalidKey):
        P.PaillierPublic.from_dict({"n": str(n)})


def test_validate_public_key_rejects_non_int() -> None:
    with pytest.raises(InvalidKey):
        P.validate_public_key("123")  # type: ignore[arg-type]
    with pytest.raises(InvalidKey):
        P.validate_public_key(True)  # type: ignore[arg-type]


def test_public_key_dict_round_trip(keypair: tuple[P.PaillierPublic, P.PaillierPrivate]) -> None:
    pub = keypair[0]
    doc = json.loads(json.dumps(pub.to_dict()))
    assert P.PaillierPublic.from_dict(doc) == pub
    assert P.PaillierPublic.from_dict({"n": hex(pub.n)}).fingerprint == pub.fingerprint
    with pytest.raises(InvalidKey, match="fingerprint"):
        P.PaillierPublic.from_dict({**doc, "fingerprint": "00" * 32})
    with pytest.raises(InvalidKey, match="unknown"):
        P.PaillierPublic.from_dict({**doc, "g": str(pub.n + 1)})
    with pytest.raises(InvalidKey, match="decimal or 0x-hex"):
        P.PaillierPublic.from_dict({"n": "not-a-number"})
    with pytest.raises(InvalidKey, match="too long"):
        P.PaillierPublic.from_dict({"n": "9" * 100_000})


def test_private_key_file_is_0600_and_round_trips(
    tmp_path, keypair: tuple[P.PaillierPublic, P.PaillierPrivate]
) -> None:  # type: ignore[no-untyped-def]
    pub, priv = keypair
    path = tmp_path / "analyst.key"
    P.save_private_key(path, priv)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    loaded = P.load_private_key(path)
    assert loaded.p == priv.p and loaded.q == priv.q and loaded.public == pub
    with pytest.raises(Conflict):
        P.save_private_key(path, priv)
    P.save_private_key(path, priv, overwrite=True)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_private_key_file_readable_by_others_is_refused(
    tmp_path, keypair: tuple[P.PaillierPublic, P.PaillierPrivate]
) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "leaky.key"
    P.save_private_key(path, keypair[1])
    os.chmod(path, 0o640)
    with pytest.raises(InvalidKey, match="readable by group or others"):
        P.load_private_key(path)


def test_tampered_private_key_file_is_refused(
    tmp_path, keypair: tuple[P.PaillierPublic, P.PaillierPrivate]
) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "bad.key"
    P.save_private_key(path, keypair[1])
    doc = json.loads(path.read_text())
    doc["p"] = str(int(doc["p"]) + 2)
    path.write_text(json.dumps(doc))
    with pytest.raises(InvalidKey):
        P.load_private_key(path)
    with pytest.raises(InvalidKey, match="does not exist"):
        P.load_private_key(tmp_path / "missing.key")


def test_private_key_repr_hides_factors(keypair: tuple[P.PaillierPublic, P.PaillierPrivate]) -> None:
    priv = keypair[1]
    text = repr(priv) + str(priv)
    assert str(priv.p) not in text and str(priv.q) not in text


def test_a_modulus_is_checked_once_and_a_bad_one_every_time(
    keypair: tuple[P.PaillierPublic, P.PaillierPrivate], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue #13: parsing the same analyst key again skips the ~7 ms primality test; a modulus that
    failed is refused every time (nothing about it is remembered)."""
    from xdp_compute.crypto.paillier import keys

    calls: list[int] = []
    real = keys.validate_public_key

    def counting(n: int, **kw: object) -> None:
        calls.append(n)
        real(n, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(keys, "validate_public_key", counting)
    keys._accepted_modulus.cache_clear()
    n = keypair[0].n
    for _ in range(3):
        assert P.PaillierPublic.from_dict({"n": str(n)}).n == n
    assert calls == [n]
    prime = _prime(2048, 7)
    for _ in range(2):
        with pytest.raises(InvalidKey, match="prime"):
            P.PaillierPublic.from_dict({"n": str(prime)})
    assert calls == [n, prime, prime]
    with pytest.raises(InvalidKey):
        P.PaillierPublic(True)  # type: ignore[arg-type]  # not an int modulus, memo or not
