"""Paillier encrypted delivery with plaintext packing (Paillier, EUROCRYPT 1999).

Flow: the analyst's SDK owns a key pair and sends the public modulus ``n`` with the job. Each
node masks its vector of noisy integer partials with secure-aggregation masks (so no single
ciphertext decrypts to a node's partial), packs it into a few large plaintexts (many fixed-width
slots per plaintext) and encrypts them under ``n``; the gateway, which holds no key, multiplies
the nodes' ciphertexts slot-wise mod n^2 (homomorphic addition) and adds the encrypted negative
of the masks' total; the SDK decrypts and unpacks the sums (``ring``).

Scheme facts used (Paillier 1999, §3 "scheme 1"; g = n + 1 as in ``phe``):

* Encryption: c = g^m * r^n mod n^2 with r uniform in Z_n^*. Since (1 + n)^m = 1 + m*n mod n^2
  (binomial theorem), g^m costs one multiplication; the only exponentiation is the obfuscator
  r^n, which does not depend on m and is precomputed off the critical path
  (:class:`ObfuscatorPool`, worker processes, gmpy2).
* Homomorphic addition: E(m1) * E(m2) mod n^2 = E(m1 + m2 mod n).
* Decryption with the CRT (Paillier 1999, §7), in :class:`PaillierPrivate`.

Modules: ``keys`` (key pairs, validation, key files), ``packing`` (:class:`PackingScheme` and
its integrity check), ``obfuscators`` (:class:`ObfuscatorPool`), ``ciphertexts`` (validation,
list formats), ``vectors`` (:class:`EncryptedVector`: encrypt, add, decrypt) and ``ring``
(secure-aggregation masked Z_2^64 vectors: what nodes actually send, so that no single node's
partial can be decrypted). Every
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
from xdp_compute.crypto.paillier.ring import (
    RING_BITS,
    check_ring_scheme,
    decrypt_ring_sum,
    encrypt_masked,
    ring_scheme,
    unmask_sealed_sum,
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
    "RING_BITS",
    "EncryptedVector",
    "ObfuscatorPool",
    "PackingOverflow",
    "PackingScheme",
    "PaillierPrivate",
    "PaillierPublic",
    "add_encrypted",
    "aggregate_encrypted",
    "check_ring_scheme",
    "ciphertexts_from_bytes",
    "ciphertexts_from_json",
    "ciphertexts_to_bytes",
    "ciphertexts_to_json",
    "decrypt_aggregate",
    "decrypt_ring_sum",
    "decrypt_vector",
    "encrypt_masked",
    "encrypt_partials",
    "encrypt_plaintexts",
    "encrypt_vector",
    "generate_keypair",
    "load_private_key",
    "ring_scheme",
    "save_private_key",
    "unmask_sealed_sum",
    "validate_ciphertext",
    "validate_ciphertexts",
    "validate_public_key",
]
