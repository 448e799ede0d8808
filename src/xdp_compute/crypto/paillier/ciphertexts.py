"""Paillier ciphertexts from outside: validation and the two list formats (bytes, JSON hex).

Every ciphertext from outside is validated (0 < c < n^2, gcd(c, n) = 1) before use; a c that
shares a factor with n is not in Z*_{n^2} and would leak a factor. Sizes are checked before
anything is parsed.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

import gmpy2

from xdp_compute.crypto.paillier.keys import PaillierPublic
from xdp_compute.errors import InvalidCiphertext, PayloadTooLarge

_LIST_MAGIC = b"XPC1"
_LIST_HEADER = struct.Struct(">4sIH")  # magic, count, byte width of one ciphertext


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


def check_payload_size(size: int, max_bytes: int, what: str) -> None:
    """``PayloadTooLarge`` when ``size`` bytes exceed ``max_bytes`` (checked before parsing)."""
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
    check_payload_size(len(view), max_bytes, "ciphertext payload")
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
    check_payload_size(len(items) * width, max_bytes, "ciphertext list")
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
