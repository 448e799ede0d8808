"""Secure-aggregation masked Z_2^64 vectors under Paillier: encrypted delivery without single partials.

A node's noisy partial x_u is never encrypted alone. It is first masked as in secure aggregation
(Bonawitz et al. 2017, Round 2): y_u = x_u + PRG(b_u) + sum_v Delta_uv PRG(s_uv) mod 2^64, each
word uniform on its own; the node encrypts y_u (:func:`encrypt_masked`, one 64-bit ring value
per packed slot). The gateway multiplies the ciphertexts of the survivors U3 (the integer sum
of their y_u, no carry between slots) and, once Round 4 has given it the masks' total M, adds
one more contribution, E((-M + r) mod 2^64) (:func:`unmask_sealed_sum`), where r is 0 in every
slot it releases and uniform in every slot it blanks. The analyst decrypts and reduces mod 2^64
(:func:`decrypt_ring_sum`): sum x_u in released slots, a uniform value in blanked ones.

Why the correction is reduced mod 2^64 before it is encrypted: the decrypted integer of a slot is
Y + ((T - Y) mod 2^64), where Y = sum y_u (as integers) and T is the slot's ring value (the
total, or total + r when blanked). The y_u are independent and uniform whatever the x_u, so Y
says nothing about any partial, and the slot's integer is a function of Y and T alone: nothing
about a single partial, nor about a blanked total, hides in the carries.

Why the correction needs no obfuscator of its own (issue #13: it was one 3072-bit r^n, ~28 ms of
the gateway's time per query): it is g^c = 1 + c*n mod n^2 with c the gateway's own value, and
the product it joins is already randomised by every survivor's fresh obfuscator. To anyone
without the private key the result is as random as the survivors' product was (which the
gateway computed itself); the key holder can read the product of the obfuscators off it, which
the nodes drew independently of any data, and a random factor from the gateway would add no
secret to hide. Blanked slots are hidden by r in the plaintext, not by the ciphertext's randomness.

Slot width: 64 value bits + 1 sign bit of the packing offset + ceil(log2(max_parties)) headroom,
which holds |U3| + 1 contributions of up to 2^64 - 1 each without carrying into the next slot.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

import numpy as np

from xdp_compute.crypto.fixedpoint import U64Vector
from xdp_compute.crypto.paillier.keys import PaillierPrivate, PaillierPublic
from xdp_compute.crypto.paillier.obfuscators import ObfuscatorPool
from xdp_compute.crypto.paillier.packing import DEFAULT_MAX_PARTIES, PackingOverflow, PackingScheme
from xdp_compute.crypto.paillier.vectors import (
    EncryptedVector,
    aggregate_encrypted,
    decrypt_aggregate,
    encrypt_partials,
    encrypt_plaintexts,
)
from xdp_compute.errors import InvalidSpec

#: Bits of one ring value: masks and sums live in Z_2^64 (``xdp_compute.crypto.fixedpoint``).
RING_BITS = 64
_RING = 1 << RING_BITS


def ring_scheme(n_bits: int, max_parties: int = DEFAULT_MAX_PARTIES) -> PackingScheme:
    """The packing of masked ring vectors for an ``n_bits`` key: 64-bit slots, ``max_parties`` headroom."""
    return PackingScheme(n_bits, RING_BITS, max_parties)


def check_ring_scheme(public: PaillierPublic, scheme: PackingScheme, participants: int) -> None:
    """Refuse (``InvalidSpec``) a packing that cannot hold ``participants`` masked inputs plus the
    gateway's one correction: slots narrower than a ring value, or too little headroom."""
    if scheme.n_bits != public.bits:
        raise InvalidSpec(f"packing scheme is for {scheme.n_bits}-bit keys; this key has {public.bits} bits")
    if scheme.value_bits < RING_BITS:
        raise InvalidSpec(f"masked ring values need value_bits >= {RING_BITS}, got {scheme.value_bits}")
    if scheme.max_parties < participants + 1:
        raise InvalidSpec(f"the packing holds {scheme.max_parties} contributions; {participants} masked "
                          "inputs plus the unmasking correction need one more")


def encrypt_masked(public: PaillierPublic, masked: U64Vector, scheme: PackingScheme, *,
                   pool: ObfuscatorPool | None = None) -> EncryptedVector:
    """Node side: encrypt one masked input y_u (uint64 words, each in [0, 2^64)) as one contribution."""
    vec = np.asarray(masked)
    if vec.dtype != np.uint64 or vec.ndim != 1:
        raise InvalidSpec("a masked input is a 1-D uint64 vector")
    if scheme.value_bits < RING_BITS:
        raise InvalidSpec(f"masked ring values need value_bits >= {RING_BITS}, got {scheme.value_bits}")
    return encrypt_partials(public, [int(v) for v in vec], scheme, pool=pool)


def unmask_sealed_sum(public: PaillierPublic, sealed_sum: EncryptedVector, mask_total: U64Vector,
                      blank: Sequence[int] = ()) -> EncryptedVector:
    """Gateway side: add E((-mask_total + r) mod 2^64), r uniform (OS CSPRNG) at ``blank``, else 0.

    ``sealed_sum`` is the product of the survivors' :func:`encrypt_masked` ciphertexts and
    ``mask_total`` the sum of their masks from secure aggregation's Round 4. The result decrypts
    (:func:`decrypt_ring_sum`) to the survivors' total in every slot but the blanked ones, which
    hold a uniform ring value; r is drawn here and forgotten on return.
    """
    masks = np.asarray(mask_total)
    if masks.dtype != np.uint64 or masks.shape != (sealed_sum.length,):
        raise InvalidSpec(f"mask total must be {sealed_sum.length} uint64 words")
    if sealed_sum.scheme.value_bits < RING_BITS:
        raise InvalidSpec("the sealed sum was not packed as ring values")
    if sealed_sum.n_contributions + 1 > sealed_sum.scheme.max_parties:
        raise PackingOverflow("no headroom is left for the unmasking correction")
    blanked = set(blank)
    if not all(0 <= i < sealed_sum.length for i in blanked):
        raise InvalidSpec("blanked slots must lie within the vector")
    correction = [((-int(m)) + (secrets.randbelow(_RING) if i in blanked else 0)) % _RING
                  for i, m in enumerate(masks)]
    plaintexts = sealed_sum.scheme.encode(correction)
    correction.clear()
    # g^c with obfuscator 1: the survivors' obfuscators already randomise the product (above).
    enc = EncryptedVector(public.fingerprint, sealed_sum.scheme, sealed_sum.length, 1,
                          tuple(encrypt_plaintexts(public, plaintexts, [1] * len(plaintexts))))
    plaintexts.clear()
    return aggregate_encrypted(public, [sealed_sum, enc])


def decrypt_ring_sum(private: PaillierPrivate, vector: EncryptedVector) -> list[int]:
    """Analyst side: decrypt an unmasked sealed sum; each slot reduced to its ring value in [0, 2^64)."""
    return [v % _RING for v in decrypt_aggregate(private, vector)]
