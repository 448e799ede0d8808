"""CKKS parameter floor, size limits and the errors every CKKS border raises.

The security floor is the HomomorphicEncryption.org standard at 128-bit classical security; a
context from outside below it is an :class:`UnsafeHeContext`, never a warning. One
multiplicative level suffices: default ``coeff_mod_bit_sizes = (60, 40, 60)`` (160 bits <= 218
allowed for N = 8192 at 128-bit security), scale 2^40.
"""

from __future__ import annotations

from collections.abc import Sequence

from xdp_compute.errors import BadRequest

DEFAULT_POLY_MODULUS_DEGREE = 8192
DEFAULT_COEFF_MOD_BIT_SIZES: tuple[int, ...] = (60, 40, 60)
DEFAULT_SCALE_BITS = 40
#: Allowed ring degrees and SEAL's CoeffModulus::MaxBitCount at 128-bit classical security
#: (HomomorphicEncryption.org standard, Albrecht et al. 2018, Table 1; SEAL ``hestdparms.h``).
ALLOWED_POLY_MODULUS_DEGREES: dict[int, int] = {8192: 218, 16384: 438, 32768: 881}
DEFAULT_MAX_CONTEXT_BYTES = 32 << 20
DEFAULT_MAX_CIPHERTEXT_BYTES = 4 << 20
DEFAULT_SANDBOX_TIMEOUT = 120.0
DEFAULT_SANDBOX_MEMORY = 4 << 30


class InvalidHeContext(BadRequest):
    """A CKKS context from outside is malformed or unusable for the requested computation."""

    slug, title = "invalid-he-context", "Invalid homomorphic-encryption context"


class UnsafeHeContext(InvalidHeContext):
    """A CKKS context holds a secret key or parameters below the security floor."""

    slug, title = "unsafe-he-context", "Unsafe homomorphic-encryption context"


class HeSandboxFailure(BadRequest):
    """The sandbox parsing outside HE bytes crashed or timed out: the input is rejected."""

    slug, title = "he-input-rejected", "Homomorphic-encryption input rejected"


def check_parameters(poly_modulus_degree: int, coeff_mod_bit_sizes: Sequence[int]) -> None:
    """Refuse CKKS parameters below the floor (``UnsafeHeContext``) or without a level.

    The degree must be in ``ALLOWED_POLY_MODULUS_DEGREES`` and the total coefficient modulus
    (special prime included) within SEAL's 128-bit bound for it.
    """
    bound = ALLOWED_POLY_MODULUS_DEGREES.get(poly_modulus_degree)
    if bound is None:
        raise UnsafeHeContext(
            f"poly modulus degree {poly_modulus_degree} is not allowed; "
            f"use one of {sorted(ALLOWED_POLY_MODULUS_DEGREES)}"
        )
    total = sum(coeff_mod_bit_sizes)
    if total > bound:
        raise UnsafeHeContext(
            f"coefficient modulus of {total} bits exceeds the 128-bit security bound ({bound}) "
            f"for N={poly_modulus_degree}"
        )
    if len(coeff_mod_bit_sizes) < 3:
        raise InvalidHeContext("context needs at least one multiplicative level (3 primes)")
