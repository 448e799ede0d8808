"""Paillier encrypted delivery with plaintext packing (Paillier, EUROCRYPT 1999).

Flow: the analyst's SDK owns a key pair and sends the public modulus ``n`` with the job. Each
node packs its vector of noisy integer partials into a few large plaintexts (many fixed-width
slots per plaintext), encrypts them under ``n``; the gateway, which holds no key and no mask,
multiplies the nodes' ciphertexts slot-wise mod n^2 (homomorphic addition); the SDK decrypts
and unpacks the sums.

Scheme facts used (Paillier 1999, §3 "scheme 1"; g = n + 1 as in ``phe``):

* Encryption: c = g^m * r^n mod n^2 with r uniform in Z_n^*. Since (1 + n)^m = 1 + m*n mod n^2
  (binomial theorem), g^m costs one multiplication; the only exponentiation is the obfuscator
  r^n, which does not depend on m and is precomputed off the critical path
  (:class:`ObfuscatorPool`, worker processes, gmpy2).
* Homomorphic addition: E(m1) * E(m2) mod n^2 = E(m1 + m2 mod n).
* Decryption with the CRT (Paillier 1999, §7), in :class:`PaillierPrivate`.

Modules: ``keys`` (key pairs, validation, key files), ``packing`` (:class:`PackingScheme` and
its integrity check), ``obfuscators`` (:class:`ObfuscatorPool`), ``ciphertexts`` (validation,
list formats) and ``vectors`` (:class:`EncryptedVector`: encrypt, add, decrypt). Every
ciphertext from outside is validated (0 < c < n^2, gcd(c, n) = 1) before use, and a result is
bound to its key's fingerprint.
"""

from xdp_compute.crypto.paillier.ciphertexts import (
    ciphertexts_from_bytes,
    ciphertexts_from_json,
    ciphertexts_to_bytes,
    ciphertexts_to_json,
    validate_ciphertext,
    validate_ciphertexts,
)
from xdp_compute.crypto.paillier.keys import (
    DEFAULT_KEY_BITS,
    MAX_KEY_BITS,
    MIN_KEY_BITS,
    PaillierPrivate,
    PaillierPublic,
    generate_keypair,
    load_private_key,
    save_private_key,
    validate_public_key,
)
from xdp_compute.crypto.paillier.obfuscators import ObfuscatorPool
from xdp_compute.crypto.paillier.packing import (
    CHECK_CONSTANT,
    DEFAULT_MAX_PARTIES,
    PackingOverflow,
    PackingScheme,
)
from xdp_compute.crypto.paillier.vectors import (
    EncryptedVector,
    add_encrypted,
    aggregate_encrypted,
    decrypt_aggregate,
    decrypt_vector,
    encrypt_partials,
    encrypt_plaintexts,
    encrypt_vector,
)

__all__ = [
    "CHECK_CONSTANT",
    "DEFAULT_KEY_BITS",
    "DEFAULT_MAX_PARTIES",
    "MAX_KEY_BITS",
    "MIN_KEY_BITS",
    "EncryptedVector",
    "ObfuscatorPool",
    "PackingOverflow",
    "PackingScheme",
    "PaillierPrivate",
    "PaillierPublic",
    "add_encrypted",
    "aggregate_encrypted",
    "ciphertexts_from_bytes",
    "ciphertexts_from_json",
    "ciphertexts_to_bytes",
    "ciphertexts_to_json",
    "decrypt_aggregate",
    "decrypt_vector",
    "encrypt_partials",
    "encrypt_plaintexts",
    "encrypt_vector",
    "generate_keypair",
    "load_private_key",
    "save_private_key",
    "validate_ciphertext",
    "validate_ciphertexts",
    "validate_public_key",
]
