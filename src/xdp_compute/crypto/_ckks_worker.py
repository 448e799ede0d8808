"""Sandbox worker for CKKS: parses outside TenSEAL/SEAL bytes in a throw-away process.

TenSEAL deserialises with C++ code; hostile bytes might crash the interpreter (segfault,
abort) rather than raise. The gateway and node therefore never parse a context or ciphertext
from outside in their own process: :mod:`xdp_compute.crypto.ckks` runs this module as a fresh
``python -I`` child, writes one framed request to its stdin, and reads one framed response from
its stdout. A crash, a hang (killed at the timeout) or garbage on stdout becomes a clean 400 in
the caller, which survives.

Frames (both directions)::

    magic (4 bytes) | u32 big-endian header length | JSON header | blob 0 | blob 1 | ...

The header's ``blobs`` member lists the blob lengths. Responses carry ``{"ok": true, ...}`` or
``{"ok": false, "error": <class name>, "detail": <text>}``; the parent maps the class name
through an allow-list and never unpickles anything from the child.

This module imports only the standard library at import time; TenSEAL is loaded after the
resource limits are in place.
"""

from __future__ import annotations

import json
import struct
import sys
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


def _limit_resources(memory_bytes: int, cpu_seconds: int) -> None:
    try:
        import resource
    except ImportError:  # not POSIX: rely on the parent's timeout
        return
    limits = [
        (resource.RLIMIT_CORE, 0),  # a crash must not leave core files behind
        (resource.RLIMIT_CPU, max(1, cpu_seconds)),
        (resource.RLIMIT_AS, memory_bytes),
        (resource.RLIMIT_FSIZE, 256 << 20),  # temporary ciphertext files only
    ]
    for which, value in limits:
        if value <= 0:
            continue
        try:
            _soft, hard = resource.getrlimit(which)
            cap = value if hard == resource.RLIM_INFINITY else min(value, hard)
            resource.setrlimit(which, (cap, hard if hard != resource.RLIM_INFINITY else cap))
        except (ValueError, OSError):
            pass


def main() -> int:
    """Read one request from stdin, run it, write one response to stdout; exit 0 unless killed."""
    data = sys.stdin.buffer.read()
    try:
        header, blobs = unpack_frame(REQUEST_MAGIC, data)
        _limit_resources(int(header.get("memory_bytes", 0)), int(header.get("cpu_seconds", 0)))
        from xdp_compute.crypto import ckks

        result, out_blobs = ckks._worker_dispatch(header, blobs)
        response = pack_frame(RESPONSE_MAGIC, {"ok": True, **result}, out_blobs)
    except MemoryError:
        response = pack_frame(
            RESPONSE_MAGIC, {"ok": False, "error": "PayloadTooLarge", "detail": "out of memory"}
        )
    except Exception as exc:  # noqa: BLE001  (every failure becomes a framed answer; the parent maps it)
        from xdp_compute.errors import XdpError

        if isinstance(exc, XdpError):
            error, detail = type(exc).__name__, exc.detail
        else:
            error, detail = "BadRequest", f"{type(exc).__name__}: {exc}"
        response = pack_frame(RESPONSE_MAGIC, {"ok": False, "error": error, "detail": detail[:1000]})
    sys.stdout.buffer.write(response)
    sys.stdout.buffer.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
