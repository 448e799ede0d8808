"""Frames between the CKKS sandbox and its parent: one JSON header, then binary blobs.

Frames (both directions)::

    magic (4 bytes) | u32 big-endian header length | JSON header | blob 0 | blob 1 | ...

The header's ``blobs`` member lists the blob lengths. Responses carry ``{"ok": true, ...}`` or
``{"ok": false, "error": <class name>, "detail": <text>}``; the parent maps the class name
through an allow-list and never unpickles anything from the child. Standard library only, so
the worker can read its request before it loads anything else.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from typing import Any

REQUEST_MAGIC = b"XCKQ"
RESPONSE_MAGIC = b"XCKR"
_MAX_HEADER = 1 << 20


class FrameError(ValueError):
    """A frame is malformed (bad magic, truncated, inconsistent lengths)."""


def pack_frame(magic: bytes, header: dict[str, Any], blobs: Sequence[bytes] = ()) -> bytes:
    """Frame a JSON header and binary blobs (their lengths go into ``header["blobs"]``)."""
    head = dict(header)
    head["blobs"] = [len(b) for b in blobs]
    raw = json.dumps(head, separators=(",", ":")).encode()
    return b"".join([magic, struct.pack(">I", len(raw)), raw, *blobs])


def unpack_frame(magic: bytes, data: bytes) -> tuple[dict[str, Any], list[bytes]]:
    """Inverse of :func:`pack_frame`; raises :class:`FrameError` on any inconsistency."""
    view = memoryview(data)
    if len(view) < 8 or bytes(view[:4]) != magic:
        raise FrameError("bad magic or truncated frame")
    (head_len,) = struct.unpack_from(">I", view, 4)
    if head_len > _MAX_HEADER or 8 + head_len > len(view):
        raise FrameError("frame header truncated or too long")
    try:
        header = json.loads(bytes(view[8 : 8 + head_len]))
    except (ValueError, UnicodeDecodeError):
        raise FrameError("frame header is not JSON") from None
    lengths = header.get("blobs") if isinstance(header, dict) else None
    if not isinstance(lengths, list) or not all(isinstance(n, int) and n >= 0 for n in lengths):
        raise FrameError("frame header lacks blob lengths")
    pos = 8 + head_len
    if pos + sum(lengths) != len(view):
        raise FrameError("frame blobs truncated or followed by trailing bytes")
    blobs = []
    for n in lengths:
        blobs.append(bytes(view[pos : pos + n]))
        pos += n
    return header, blobs
