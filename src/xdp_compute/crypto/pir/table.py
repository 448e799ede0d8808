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

Which records enter the table (``select_records``) never stops the build: a source that breaks
its declaration (a repeated key, more keys than ``capacity``, a label longer than ``label_bytes``)
would otherwise make every lookup fail, a failure the analyst sees and whose cause is rows it did
not ask for (the observable rule, DESIGN.md). The records that break it are left out by a fixed
rule, and the counts go to the holder only.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
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
    "Selection",
    "TableError",
    "build_selected",
    "build_table",
    "decode_label",
    "encode_label",
    "entry_bytes",
    "select_records",
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


def _check_shape(capacity: int, label_bytes: int) -> None:
    if not 1 <= capacity <= 2**32 - 1 or not 3 <= label_bytes <= MAX_LABEL_BYTES:
        raise ValueError("capacity must be in [1, 2^32) and label_bytes in [3, 4096]")


@dataclass
class Selection:
    """The records that enter a table, and how many were left out and why (for the holder only).

    ``entries`` are (normalised key, encoded label), at most ``capacity`` of them, keys unique.
    The counts name no key and no value; they describe the holder's source, so they go to its
    node's log and its validation report, never to the gateway's answer to an analyst.
    """

    entries: list[tuple[bytes, bytes]] = field(default_factory=list)
    rows: int = 0                # records read (with a key)
    repeated_keys: int = 0       # keys that more than one record has: every one of their records is left out
    repeated_rows: int = 0       # the records of those keys
    beyond_capacity: int = 0     # unique keys left out because more than ``capacity`` remained
    labels_too_long: int = 0     # kept keys whose record does not fit ``label_bytes``: left out

    @property
    def left_out(self) -> int:
        """Records read that are not in the table."""
        return self.repeated_rows + self.beyond_capacity + self.labels_too_long

    def counts(self) -> dict[str, int]:
        return {"rows": self.rows, "entries": len(self.entries), "repeated_keys": self.repeated_keys,
                "repeated_rows": self.repeated_rows, "beyond_capacity": self.beyond_capacity,
                "labels_too_long": self.labels_too_long}


def select_records(records: Iterable[tuple[bytes, dict[str, Any]]], *, capacity: int,
                   label_bytes: int) -> Selection:
    """Which records enter the table: a fixed rule of the source alone, never of who asks or for what.

    1. A key that two or more records have: all of its records are left out. Keeping one of them
       would pick a value arbitrarily (source order is not stable, e.g. a PostgreSQL scan), and a
       lookup must not answer with a record the holder did not single out. The key reads as absent.
    2. Of the remaining keys, more than ``capacity``: the first ``capacity`` in byte order of the
       normalised key are kept, the rest left out. Byte order is the same on every build of the
       same data and does not depend on the analyst, the product's columns or the source's order.
    3. A kept key whose record's label does not fit ``label_bytes`` is left out (its slot becomes
       a dummy). Applied after step 2 so that which keys exceed the capacity depends on the key
       column alone.
    """
    _check_shape(capacity, label_bytes)
    by_key: dict[bytes, dict[str, Any] | None] = {}
    out = Selection()
    for k, record in records:
        out.rows += 1
        if k in by_key:
            if by_key[k] is not None:  # its second record: the key is repeated (step 1)
                out.repeated_keys += 1
                out.repeated_rows += 1
                by_key[k] = None
            out.repeated_rows += 1
        else:
            by_key[k] = record
    unique = sorted(k for k, r in by_key.items() if r is not None)
    out.beyond_capacity = max(0, len(unique) - capacity)  # step 2
    for k in unique[:capacity]:
        try:
            out.entries.append((k, encode_label(by_key[k], label_bytes)))  # type: ignore[arg-type]
        except LabelTooLong:  # step 3
            out.labels_too_long += 1
    return out


def build_selected(key: OprfKey, version: bytes, selection: Selection, *, capacity: int,
                   label_bytes: int) -> bytes:
    """The table of ``selection``'s entries under ``key``: exactly ``capacity`` entries.

    It evaluates the PRF ``capacity`` times whatever the rows (kept entries and dummies alike), so
    the build takes the same steps for any source of the same declared shape.
    """
    if len(version) != VERSION_BYTES:
        raise ValueError(f"a table version is {VERSION_BYTES} bytes")
    _check_shape(capacity, label_bytes)
    if len(selection.entries) > capacity:
        raise ValueError(f"more entries than the declared capacity {capacity} (select_records keeps at most it)")
    entries = [_entry(key.evaluate(k), label, version) for k, label in selection.entries]
    # Step 4: dummies by the same steps (so building costs the same whatever the row count).
    while len(entries) < capacity:
        out = key.evaluate(b"\x00dummy" + os.urandom(16))  # no normalised key starts with NUL
        entries.append(_entry(out, os.urandom(label_bytes), version))
    entries.sort()  # step 5
    return _HEAD.pack(MAGIC, version, key.public_key(), capacity, label_bytes) + b"".join(entries)


def build_table(key: OprfKey, version: bytes, records: Iterable[tuple[bytes, dict[str, Any]]], *,
                capacity: int, label_bytes: int) -> bytes:
    """The table of ``records`` (normalised key bytes, declared columns) under ``key``, ``capacity`` entries.

    Records are chosen by ``select_records`` (repeated keys, keys beyond the capacity and labels
    too long are left out, never a failure); call it and ``build_selected`` to have the counts.
    """
    return build_selected(key, version, select_records(records, capacity=capacity, label_bytes=label_bytes),
                          capacity=capacity, label_bytes=label_bytes)


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
