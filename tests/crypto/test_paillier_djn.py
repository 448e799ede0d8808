"""DJN obfuscators (h^α with a secret per-process base h = r0^n and α of ⌈|n|/2⌉ bits).

Checked with the secret key: every obfuscator is an n-th residue reduced mod n^2 (it encrypts
0), ciphertexts made with them decrypt with phe and with our CRT path, the packed HE query path
round-trips, obfuscators are distinct, nothing secret shows through pickling or repr, and each
key gets its own table in a process.
"""

from __future__ import annotations

import pickle
import random

import gmpy2
import pytest

from xdp_compute.crypto import _paillier_worker as W
from xdp_compute.crypto import paillier as P

KeyPair = tuple[P.PaillierPublic, P.PaillierPrivate]


@pytest.fixture(scope="module")
def keypair() -> KeyPair:
    return P.generate_keypair(2048)


def _is_nth_residue_mod_n2(priv: P.PaillierPrivate, obf: int) -> bool:
    # (1 + 0·n)·obf is an encryption of 0 exactly when obf is an n-th residue: decrypting gives 0.
    return priv.raw_decrypt(obf) == 0 and priv.to_phe().raw_decrypt(obf) == 0


def test_djn_obfuscators_are_reduced_distinct_nth_residues(keypair: KeyPair) -> None:
    pub, priv = keypair
    obfs = W.obfuscator_batch(pub.n, 40, "djn")
    assert len(obfs) == 40 and len(set(obfs)) == 40
    for obf in obfs:
        assert 1 < obf < pub.n_square
        assert gmpy2.gcd(obf, pub.n) == 1
        assert _is_nth_residue_mod_n2(priv, obf)
    # A value that is not an n-th residue decrypts to something else (the check can fail).
    assert priv.raw_decrypt((1 + 5 * pub.n) * obfs[0] % pub.n_square) == 5


def test_djn_exponent_is_half_the_modulus_and_table_is_bounded(keypair: KeyPair) -> None:
    pub, _ = keypair
    W.obfuscator_batch(pub.n, 1, "djn")
    table = W._table(pub.n, create=False)
    assert table is not None
    assert table.alpha_bits == 1024 and table.window == 8
    pub3, _ = P.generate_keypair(3072)
    W.obfuscator_batch(pub3.n, 1, "djn")
    big = W._table(pub3.n, create=False)
    assert big is not None and big.alpha_bits == 1536
    entry = (2 * pub3.bits + 7) // 8
    assert -(-big.alpha_bits // big.window) * (1 << big.window) * entry <= W.TABLE_BUDGET_BYTES


def test_ciphertexts_decrypt_with_phe_and_ours(keypair: KeyPair) -> None:
    pub, priv = keypair
    rng = random.Random(16)
    plaintexts = [rng.randrange(pub.n) for _ in range(12)]
    cts = P.encrypt_plaintexts(pub, plaintexts, W.obfuscator_batch(pub.n, 12, "djn"))
    phe_priv = priv.to_phe()
    assert [priv.raw_decrypt(c) for c in cts] == plaintexts
    assert [phe_priv.raw_decrypt(c) for c in cts] == plaintexts
    # Same plaintext twice: different ciphertexts.
    a, b = P.encrypt_plaintexts(pub, [7, 7], W.obfuscator_batch(pub.n, 2, "djn"))
    assert a != b


def test_he_query_path_round_trips_with_a_djn_pool(keypair: KeyPair) -> None:
    pub, priv = keypair
    rng = random.Random(13)
    scheme = P.PackingScheme(pub.bits, 40, 8)
    nodes = [[rng.randint(-(2**39), 2**39) for _ in range(50)] for _ in range(3)]
    with P.ObfuscatorPool(pub, target=4, workers=0) as pool:
        assert pool.mode == "djn"
        sent = [P.encrypt_partials(pub, values, scheme, pool=pool) for values in nodes]
    total = P.aggregate_encrypted(pub, sent)
    assert P.decrypt_aggregate(priv, total) == [sum(col) for col in zip(*nodes, strict=True)]


def test_pool_with_a_worker_process_hands_out_each_djn_obfuscator_once(keypair: KeyPair) -> None:
    pub, priv = keypair
    with P.ObfuscatorPool(pub, target=6, workers=1, chunk=3) as pool:
        taken = pool.take(10) + pool.take(5)
    assert len(set(taken)) == 15
    assert all(_is_nth_residue_mod_n2(priv, obf) for obf in taken[:5])


def test_full_mode_is_still_available_and_auto_prefers_the_table(keypair: KeyPair) -> None:
    pub, priv = keypair
    with P.ObfuscatorPool(pub, target=0, workers=0, mode="full") as pool:
        full = pool.take(3)
    assert all(_is_nth_residue_mod_n2(priv, obf) for obf in full)
    with pytest.raises(ValueError, match="unknown obfuscator mode"):
        P.ObfuscatorPool(pub, workers=0, mode="fast")
    with pytest.raises(ValueError, match="unknown obfuscator mode"):
        W.obfuscator_batch(pub.n, 1, "fast")
    assert W.obfuscator_batch(pub.n, 0, "djn") == []


def test_nothing_secret_in_pickle_or_repr(keypair: KeyPair) -> None:
    pub, _ = keypair
    with P.ObfuscatorPool(pub, target=2, workers=0) as pool:
        stock = pool.take(0) or list(pool._ready)
        text = repr(pool)
        assert stock and all(str(obf) not in text for obf in stock)
        assert "mode=djn" in text
        with pytest.raises(TypeError, match="never pickled"):
            pickle.dumps(pool)
    table = W._table(pub.n, create=True)
    assert table is not None
    with pytest.raises(TypeError, match="never pickled"):
        pickle.dumps(table)
    assert str(pub.n) not in repr(table) and "rows" in repr(table)


def test_a_second_key_gets_its_own_table_and_old_ones_are_evicted() -> None:
    keys = [P.generate_keypair(2048) for _ in range(W.MAX_TABLES + 1)]
    for pub, priv in keys:
        (obf,) = W.obfuscator_batch(pub.n, 1, "djn")
        assert _is_nth_residue_mod_n2(priv, obf)
        assert W._table(pub.n, create=False) is not None
    assert W.table_count() <= W.MAX_TABLES
    assert W._table(keys[0][0].n, create=False) is None  # least recently used: evicted
    a, b = (W._table(pub.n, create=False) for pub, _ in keys[1:3])
    assert a is not None and b is not None and a is not b
    # An obfuscator made for one key is not an n-th residue for another key (tables are per key).
    (obf_b,) = W.obfuscator_batch(keys[2][0].n, 1, "djn")
    other_pub, other_priv = keys[1]
    assert other_priv.raw_decrypt(obf_b % other_pub.n_square) != 0
