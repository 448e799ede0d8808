"""Paillier encrypted delivery with plaintext packing (Paillier, EUROCRYPT 1999).

Flow: the analyst's SDK owns a key pair and sends the public modulus ``n`` with the job. Each
node packs its vector of noisy integer partials into a few large plaintexts (many fixed-width
slots per plaintext), encrypts them under ``n``; the gateway, which holds no key and no mask,
multiplies the nodes' ciphertexts slot-wise mod n^2 (homomorphic addition); the SDK decrypts
and unpacks the sums.

Scheme facts used below (Paillier 1999, §3 "scheme 1"; g = n + 1 as in ``phe``):

* Encryption: c = g^m * r^n mod n^2 with r uniform in Z_n^*. Since (1 + n)^m = 1 + m*n mod n^2
  (binomial theorem), g^m costs one multiplication; the only exponentiation is the obfuscator
  r^n, which does not depend on m and is precomputed off the critical path
  (:class:`ObfuscatorPool`, worker processes, gmpy2).
* Homomorphic addition: E(m1) * E(m2) mod n^2 = E(m1 + m2 mod n).
* Decryption with the CRT (Paillier 1999, §7): m_p = L_p(c^(p-1) mod p^2) * h_p mod p with
  L_p(x) = (x - 1) / p and h_p = L_p(g^(p-1) mod p^2)^-1 mod p, same for q, then CRT.

Packing (:class:`PackingScheme`): a slot holds value + 2^value_bits (always positive, so
negatives need no modular wrap), and ceil(log2(max_parties)) headroom bits so the sum of up to
``max_parties`` contributions cannot carry into the next slot. The decryptor subtracts
``n_contributions * 2^value_bits`` per slot, so the contribution count travels with the result.
The top slots of every plaintext hold a check field: each contribution adds the fixed constant
``CHECK_CONSTANT``, so a correct sum of N contributions holds exactly N * CHECK_CONSTANT there,
and every bit above the check field and every unused padding slot must decode to zero. A wrong
private key (or a corrupted ciphertext) decrypts to pseudo-random bits and fails this check with
probability ~1 - 2^-60 per ciphertext, which becomes :class:`~xdp_compute.errors.WrongKey`
instead of garbage; the result envelope is also bound to the key's fingerprint.

Every ciphertext from outside is validated (0 < c < n^2, gcd(c, n) = 1) before use.
"""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing
import operator
import os
import struct
import threading
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Self

import gmpy2
from phe import paillier as _phe

from xdp_compute.crypto._keyfile import read_secret_file, write_secret_file
from xdp_compute.crypto._paillier_worker import obfuscator_batch
from xdp_compute.errors import (
    BadRequest,
    InvalidCiphertext,
    InvalidKey,
    InvalidSpec,
    PayloadTooLarge,
    WrongKey,
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

#: Smallest modulus accepted anywhere (NIST SP 800-57: 2048-bit factoring ~ 112-bit security).
MIN_KEY_BITS = 2048
#: Default modulus size (~128-bit security).
DEFAULT_KEY_BITS = 3072
#: Largest modulus accepted from outside; bounds the work a hostile key can cause.
MAX_KEY_BITS = 8192
#: Default bound on the number of contributions one packed sum may hold.
DEFAULT_MAX_PARTIES = 128
#: Per-contribution value of the check field (62 bits, odd, no structure).
CHECK_CONSTANT = 0x2D5E_97A3_C41B_6F0D
_CHECK_BITS = CHECK_CONSTANT.bit_length()
_SMALL_PRIME_BOUND = 10_000
_MAX_DECIMAL_DIGITS = 2_600  # an 8192-bit n has 2467 decimal digits
_PRIVATE_KEY_KIND = "xdp-compute/paillier-private-key"
_VECTOR_FORMAT = "xdp-compute/paillier-vector/1"
_LIST_MAGIC = b"XPC1"
_VECTOR_MAGIC = b"XPV1"
_LIST_HEADER = struct.Struct(">4sIH")  # magic, count, byte width of one ciphertext
_MAX_HEADER_BYTES = 4096


class PackingOverflow(BadRequest):
    """A value does not fit the declared slot width, or a sum would overflow its headroom."""

    slug, title = "packing-overflow", "Value does not fit the packing scheme"


def _small_primes(bound: int) -> list[int]:
    sieve = bytearray([1]) * bound
    sieve[0:2] = b"\x00\x00"
    for i in range(2, math.isqrt(bound) + 1):
        if sieve[i]:
            sieve[i * i :: i] = bytearray(len(range(i * i, bound, i)))
    return [i for i in range(bound) if sieve[i]]


_SMALL_PRIMES = _small_primes(_SMALL_PRIME_BOUND)
# One gcd against the product of all small primes replaces ~1229 trial divisions.
_SMALL_PRIMORIAL = gmpy2.mpz(math.prod(_SMALL_PRIMES))


def _as_int(value: Any, what: str, error: type[BadRequest] = InvalidKey) -> int:
    """Parse an int, a decimal string or a 0x-hex string from outside (bounded length)."""
    if isinstance(value, bool):
        raise error(f"{what} must be an integer, not a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        text = value.strip()
        try:
            if text[:2].lower() == "0x":
                if len(text) > 2 + MAX_KEY_BITS // 2:
                    raise error(f"{what} is too long")
                return int(text, 0)
            if len(text) > _MAX_DECIMAL_DIGITS:
                raise error(f"{what} is too long")
            return int(text, 10)
        except ValueError:
            raise error(f"{what} is not a decimal or 0x-hex integer") from None
    raise error(f"{what} must be an integer or an integer string, not {type(value).__name__}")


def validate_public_key(n: int, *, min_bits: int = MIN_KEY_BITS, max_bits: int = MAX_KEY_BITS) -> None:
    """Check that ``n`` is a plausible Paillier modulus; raise ``InvalidKey`` naming the failed check.

    Checks: integer; ``min_bits`` <= size <= ``max_bits``; odd; not a perfect square or other
    perfect power (p = q); no prime factor below 10^4; not itself a (probable) prime. The
    generator is not taken from outside: g = n + 1 is fixed, as in ``phe``. These checks
    catch malformed and lazily forged keys; they cannot prove n = pq with large p, q.
    """
    if isinstance(n, bool) or not isinstance(n, int):
        raise InvalidKey(f"Paillier modulus must be an int, not {type(n).__name__}")
    bits = n.bit_length()
    if bits < min_bits:
        raise InvalidKey(f"Paillier modulus has {bits} bits; at least {min_bits} are required")
    if bits > max_bits:
        raise InvalidKey(f"Paillier modulus has {bits} bits; at most {max_bits} are accepted")
    if n % 2 == 0:
        raise InvalidKey("Paillier modulus is even")
    n_mpz = gmpy2.mpz(n)
    if gmpy2.is_square(n_mpz) or gmpy2.is_power(n_mpz):
        raise InvalidKey("Paillier modulus is a perfect power (p = q)")
    if gmpy2.gcd(n_mpz, _SMALL_PRIMORIAL) != 1:
        factor = next(p for p in _SMALL_PRIMES if n % p == 0)
        raise InvalidKey(f"Paillier modulus has the small factor {factor}")
    # One strong-probable-prime test (base 2) tells a prime n from a composite one; a real
    # RSA-style modulus passes it with negligible probability.
    if gmpy2.is_strong_prp(n_mpz, 2):
        raise InvalidKey("Paillier modulus is prime; it must be a product of two primes")


def _fingerprint(n: int) -> str:
    width = (n.bit_length() + 7) // 8
    return hashlib.sha256(b"xdp-compute/paillier-n\x00" + n.to_bytes(width, "big")).hexdigest()


@dataclass(frozen=True)
class PaillierPublic:
    """An analyst's Paillier public key (g = n + 1); validated on construction."""

    n: int
    n_square: int = field(init=False, repr=False, compare=False)
    bits: int = field(init=False, repr=False, compare=False)
    fingerprint: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        validate_public_key(self.n)
        object.__setattr__(self, "n_square", self.n * self.n)
        object.__setattr__(self, "bits", self.n.bit_length())
        object.__setattr__(self, "fingerprint", _fingerprint(self.n))

    @property
    def ciphertext_bytes(self) -> int:
        """Byte width of one serialised ciphertext (an element of Z_{n^2})."""
        return (self.n_square.bit_length() + 7) // 8

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form: ``{"scheme": "paillier", "n": "<decimal>", "bits", "fingerprint"}``."""
        return {"scheme": "paillier", "n": str(self.n), "bits": self.bits, "fingerprint": self.fingerprint}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PaillierPublic:
        """Parse and validate a public key from outside (``n`` decimal or 0x-hex; g is implied).

        A ``fingerprint`` member, when present, must match ``n``; ``bits`` likewise.
        """
        if not isinstance(data, Mapping):
            raise InvalidKey("Paillier public key must be a JSON object")
        unknown = set(data) - {"scheme", "n", "bits", "fingerprint"}
        if unknown:
            raise InvalidKey(f"unknown public key member(s): {', '.join(sorted(map(str, unknown)))}")
        if data.get("scheme", "paillier") != "paillier":
            raise InvalidKey(f"unsupported key scheme {data.get('scheme')!r}; expected 'paillier'")
        if "n" not in data:
            raise InvalidKey("Paillier public key lacks the modulus n")
        pub = cls(_as_int(data["n"], "modulus n"))
        if "bits" in data and data["bits"] != pub.bits:
            raise InvalidKey(f"declared bits {data['bits']!r} do not match the modulus ({pub.bits})")
        if "fingerprint" in data and data["fingerprint"] != pub.fingerprint:
            raise InvalidKey("declared fingerprint does not match the modulus")
        return pub

    def to_phe(self) -> _phe.PaillierPublicKey:
        """The equivalent ``phe`` public key (for interoperability and baselines)."""
        return _phe.PaillierPublicKey(self.n)


@dataclass(frozen=True, repr=False)
class PaillierPrivate:
    """An analyst's Paillier private key (p < q) with its CRT constants; ``repr`` hides secrets."""

    public: PaillierPublic
    p: int
    q: int
    _crt: tuple[Any, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        p, q = sorted((int(self.p), int(self.q)))
        if p == q or p * q != self.public.n:
            raise InvalidKey("private key factors do not match the public modulus")
        object.__setattr__(self, "p", p)
        object.__setattr__(self, "q", q)
        p_mpz, q_mpz = gmpy2.mpz(p), gmpy2.mpz(q)
        p_sq, q_sq = p_mpz * p_mpz, q_mpz * q_mpz
        g = gmpy2.mpz(self.public.n + 1)
        # Paillier 1999, §7: h_p = L_p(g^(p-1) mod p^2)^-1 mod p (and for q).
        try:
            h_p = gmpy2.invert((gmpy2.powmod(g, p_mpz - 1, p_sq) - 1) // p_mpz, p_mpz)
            h_q = gmpy2.invert((gmpy2.powmod(g, q_mpz - 1, q_sq) - 1) // q_mpz, q_mpz)
            p_inv_q = gmpy2.invert(p_mpz, q_mpz)
        except ZeroDivisionError:
            raise InvalidKey("private key factors are not valid Paillier primes") from None
        object.__setattr__(self, "_crt", (p_mpz, q_mpz, p_sq, q_sq, h_p, h_q, p_inv_q))

    def __repr__(self) -> str:
        return f"PaillierPrivate(bits={self.public.bits}, fingerprint={self.public.fingerprint[:16]}...)"

    @property
    def fingerprint(self) -> str:
        """Fingerprint of the matching public key."""
        return self.public.fingerprint

    def raw_decrypt(self, ciphertext: int) -> int:
        """Decrypt one raw ciphertext to its plaintext in [0, n) (CRT, Paillier 1999 §7)."""
        p, q, p_sq, q_sq, h_p, h_q, p_inv_q = self._crt
        c = gmpy2.mpz(ciphertext)
        m_p = ((gmpy2.powmod(c, p - 1, p_sq) - 1) // p) * h_p % p
        m_q = ((gmpy2.powmod(c, q - 1, q_sq) - 1) // q) * h_q % q
        # Garner's CRT: m = m_p + p * ((m_q - m_p) * p^-1 mod q).
        return int(m_p + p * ((m_q - m_p) * p_inv_q % q))

    def to_phe(self) -> _phe.PaillierPrivateKey:
        """The equivalent ``phe`` private key."""
        return _phe.PaillierPrivateKey(self.public.to_phe(), self.p, self.q)


def generate_keypair(bits: int = DEFAULT_KEY_BITS) -> tuple[PaillierPublic, PaillierPrivate]:
    """Generate an analyst key pair with an n of exactly ``bits`` bits (>= 2048, else ``InvalidKey``).

    Primes come from ``phe`` (``random.SystemRandom``, i.e. the OS CSPRNG, and gmpy2's
    ``next_prime``); p and q have equal length, so gcd(pq, (p-1)(q-1)) = 1 as Paillier requires.
    """
    if isinstance(bits, bool) or not isinstance(bits, int):
        raise InvalidKey("key size must be an integer number of bits")
    if bits < MIN_KEY_BITS:
        raise InvalidKey(f"Paillier keys must have at least {MIN_KEY_BITS} bits; {bits} requested")
    if bits > MAX_KEY_BITS:
        raise InvalidKey(f"Paillier keys are limited to {MAX_KEY_BITS} bits; {bits} requested")
    phe_pub, phe_priv = _phe.generate_paillier_keypair(n_length=bits)
    public = PaillierPublic(int(phe_pub.n))
    return public, PaillierPrivate(public, int(phe_priv.p), int(phe_priv.q))


def save_private_key(
    path: str | os.PathLike[str], private: PaillierPrivate, *, overwrite: bool = False
) -> None:
    """Write ``private`` as JSON to a new file with mode 0600 (``Conflict`` if it exists)."""
    doc = {
        "kind": _PRIVATE_KEY_KIND,
        "version": 1,
        "fingerprint": private.fingerprint,
        "n": str(private.public.n),
        "p": str(private.p),
        "q": str(private.q),
    }
    write_secret_file(path, json.dumps(doc, indent=2).encode() + b"\n", overwrite=overwrite)


def load_private_key(path: str | os.PathLike[str]) -> PaillierPrivate:
    """Load a key written by :func:`save_private_key`.

    Refuses (``InvalidKey``) a file readable by group or others, a malformed file, factors that
    do not multiply to n or are not prime, and a fingerprint that does not match.
    """
    raw = read_secret_file(path, max_bytes=64 * 1024)
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise InvalidKey("private key file is not valid JSON") from None
    if not isinstance(doc, dict) or doc.get("kind") != _PRIVATE_KEY_KIND or doc.get("version") != 1:
        raise InvalidKey("not an xdp-compute Paillier private key file (kind/version)")
    n = _as_int(doc.get("n"), "n")
    p = _as_int(doc.get("p"), "p")
    q = _as_int(doc.get("q"), "q")
    for name, factor in (("p", p), ("q", q)):
        if factor < 2 or not gmpy2.is_prime(factor, 25):
            raise InvalidKey(f"private key factor {name} is not prime")
    public = PaillierPublic(n)
    if doc.get("fingerprint") != public.fingerprint:
        raise InvalidKey("private key file fingerprint does not match its modulus")
    return PaillierPrivate(public, p, q)


# ----------------------------------------------------------------------------- ciphertexts


def validate_ciphertext(c: int, n: int, *, n_square: int | None = None) -> None:
    """Check that ``c`` is a valid ciphertext for modulus ``n``; raise ``InvalidCiphertext``.

    Checks (in order, the message names the one that failed): c is an int; 0 < c; c < n^2;
    gcd(c, n) = 1 (a c sharing a factor with n is not in Z*_{n^2} and would leak a factor).
    """
    if isinstance(c, bool) or not isinstance(c, int):
        raise InvalidCiphertext(f"ciphertext must be an int, not {type(c).__name__}")
    if c <= 0:
        raise InvalidCiphertext("ciphertext check 0 < c failed")
    if c >= (n * n if n_square is None else n_square):
        raise InvalidCiphertext("ciphertext check c < n^2 failed (wrong key or corrupted value)")
    if gmpy2.gcd(c, n) != 1:
        raise InvalidCiphertext("ciphertext check gcd(c, n) = 1 failed")


def validate_ciphertexts(ciphertexts: Sequence[int], public: PaillierPublic) -> None:
    """Validate every ciphertext of a list (``InvalidCiphertext`` names the first bad index)."""
    n, n_square = public.n, public.n_square
    for index, c in enumerate(ciphertexts):
        try:
            validate_ciphertext(c, n, n_square=n_square)
        except InvalidCiphertext as exc:
            raise InvalidCiphertext(f"ciphertext {index}: {exc.detail}", index=index) from None


def _check_payload_size(size: int, max_bytes: int, what: str) -> None:
    if size > max_bytes:
        raise PayloadTooLarge(f"{what} is {size} bytes; the limit is {max_bytes}", limit=max_bytes)


def ciphertexts_to_bytes(ciphertexts: Sequence[int], public: PaillierPublic) -> bytes:
    """Serialise ciphertexts: magic ``XPC1``, u32 count, u16 width, then fixed-width big-endian."""
    width = public.ciphertext_bytes
    body = b"".join(int(c).to_bytes(width, "big") for c in ciphertexts)
    return _LIST_HEADER.pack(_LIST_MAGIC, len(ciphertexts), width) + body


def ciphertexts_from_bytes(data: bytes, public: PaillierPublic, *, max_bytes: int) -> list[int]:
    """Parse and validate bytes from :func:`ciphertexts_to_bytes`.

    ``PayloadTooLarge`` when over ``max_bytes`` (checked first); ``InvalidCiphertext`` when the
    bytes are truncated, padded, for another key size, or a value fails
    :func:`validate_ciphertext`.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise InvalidCiphertext("ciphertext payload must be bytes")
    view = memoryview(data)
    _check_payload_size(len(view), max_bytes, "ciphertext payload")
    if len(view) < _LIST_HEADER.size:
        raise InvalidCiphertext("ciphertext payload is truncated (no header)")
    magic, count, width = _LIST_HEADER.unpack_from(view)
    if magic != _LIST_MAGIC:
        raise InvalidCiphertext("ciphertext payload has a bad magic number")
    if width != public.ciphertext_bytes:
        raise InvalidCiphertext(
            f"ciphertext width {width} bytes does not match this key ({public.ciphertext_bytes})"
        )
    expected = _LIST_HEADER.size + count * width
    if len(view) != expected:
        state = "truncated" if len(view) < expected else "followed by trailing bytes"
        raise InvalidCiphertext(f"ciphertext payload is {state}: {len(view)} bytes, expected {expected}")
    start = _LIST_HEADER.size
    out = [int.from_bytes(view[start + i * width : start + (i + 1) * width], "big") for i in range(count)]
    validate_ciphertexts(out, public)
    return out


def ciphertexts_to_json(ciphertexts: Sequence[int]) -> list[str]:
    """JSON-able form: lower-case hex strings without prefix."""
    return [format(int(c), "x") for c in ciphertexts]


def ciphertexts_from_json(items: Any, public: PaillierPublic, *, max_bytes: int) -> list[int]:
    """Parse and validate a JSON list of hex ciphertexts (size bound as for bytes)."""
    if not isinstance(items, list):
        raise InvalidCiphertext("ciphertexts must be a JSON list of hex strings")
    width = public.ciphertext_bytes
    _check_payload_size(len(items) * width, max_bytes, "ciphertext list")
    out: list[int] = []
    for index, item in enumerate(items):
        if not isinstance(item, str) or not 0 < len(item) <= 2 * width:
            raise InvalidCiphertext(f"ciphertext {index} is not a hex string of at most {2 * width} digits")
        try:
            out.append(int(item, 16))
        except ValueError:
            raise InvalidCiphertext(f"ciphertext {index} is not valid hex") from None
    validate_ciphertexts(out, public)
    return out


# ----------------------------------------------------------------------------- packing


@dataclass(frozen=True)
class PackingScheme:
    """Fixed-width slots for signed integers in one Paillier plaintext, with n-way headroom.

    Layout of a plaintext (bit 0 = least significant)::

        | value slot 0 | value slot 1 | ... | value slot V-1 | check field (C slots) | 0 ... |

    ``slot_bits`` = value_bits + 1 (sign, via the offset 2^value_bits) + ceil(log2(max_parties))
    (headroom); ``slots_per_plaintext`` = floor((n_bits - 2) / slot_bits), of which
    ``check_slots`` hold the check field and ``values_per_plaintext`` = the rest hold values.
    A value v with |v| <= 2^value_bits - 1 is stored as v + 2^value_bits in [1, 2^(value_bits+1)).
    Sums of up to ``max_parties`` such slots stay below 2^slot_bits, so no slot carries into its
    neighbour, and every plaintext stays below 2^(n_bits - 2) < n, so no sum wraps mod n.
    """

    n_bits: int
    value_bits: int
    max_parties: int = DEFAULT_MAX_PARTIES
    headroom_bits: int = field(init=False, compare=False)
    slot_bits: int = field(init=False, compare=False)
    slots_per_plaintext: int = field(init=False, compare=False)
    check_slots: int = field(init=False, compare=False)
    values_per_plaintext: int = field(init=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("n_bits", "value_bits", "max_parties"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise InvalidSpec(f"packing {name} must be an integer")
        if not 1 <= self.value_bits <= 4096:
            raise InvalidSpec(f"value_bits must be in [1, 4096], got {self.value_bits}")
        if not 1 <= self.max_parties <= 1 << 20:
            raise InvalidSpec(f"max_parties must be in [1, 2^20], got {self.max_parties}")
        if not 64 <= self.n_bits <= MAX_KEY_BITS:
            raise InvalidSpec(f"n_bits must be in [64, {MAX_KEY_BITS}], got {self.n_bits}")
        headroom = (self.max_parties - 1).bit_length()  # = ceil(log2(max_parties))
        slot_bits = self.value_bits + 1 + headroom
        slots = (self.n_bits - 2) // slot_bits
        check_slots = -(-(_CHECK_BITS + headroom) // slot_bits)
        values = slots - check_slots
        if values < 1:
            raise InvalidSpec(
                f"a {self.n_bits}-bit key cannot hold one {slot_bits}-bit slot plus the check field; "
                "lower value_bits or max_parties"
            )
        object.__setattr__(self, "headroom_bits", headroom)
        object.__setattr__(self, "slot_bits", slot_bits)
        object.__setattr__(self, "slots_per_plaintext", slots)
        object.__setattr__(self, "check_slots", check_slots)
        object.__setattr__(self, "values_per_plaintext", values)

    @property
    def offset(self) -> int:
        """Offset added to every value so that slots hold non-negative numbers."""
        return 1 << self.value_bits

    @property
    def max_abs_value(self) -> int:
        """Largest |value| a slot accepts: 2^value_bits - 1."""
        return (1 << self.value_bits) - 1

    def plaintexts_needed(self, length: int) -> int:
        """Number of plaintexts (= ciphertexts) for a vector of ``length`` values."""
        return -(-length // self.values_per_plaintext)

    def to_dict(self) -> dict[str, int]:
        """JSON-able parameters (the derived layout follows from them)."""
        return {"n_bits": self.n_bits, "value_bits": self.value_bits, "max_parties": self.max_parties}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PackingScheme:
        """Inverse of :meth:`to_dict`; ``InvalidSpec`` on missing or bad members."""
        try:
            return cls(int(data["n_bits"]), int(data["value_bits"]), int(data["max_parties"]))
        except (KeyError, TypeError, ValueError):
            raise InvalidSpec("packing scheme needs integer n_bits, value_bits and max_parties") from None

    def encode(self, values: Iterable[int]) -> list[int]:
        """Pack signed integers into plaintexts (one contribution: check field = CHECK_CONSTANT).

        Raises ``PackingOverflow`` naming the first index whose |value| exceeds
        2^value_bits - 1 (the value itself is not echoed: it is a node's private partial), and
        ``TypeError`` for non-integers (floats must be fixed-point encoded first).
        """
        limit = self.max_abs_value
        encoded: list[int] = []
        offset = self.offset
        for index, value in enumerate(values):
            v = operator.index(value)  # accepts int and numpy integers, rejects floats
            if v > limit or v < -limit:
                raise PackingOverflow(
                    f"value at index {index} does not fit value_bits={self.value_bits} "
                    f"(|value| must be <= 2^{self.value_bits} - 1)",
                    index=index,
                )
            encoded.append(v + offset)
        if not encoded:
            raise InvalidSpec("cannot pack an empty vector")
        per, width = self.values_per_plaintext, self.slot_bits
        plaintexts: list[int] = []
        for start in range(0, len(encoded), per):
            chunk = encoded[start : start + per]
            # Horner from the top: check field, then padding slots (value 0), then values.
            m = CHECK_CONSTANT
            for _ in range(per - len(chunk)):
                m = (m << width) | offset
            for slot in reversed(chunk):
                m = (m << width) | slot
            plaintexts.append(m)
        return plaintexts

    def decode(self, plaintexts: Sequence[int], n_contributions: int, length: int) -> list[int]:
        """Unpack the sum of ``n_contributions`` packed vectors into ``length`` signed sums.

        Verifies every plaintext: the check field must equal n_contributions * CHECK_CONSTANT,
        the bits above it must be zero, padding slots must decode to 0 and every slot must lie
        in the range a sum of n_contributions values can reach. A check field that holds a
        different count raises ``InvalidCiphertext``; any other failure means the plaintexts
        are not what this key encrypted and raises ``WrongKey``.
        """
        if isinstance(n_contributions, bool) or not 1 <= n_contributions <= self.max_parties:
            raise InvalidSpec(f"n_contributions must be in [1, {self.max_parties}], got {n_contributions}")
        if length < 1 or len(plaintexts) != self.plaintexts_needed(length):
            raise InvalidCiphertext(
                f"{len(plaintexts)} ciphertexts cannot hold a vector of length {length} "
                f"({self.plaintexts_needed(max(length, 1))} expected)"
            )
        per, width = self.values_per_plaintext, self.slot_bits
        mask = (1 << width) - 1
        check_shift = per * width
        check_mask = (1 << (self.check_slots * width)) - 1
        top_shift = (per + self.check_slots) * width
        total_offset = n_contributions * self.offset
        bound = n_contributions * self.max_abs_value
        expected_check = n_contributions * CHECK_CONSTANT
        out: list[int] = []
        for j, m in enumerate(plaintexts):
            check = (m >> check_shift) & check_mask
            if m >> top_shift or check != expected_check:
                held, rem = divmod(check, CHECK_CONSTANT)
                if not m >> top_shift and rem == 0 and 1 <= held <= self.max_parties:
                    raise InvalidCiphertext(
                        f"ciphertext {j} holds {held} contributions but the result claims {n_contributions}"
                    )
                raise WrongKey(
                    f"ciphertext {j} fails the packing integrity check: it was not encrypted under "
                    "this key (wrong private key) or it was corrupted"
                )
            base = j * per
            for i in range(per):
                value = ((m >> (i * width)) & mask) - total_offset
                if base + i < length:
                    if not -bound <= value <= bound:
                        raise WrongKey(f"ciphertext {j} slot {i} is out of range: wrong key or corrupted")
                    out.append(value)
                elif value != 0:
                    raise WrongKey(f"ciphertext {j} padding slot {i} is not zero: wrong key or corrupted")
        return out


# ----------------------------------------------------------------------------- obfuscators


def _spawn_executor(workers: int) -> ProcessPoolExecutor:
    # 'spawn', not 'fork': the gateway/node processes run threads (gRPC, uvicorn), and forking a
    # threaded process can deadlock; workers only need gmpy2 and secrets.
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))


class ObfuscatorPool:
    """A stock of precomputed Paillier obfuscators r^n mod n^2, refilled in background processes.

    ``take(k)`` hands out k obfuscators, each exactly once (an obfuscator reused for two
    ciphertexts would let their quotient reveal m1 - m2), waiting for or computing any
    shortfall in the worker processes. After each ``take`` the stock is topped up to ``target``
    in the background. ``phe``/gmpy2 hold the GIL, hence processes, not threads.
    Obfuscators are secret (r^n unmasks its ciphertext): never log or persist them.

    ``workers=0`` computes in the calling thread (no processes; for tests and tiny jobs).
    An ``executor`` may be shared between pools; the pool then does not shut it down.
    """

    def __init__(
        self,
        public: PaillierPublic,
        *,
        target: int = 256,
        workers: int | None = None,
        chunk: int = 8,
        executor: Executor | None = None,
        start: bool = True,
    ) -> None:
        if target < 0 or chunk < 1:
            raise ValueError("target must be >= 0 and chunk >= 1")
        self.public = public
        self.target = target
        self.chunk = chunk
        self._lock = threading.Lock()
        self._ready: list[int] = []
        self._pending: dict[Future[list[int]], int] = {}
        self._closed = False
        worker_count = (os.cpu_count() or 1) if workers is None else workers
        self._own_executor = executor is None and worker_count > 0
        self._executor: Executor | None = (
            executor
            if executor is not None
            else (_spawn_executor(worker_count) if worker_count > 0 else None)
        )
        self._workers = max(1, worker_count)
        if start:
            self.fill()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def available(self) -> int:
        """Obfuscators ready now (finished background work included)."""
        with self._lock:
            self._harvest()
            return len(self._ready)

    def fill(self, count: int | None = None, *, wait_done: bool = False) -> None:
        """Schedule work so that ready + pending >= ``count`` (default ``target``); optionally wait."""
        goal = self.target if count is None else count
        with self._lock:
            self._harvest()
            self._schedule(goal - len(self._ready) - sum(self._pending.values()))
            pending = list(self._pending)
        if wait_done and pending:
            wait(pending)
            with self._lock:
                self._harvest()

    def take(self, count: int) -> list[int]:
        """Remove and return ``count`` distinct fresh obfuscators (computing any shortfall now)."""
        if count < 0:
            raise ValueError("count must be >= 0")
        with self._lock:
            if self._closed:
                raise RuntimeError("obfuscator pool is closed")
            self._harvest()
            while len(self._ready) < count:
                if self._closed:
                    raise RuntimeError("obfuscator pool was closed while waiting")
                # Recomputed each round: another thread may have taken what we waited for.
                short = count - len(self._ready) - sum(self._pending.values())
                if short > 0:
                    if self._executor is None:
                        self._ready.extend(obfuscator_batch(self.public.n, short))
                        continue
                    # Split the shortfall over all workers so a large batch runs in parallel.
                    self._schedule(short, chunk=max(1, -(-short // self._workers)))
                pending = list(self._pending)
                self._lock.release()
                try:
                    wait(pending, return_when=FIRST_COMPLETED)
                finally:
                    self._lock.acquire()
                self._harvest()
            taken, self._ready = self._ready[:count], self._ready[count:]
            self._schedule(self.target - len(self._ready) - sum(self._pending.values()))
        return taken

    def close(self) -> None:
        """Drop the stock and stop background work (shuts down an executor the pool created)."""
        with self._lock:
            self._closed = True
            self._ready.clear()
            for fut in self._pending:
                fut.cancel()
            self._pending.clear()
        if self._own_executor and isinstance(self._executor, ProcessPoolExecutor):
            self._executor.shutdown(wait=True, cancel_futures=True)

    def _harvest(self) -> None:
        for fut in [f for f in self._pending if f.done()]:
            del self._pending[fut]
            if not fut.cancelled():
                self._ready.extend(fut.result())  # a worker error propagates to the caller

    def _schedule(self, count: int, *, chunk: int | None = None) -> None:
        if count <= 0 or self._closed:
            return
        size = chunk or self.chunk
        if self._executor is None:
            self._ready.extend(obfuscator_batch(self.public.n, count))
            return
        while count > 0:
            batch = min(size, count)
            self._pending[self._executor.submit(obfuscator_batch, self.public.n, batch)] = batch
            count -= batch


# ----------------------------------------------------------------------------- vectors


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
        _check_payload_size(len(view), max_bytes, "encrypted vector")
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
