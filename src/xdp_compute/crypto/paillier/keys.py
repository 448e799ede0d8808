"""Paillier key pairs (Paillier, EUROCRYPT 1999, scheme 1, g = n + 1 as in ``phe``): checks, CRT, files.

Decryption with the CRT (Paillier 1999, §7): m_p = L_p(c^(p-1) mod p^2) * h_p mod p with
L_p(x) = (x - 1) / p and h_p = L_p(g^(p-1) mod p^2)^-1 mod p, same for q, then CRT. A public key
from outside is validated on construction (:func:`validate_public_key`); the private key lives
in a 0600 file and its ``repr`` shows no secret.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import gmpy2
from phe import paillier as _phe

from xdp_compute.crypto._keyfile import read_secret_file, write_secret_file
from xdp_compute.errors import BadRequest, InvalidKey

#: Smallest modulus accepted anywhere (NIST SP 800-57: 2048-bit factoring ~ 112-bit security).
MIN_KEY_BITS = 2048
#: Default modulus size (~128-bit security).
DEFAULT_KEY_BITS = 3072
#: Largest modulus accepted from outside; bounds the work a hostile key can cause.
MAX_KEY_BITS = 8192
_SMALL_PRIME_BOUND = 10_000
_MAX_DECIMAL_DIGITS = 2_600  # an 8192-bit n has 2467 decimal digits
_PRIVATE_KEY_KIND = "xdp-compute/paillier-private-key"


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


@functools.lru_cache(maxsize=256)
def _accepted_modulus(n: int) -> bool:
    """``validate_public_key(n)`` with the default bounds, remembered for moduli that passed.

    Its strong-probable-prime test is a full-size modular exponentiation (~7 ms at 3072 bits),
    and one encrypted query parsed the analyst's key several times on every side (issue #13).
    The checks are a function of n alone, so a modulus that passed once passes again; one that
    failed is not remembered (``lru_cache`` keeps no exceptions) and is checked, and refused,
    every time.
    """
    validate_public_key(n)
    return True


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
        if type(self.n) is int:  # exactly int: bools and int subclasses are checked without the memo
            _accepted_modulus(self.n)
        else:
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
