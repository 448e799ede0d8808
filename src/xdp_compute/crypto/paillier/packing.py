"""Plaintext packing: many fixed-width signed slots per Paillier plaintext, with n-way headroom.

A slot holds value + 2^value_bits (always positive, so negatives need no modular wrap), and
ceil(log2(max_parties)) headroom bits so the sum of up to ``max_parties`` contributions cannot
carry into the next slot. The decryptor subtracts ``n_contributions * 2^value_bits`` per slot,
so the contribution count travels with the result. The top slots of every plaintext hold a check
field: each contribution adds the fixed constant ``CHECK_CONSTANT``, so a correct sum of N
contributions holds exactly N * CHECK_CONSTANT there, and every bit above the check field and
every unused padding slot must decode to zero. A wrong private key (or a corrupted ciphertext)
decrypts to pseudo-random bits and fails this check with probability ~1 - 2^-60 per ciphertext,
which becomes :class:`~xdp_compute.errors.WrongKey` instead of garbage.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from xdp_compute.crypto.paillier.keys import MAX_KEY_BITS
from xdp_compute.errors import BadRequest, InvalidCiphertext, InvalidSpec, WrongKey

#: Default bound on the number of contributions one packed sum may hold.
DEFAULT_MAX_PARTIES = 128
#: Per-contribution value of the check field (62 bits, odd, no structure).
CHECK_CONSTANT = 0x2D5E_97A3_C41B_6F0D
_CHECK_BITS = CHECK_CONSTANT.bit_length()


class PackingOverflow(BadRequest):
    """A value does not fit the declared slot width, or a sum would overflow its headroom."""

    slug, title = "packing-overflow", "Value does not fit the packing scheme"


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
