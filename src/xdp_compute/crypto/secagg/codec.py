"""Wire framing of secure-aggregation messages: a bounds-checked writer and reader.

Format (all integers big-endian except vector words, which are little-endian uint64)::

    frame  = "XSA" version:u8 type:u8 session:blob16 body      (no trailing bytes allowed)
    blob16 = len:u16 bytes        str16 = blob16 holding UTF-8
    vector = m:u32 then 8*m bytes

Decoding checks every length against the bytes present and the limits in
:mod:`~xdp_compute.crypto.secagg.config` before allocating, so garbage raises
:class:`~xdp_compute.crypto.secagg.config.MalformedMessage` (a ``BadRequest``), never crashes.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import TypeVar

import numpy as np

from xdp_compute.crypto.fixedpoint import U64Vector
from xdp_compute.crypto.secagg.config import (
    MAX_NODE_ID_BYTES,
    MAX_PARTICIPANTS,
    MAX_SESSION_ID_BYTES,
    MAX_VECTOR_LENGTH,
    MalformedMessage,
)
from xdp_compute.crypto.secagg.keys import KEY_BYTES

MAGIC = b"XSA"
VERSION = 1


class Writer:
    """Builds one frame: header first, then the body through the typed writers."""

    def __init__(self, msg_type: int, session_id: bytes) -> None:
        self._parts: list[bytes] = [MAGIC, bytes([VERSION, msg_type])]
        self.blob16(session_id)
        self._head = len(self._parts)

    def u16(self, v: int) -> None:
        self._parts.append(struct.pack(">H", v))

    def u32(self, v: int) -> None:
        self._parts.append(struct.pack(">I", v))

    def blob16(self, b: bytes) -> None:
        self._parts.append(len(b).to_bytes(2, "big") + bytes(b))

    def str16(self, s: str) -> None:
        b = s.encode()
        self._parts.append(len(b).to_bytes(2, "big") + b)

    def raw(self, b: bytes) -> None:
        self._parts.append(b)

    def vector(self, v: U64Vector) -> None:
        self.u32(v.shape[0])
        self._parts.append(np.ascontiguousarray(v, dtype="<u8").tobytes())

    def getvalue(self) -> bytes:
        return b"".join(self._parts)

    def body(self) -> bytes:
        """What was written after the header (to splice into another frame with ``raw``)."""
        return b"".join(self._parts[self._head :])


class Reader:
    """Parses one frame; every read is checked against the bytes left and the session limits."""

    def __init__(self, data: object, msg_type: int, name: str) -> None:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise MalformedMessage(f"{name}: expected bytes, got {type(data).__name__}")
        self._b = bytes(data)
        self._pos = 0
        self._name = name
        if self.take(3) != MAGIC:
            raise MalformedMessage(f"{name}: not a secure-aggregation message")
        version, got_type = self.take(2)
        if version != VERSION:
            raise MalformedMessage(f"{name}: unsupported version {version}")
        if got_type != msg_type:
            raise MalformedMessage(f"{name}: message type {got_type} is not {msg_type}")
        self.session_id = self.blob16(MAX_SESSION_ID_BYTES, "session_id")
        if not self.session_id:
            raise MalformedMessage(f"{name}: empty session_id")

    @property
    def remaining(self) -> int:
        return len(self._b) - self._pos

    @property
    def position(self) -> int:
        """Bytes read so far (the frame's offset of the next read)."""
        return self._pos

    def skip_if_next(self, data: bytes) -> bool:
        """Consume ``data`` if the frame continues with exactly these bytes (one memcmp)."""
        if data and self._b.startswith(data, self._pos):
            self._pos += len(data)
            return True
        return False

    def take(self, k: int) -> bytes:
        pos = self._pos
        if pos + k > len(self._b):
            raise MalformedMessage(f"{self._name}: truncated message")
        self._pos = pos + k
        return self._b[pos : pos + k]

    def u16(self) -> int:
        return int.from_bytes(self.take(2), "big")

    def u32(self) -> int:
        return int(struct.unpack(">I", self.take(4))[0])

    def blob16(self, limit: int, what: str) -> bytes:
        k = self.u16()
        if k > limit:
            raise MalformedMessage(f"{self._name}: {what} longer than {limit} bytes")
        return self.take(k)

    def node_id(self, what: str = "node id") -> str:
        raw = self.blob16(MAX_NODE_ID_BYTES, what)
        try:
            s = raw.decode()
        except UnicodeDecodeError:
            raise MalformedMessage(f"{self._name}: {what} is not UTF-8") from None
        if not s:
            raise MalformedMessage(f"{self._name}: empty {what}")
        return s

    def node_ids(self, count: int, what: str = "node id") -> list[str]:
        """``count`` node ids in a row (str16 each), read in one tight loop: survivor lists carry
        up to n of them, and a client reads U3 twice per session."""
        buf, pos, end = self._b, self._pos, len(self._b)
        raw: list[bytes] = []
        for _ in range(count):
            if pos + 2 > end:
                raise MalformedMessage(f"{self._name}: truncated message")
            k = (buf[pos] << 8) | buf[pos + 1]
            pos += 2
            if not 0 < k <= MAX_NODE_ID_BYTES:
                raise MalformedMessage(f"{self._name}: empty {what}" if k == 0
                                       else f"{self._name}: {what} longer than {MAX_NODE_ID_BYTES} bytes")
            if pos + k > end:
                raise MalformedMessage(f"{self._name}: truncated message")
            raw.append(buf[pos : pos + k])
            pos += k
        try:
            out = [r.decode() for r in raw]
        except UnicodeDecodeError:
            raise MalformedMessage(f"{self._name}: {what} is not UTF-8") from None
        self._pos = pos
        return out

    def count(self, min_entry_bytes: int, what: str) -> int:
        c = self.u32()
        if c > MAX_PARTICIPANTS or c * min_entry_bytes > self.remaining:
            raise MalformedMessage(f"{self._name}: implausible {what} count {c}")
        return c

    def vector(self) -> U64Vector:
        m = self.u32()
        if m > MAX_VECTOR_LENGTH:
            raise MalformedMessage(f"{self._name}: vector of {m} words exceeds {MAX_VECTOR_LENGTH}")
        if 8 * m > self.remaining:
            raise MalformedMessage(f"{self._name}: truncated vector")
        # Zero-copy, read-only view of the received bytes; consumers never write into it.
        arr = np.frombuffer(self._b, dtype="<u8", count=m, offset=self._pos).astype(np.uint64, copy=False)
        self._pos += 8 * m
        return arr

    def end(self) -> None:
        if self.remaining:
            raise MalformedMessage(f"{self._name}: {self.remaining} trailing bytes")


M = TypeVar("M")


def unique_map(pairs: Iterable[tuple[str, M]], name: str, what: str) -> dict[str, M]:
    """A dict from decoded (node, value) pairs; a node listed twice is a MalformedMessage."""
    out: dict[str, M] = {}
    for k, v in pairs:
        if k in out:
            raise MalformedMessage(f"{name}: duplicate {what} {k!r}")
        out[k] = v
    return out


def check_key(name: str, key: object, what: str) -> bytes:
    """``key`` as bytes if it is a raw X25519 public key (32 bytes), else MalformedMessage."""
    if not isinstance(key, (bytes, bytearray)) or len(key) != KEY_BYTES:
        raise MalformedMessage(f"{name}: {what} must be {KEY_BYTES} bytes")
    return bytes(key)
