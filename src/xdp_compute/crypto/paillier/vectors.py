"""Packed encrypted vectors: encrypt (node), add (gateway, no key), decrypt (SDK), and their format.

Homomorphic addition: E(m1) * E(m2) mod n^2 = E(m1 + m2 mod n), slot-wise over packed
plaintexts (:mod:`~xdp_compute.crypto.paillier.packing`). An :class:`EncryptedVector` carries
what its decryptor needs (key fingerprint, layout, length, contribution count); its JSON form is
``xdp-compute/paillier-vector/1`` and its binary form starts with ``XPV1``.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import gmpy2

from xdp_compute.crypto._paillier_worker import obfuscator_batch
from xdp_compute.crypto.paillier.ciphertexts import (
    check_payload_size,
    ciphertexts_from_bytes,
    ciphertexts_from_json,
    ciphertexts_to_bytes,
    ciphertexts_to_json,
    validate_ciphertexts,
)
from xdp_compute.crypto.paillier.keys import PaillierPrivate, PaillierPublic
from xdp_compute.crypto.paillier.obfuscators import ObfuscatorPool
from xdp_compute.crypto.paillier.packing import PackingOverflow, PackingScheme
from xdp_compute.errors import InvalidCiphertext, InvalidSpec, WrongKey

_VECTOR_FORMAT = "xdp-compute/paillier-vector/1"
_VECTOR_MAGIC = b"XPV1"
_MAX_HEADER_BYTES = 4096


def encrypt_plaintexts(
    public: PaillierPublic, plaintexts: Sequence[int], obfuscators: Sequence[int]
) -> list[int]:
    """Encrypt raw plaintexts in [0, n) as (1 + m*n) * r^n mod n^2 with the given obfuscators."""
    if len(obfuscators) != len(plaintexts):
        raise ValueError("need exactly one obfuscator per plaintext")
    n = gmpy2.mpz(public.n)
    n_square = gmpy2.mpz(public.n_square)
    out: list[int] = []
    for m, r in zip(plaintexts, obfuscators, strict=True):
        if not 0 <= m < public.n:
            raise ValueError("plaintext out of range [0, n)")
        # g = n + 1: g^m = 1 + m*n mod n^2 (Paillier 1999 with the phe generator).
        out.append(int(gmpy2.f_mod((1 + m * n) * gmpy2.mpz(r), n_square)))
    return out


def _check_scheme(public: PaillierPublic, scheme: PackingScheme) -> None:
    if scheme.n_bits != public.bits:
        raise InvalidSpec(f"packing scheme is for {scheme.n_bits}-bit keys; this key has {public.bits} bits")


def encrypt_vector(
    public: PaillierPublic,
    values: Iterable[int],
    scheme: PackingScheme,
    *,
    pool: ObfuscatorPool | None = None,
) -> list[int]:
    """Pack and encrypt one node's signed integers; returns one ciphertext per plaintext.

    With ``pool`` the obfuscators come from its precomputed stock (fast path); without, they
    are computed here, one modular exponentiation per ciphertext.
    """
    _check_scheme(public, scheme)
    plaintexts = scheme.encode(values)
    if pool is not None:
        if pool.public.n != public.n:
            raise ValueError("obfuscator pool belongs to another key")
        obfuscators = pool.take(len(plaintexts))
    else:
        obfuscators = obfuscator_batch(public.n, len(plaintexts))
    return encrypt_plaintexts(public, plaintexts, obfuscators)


def add_encrypted(public: PaillierPublic, ciphertext_lists: Sequence[Sequence[int]]) -> list[int]:
    """Homomorphically add vectors slot-wise: the product mod n^2 of matching ciphertexts.

    Needs no private key and no masks (gateway side). Validates every ciphertext first
    (``InvalidCiphertext``) and requires equal lengths. The caller must keep the number of
    summed contributions within the packing scheme's ``max_parties``
    (:func:`aggregate_encrypted` does).
    """
    if not ciphertext_lists:
        raise InvalidCiphertext("nothing to add")
    length = len(ciphertext_lists[0])
    for index, cts in enumerate(ciphertext_lists):
        if len(cts) != length:
            raise InvalidCiphertext(f"ciphertext list {index} has {len(cts)} entries, expected {length}")
        validate_ciphertexts(cts, public)
    n_square = gmpy2.mpz(public.n_square)
    acc = [gmpy2.mpz(c) for c in ciphertext_lists[0]]
    for cts in ciphertext_lists[1:]:
        acc = [gmpy2.f_mod(a * c, n_square) for a, c in zip(acc, cts, strict=True)]
    return [int(a) for a in acc]


def decrypt_vector(
    private: PaillierPrivate,
    ciphertexts: Sequence[int],
    scheme: PackingScheme,
    n_contributions: int,
    length: int,
    *,
    key_fingerprint: str | None = None,
) -> list[int]:
    """Decrypt and unpack a (summed) vector: the ``length`` signed sums of ``n_contributions`` inputs.

    ``WrongKey`` when ``key_fingerprint`` (if given) is not this key's, or when the decrypted
    plaintexts fail the packing integrity check; ``InvalidCiphertext`` for out-of-range
    ciphertexts or a contribution count that does not match the check field.
    """
    if key_fingerprint is not None and key_fingerprint != private.fingerprint:
        raise WrongKey("the result was encrypted for another key (fingerprint mismatch)")
    _check_scheme(private.public, scheme)
    validate_ciphertexts(ciphertexts, private.public)
    plaintexts = [private.raw_decrypt(c) for c in ciphertexts]
    return scheme.decode(plaintexts, n_contributions, length)


@dataclass(frozen=True)
class EncryptedVector:
    """A packed encrypted vector with what its decryptor needs: key, layout, length, count."""

    key_fingerprint: str
    scheme: PackingScheme
    length: int
    n_contributions: int
    ciphertexts: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (ciphertexts as hex strings)."""
        return {
            "format": _VECTOR_FORMAT,
            "key_fingerprint": self.key_fingerprint,
            "scheme": self.scheme.to_dict(),
            "length": self.length,
            "n_contributions": self.n_contributions,
            "ciphertexts": ciphertexts_to_json(self.ciphertexts),
        }

    @classmethod
    def from_dict(cls, data: Any, public: PaillierPublic, *, max_bytes: int) -> EncryptedVector:
        """Parse and validate (key, layout, sizes, every ciphertext) a vector from outside."""
        if not isinstance(data, Mapping) or data.get("format") != _VECTOR_FORMAT:
            raise InvalidCiphertext(f"not an encrypted vector (format must be {_VECTOR_FORMAT!r})")
        header = {k: data.get(k) for k in ("key_fingerprint", "scheme", "length", "n_contributions")}
        cts = ciphertexts_from_json(data.get("ciphertexts"), public, max_bytes=max_bytes)
        return cls._build(header, cts, public)

    def to_bytes(self, public: PaillierPublic) -> bytes:
        """Binary form: magic ``XPV1``, u32 header length, JSON header, ciphertext list bytes."""
        header = json.dumps(
            {
                "key_fingerprint": self.key_fingerprint,
                "scheme": self.scheme.to_dict(),
                "length": self.length,
                "n_contributions": self.n_contributions,
            },
            separators=(",", ":"),
        ).encode()
        return (
            _VECTOR_MAGIC
            + struct.pack(">I", len(header))
            + header
            + ciphertexts_to_bytes(self.ciphertexts, public)
        )

    @classmethod
    def from_bytes(cls, data: bytes, public: PaillierPublic, *, max_bytes: int) -> EncryptedVector:
        """Parse and validate :meth:`to_bytes` output; size limit first, truncation -> ``InvalidCiphertext``."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise InvalidCiphertext("encrypted vector must be bytes")
        view = memoryview(data)
        check_payload_size(len(view), max_bytes, "encrypted vector")
        if len(view) < 8 or bytes(view[:4]) != _VECTOR_MAGIC:
            raise InvalidCiphertext("encrypted vector has a bad magic number or is truncated")
        (header_len,) = struct.unpack_from(">I", view, 4)
        if header_len > _MAX_HEADER_BYTES or 8 + header_len > len(view):
            raise InvalidCiphertext("encrypted vector header is truncated or too long")
        try:
            header = json.loads(bytes(view[8 : 8 + header_len]))
        except (ValueError, UnicodeDecodeError):
            raise InvalidCiphertext("encrypted vector header is not valid JSON") from None
        if not isinstance(header, dict):
            raise InvalidCiphertext("encrypted vector header must be a JSON object")
        cts = ciphertexts_from_bytes(view[8 + header_len :], public, max_bytes=max_bytes)
        return cls._build(header, cts, public)

    @classmethod
    def _build(cls, header: Mapping[str, Any], cts: list[int], public: PaillierPublic) -> EncryptedVector:
        if header.get("key_fingerprint") != public.fingerprint:
            raise InvalidCiphertext("encrypted vector was made for another key (fingerprint mismatch)")
        scheme_doc = header.get("scheme")
        if not isinstance(scheme_doc, Mapping):
            raise InvalidCiphertext("encrypted vector lacks its packing scheme")
        try:
            scheme = PackingScheme.from_dict(scheme_doc)
        except InvalidSpec as exc:
            raise InvalidCiphertext(f"encrypted vector has a bad packing scheme: {exc.detail}") from None
        length, count = header.get("length"), header.get("n_contributions")
        if isinstance(length, bool) or not isinstance(length, int) or length < 1:
            raise InvalidCiphertext("encrypted vector length must be a positive integer")
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= scheme.max_parties:
            raise InvalidCiphertext(f"n_contributions must be an integer in [1, {scheme.max_parties}]")
        if scheme.n_bits != public.bits:
            raise InvalidCiphertext("packing scheme does not match the key size")
        if len(cts) != scheme.plaintexts_needed(length):
            raise InvalidCiphertext(
                f"{len(cts)} ciphertexts do not match length {length} "
                f"({scheme.plaintexts_needed(length)} expected)"
            )
        return cls(public.fingerprint, scheme, length, count, tuple(cts))


def encrypt_partials(
    public: PaillierPublic,
    values: Sequence[int],
    scheme: PackingScheme,
    *,
    pool: ObfuscatorPool | None = None,
) -> EncryptedVector:
    """Node side: pack and encrypt one vector of noisy partials (one contribution)."""
    cts = encrypt_vector(public, values, scheme, pool=pool)
    return EncryptedVector(public.fingerprint, scheme, len(values), 1, tuple(cts))


def aggregate_encrypted(public: PaillierPublic, vectors: Sequence[EncryptedVector]) -> EncryptedVector:
    """Gateway side: add encrypted vectors of the same key, layout and length; counts add up.

    Refuses (``PackingOverflow``) a total above the scheme's ``max_parties``, which could
    overflow the slots' headroom, and (``InvalidCiphertext``) mismatched inputs.
    """
    if not vectors:
        raise InvalidCiphertext("nothing to aggregate")
    first = vectors[0]
    for index, vec in enumerate(vectors):
        if vec.key_fingerprint != public.fingerprint:
            raise InvalidCiphertext(f"vector {index} was made for another key")
        if vec.scheme != first.scheme or vec.length != first.length:
            raise InvalidCiphertext(f"vector {index} has a different packing scheme or length")
    total = sum(vec.n_contributions for vec in vectors)
    if total > first.scheme.max_parties:
        raise PackingOverflow(
            f"{total} contributions exceed max_parties={first.scheme.max_parties} of the packing scheme"
        )
    summed = add_encrypted(public, [vec.ciphertexts for vec in vectors])
    return EncryptedVector(public.fingerprint, first.scheme, first.length, total, tuple(summed))


def decrypt_aggregate(private: PaillierPrivate, vector: EncryptedVector) -> list[int]:
    """SDK side: decrypt and unpack an aggregate (``WrongKey`` for another key's result)."""
    return decrypt_vector(
        private,
        vector.ciphertexts,
        vector.scheme,
        vector.n_contributions,
        vector.length,
        key_fingerprint=vector.key_fingerprint,
    )
