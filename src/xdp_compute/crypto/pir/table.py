"""The encoded lookup table: one tag and one encrypted label per record, padded to a capacity.

Kales et al. 2019 §3 (the server publishes its PRF values of every record, the client compares
its own) extended with labels as in labelled PSI (Chen, Huang, Laine, Rindal, CCS 2018, §4: the
label is encrypted under a key only the PRF value of its item gives). For each record of the
holder, with ``out = F_k(key)`` (``oprf.OprfKey.evaluate``, 64 bytes):

1. ``tag = out[0:16]``: what the client looks for (among 2·10^6 entries a collision has
   probability < 2^-88).
2. ``label_key = out[32:64]``: ChaCha20-Poly1305 (RFC 8439) key of the label. Each key encrypts
   one label, once, so the nonce is fixed; the table's version id is the associated data, so an
   entry cannot be moved into another version.
3. The label is the canonical JSON of the record's declared columns, length-prefixed and padded
   with zeros to ``label_bytes``: every ciphertext has the same size.
4. Dummy entries, made by the same steps from random keys, fill the table to ``capacity``:
   its size says the declared capacity, never the row count.
5. Entries are sorted by tag (the order says nothing about rows) and the client binary-searches.
6. The header carries the holder's ``pk = k·G``: each evaluation comes with a proof that it used
   the same ``k`` (RFC 9497 VOPRF), so a holder cannot answer with another key unnoticed.

Without an evaluation from the holder (one per charged lookup) the table is random bytes to its
reader: tags and label keys are PRF outputs under ``k``.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from xdp_compute.crypto.pir.oprf import OUTPUT_BYTES, OprfKey

__all__ = [
    "AEAD_BYTES",
    "HEADER_BYTES",
    "MAX_LABEL_BYTES",
    "NO_SUCH_PART",
    "TAG_BYTES",
    "VERSION_BYTES",
    "LabelTooLong",
    "LookupTable",
    "TableError",
    "build_table",
    "decode_label",
    "encode_label",
    "entry_bytes",
]

MAGIC = b"XDPLT2"
VERSION_BYTES = 16
TAG_BYTES = 16
AEAD_BYTES = 16  # Poly1305 tag
MAX_LABEL_BYTES = 4096
_NONCE = bytes(12)
#: A node's refusal of a part number past a table version's last part (the gateway answers 404).
NO_SUCH_PART = "this lookup table version has no part with that number"
_AAD = b"xdp-lookup/v1/label"
_HEAD = struct.Struct(f">{len(MAGIC)}s{VERSION_BYTES}s32sIH")  # magic, version, pk, capacity, label size
HEADER_BYTES = _HEAD.size


class TableError(ValueError):
    """Bytes that are not a lookup table (wrong magic, size or layout)."""


class LabelTooLong(ValueError):
    """A record's label does not fit the declared ``label_bytes`` (the holder's manifest)."""


def entry_bytes(label_bytes: int) -> int:
    """Size of one entry: tag, padded label, AEAD tag."""
    return TAG_BYTES + label_bytes + AEAD_BYTES


def encode_label(record: dict[str, Any], label_bytes: int) -> bytes:
    """Step 3: ``u16 length || canonical JSON || zeros`` to exactly ``label_bytes``."""
    body = json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")
    if len(body) + 2 > label_bytes:
        raise LabelTooLong(f"a record's label needs {len(body) + 2} bytes, more than label_bytes={label_bytes}")
    return struct.pack(">H", len(body)) + body + bytes(label_bytes - 2 - len(body))


def decode_label(padded: bytes) -> dict[str, Any]:
    (n,) = struct.unpack_from(">H", padded)
    if n + 2 > len(padded):
        raise TableError("a label's length is larger than the label")
    out = json.loads(padded[2:2 + n].decode("utf-8"))
    if not isinstance(out, dict):
        raise TableError("a label is not a JSON object")
    return out


def _entry(out: bytes, label: bytes, version: bytes) -> bytes:
    # Steps 1 and 2: the two halves of a 64-byte random-oracle output are independent.
    assert len(out) == OUTPUT_BYTES
    return out[:TAG_BYTES] + ChaCha20Poly1305(out[32:64]).encrypt(_NONCE, label, _AAD + version)


def build_table(key: OprfKey, version: bytes, records: Iterable[tuple[bytes, dict[str, Any]]], *,
                capacity: int, label_bytes: int) -> bytes:
    """The table of ``records`` (normalised key bytes, declared columns) under ``key``, ``capacity`` entries.

    ``ValueError`` when there are more records than ``capacity`` or two records share a key;
    ``LabelTooLong`` when a label does not fit. The caller reports these to its holder only.
    """
    if len(version) != VERSION_BYTES:
        raise ValueError(f"a table version is {VERSION_BYTES} bytes")
    if not 1 <= capacity <= 2**32 - 1 or not 3 <= label_bytes <= MAX_LABEL_BYTES:
        raise ValueError("capacity must be in [1, 2^32) and label_bytes in [3, 4096]")
    entries: list[bytes] = []
    seen: set[bytes] = set()
    for k, record in records:
        if len(entries) >= capacity:
            raise ValueError(f"more records than the declared capacity {capacity}")
        out = key.evaluate(k)
        if out[:TAG_BYTES] in seen:
            raise ValueError("two records have the same key")
        seen.add(out[:TAG_BYTES])
        entries.append(_entry(out, encode_label(record, label_bytes), version))
    # Step 4: dummies by the same steps (so building costs the same whatever the row count).
    while len(entries) < capacity:
        out = key.evaluate(b"\x00dummy" + os.urandom(16))  # no normalised key starts with NUL
        entries.append(_entry(out, os.urandom(label_bytes), version))
    entries.sort()  # step 5
    return _HEAD.pack(MAGIC, version, key.public_key(), capacity, label_bytes) + b"".join(entries)


@dataclass(frozen=True)
class LookupTable:
    """A parsed table, as the analyst's SDK holds it: ``find`` a PRF output, get its record or None."""

    version: bytes
    public_key: bytes  # pk = k·G: every evaluation's proof is checked against it (oprf.verify_proof)
    capacity: int
    label_bytes: int
    data: bytes

    @classmethod
    def parse(cls, data: bytes) -> LookupTable:
        if len(data) < HEADER_BYTES:
            raise TableError("too short for a lookup table")
        magic, version, pk, capacity, label_bytes = _HEAD.unpack_from(data)
        if magic != MAGIC:
            raise TableError("not a lookup table (bad magic)")
        if not 3 <= label_bytes <= MAX_LABEL_BYTES:
            raise TableError("label size out of range")
        if len(data) != HEADER_BYTES + capacity * entry_bytes(label_bytes):
            raise TableError(f"a table of {capacity} entries of {entry_bytes(label_bytes)} bytes has another size")
        return cls(version, pk, capacity, label_bytes, bytes(data))

    def _tag_at(self, i: int) -> bytes:
        start = HEADER_BYTES + i * entry_bytes(self.label_bytes)
        return self.data[start:start + TAG_BYTES]

    def find(self, out: bytes) -> dict[str, Any] | None:
        """The record whose PRF output is ``out``, or None ("not found"). Binary search by tag."""
        tag = out[:TAG_BYTES]
        lo, hi = 0, self.capacity
        while lo < hi:
            mid = (lo + hi) // 2
            if self._tag_at(mid) < tag:
                lo = mid + 1
            else:
                hi = mid
        if lo == self.capacity or self._tag_at(lo) != tag:
            return None
        start = HEADER_BYTES + lo * entry_bytes(self.label_bytes) + TAG_BYTES
        ct = self.data[start:start + self.label_bytes + AEAD_BYTES]
        try:
            label = ChaCha20Poly1305(out[32:64]).decrypt(_NONCE, ct, _AAD + self.version)
        except InvalidTag:
            return None  # a tag collision with a dummy (probability < 2^-88): not this key's record
        return decode_label(label)
