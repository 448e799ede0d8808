"""Sandbox worker for CKKS: parses outside TenSEAL/SEAL bytes in a throw-away process.

TenSEAL deserialises with C++ code; hostile bytes might crash the interpreter (segfault,
abort) rather than raise. The gateway and node therefore never parse a context or ciphertext
from outside in their own process: :mod:`xdp_compute.crypto.ckks.sandbox` runs this module as a
fresh ``python -I`` child, writes one framed request (:mod:`~xdp_compute.crypto.ckks._frame`) to
its stdin, and reads one framed response from its stdout. A crash, a hang (killed at the
timeout) or garbage on stdout becomes a clean 400 in the caller, which survives.

This module imports only the standard library and the frame codec at import time; the
operations, and TenSEAL with them, are loaded after the resource limits are in place.
"""

from __future__ import annotations

import sys
from dataclasses import asdict
from typing import Any

from xdp_compute.crypto.ckks._frame import REQUEST_MAGIC, RESPONSE_MAGIC, pack_frame, unpack_frame


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
            pass  # a limit this platform or container does not let us set: the others still hold


def dispatch(header: dict[str, Any], blobs: list[bytes]) -> tuple[dict[str, Any], list[bytes]]:
    """Run one operation on already size-checked input (inside the sandbox)."""
    import numpy as np

    from xdp_compute.crypto.ckks.evaluate import add_in_process, score_in_process
    from xdp_compute.crypto.ckks.seal import load_context
    from xdp_compute.errors import BadRequest

    op = header.get("op")
    if op == "validate":
        _context, info = load_context(blobs[0])
        return {"info": asdict(info)}, []
    if op == "score":
        groups, d = header["shape"]
        features = np.frombuffer(blobs[2], dtype="<f8").reshape(groups, d)
        noise = np.frombuffer(blobs[3], dtype="<f8").reshape(groups)
        payload = score_in_process(
            blobs[0], header["weights_header"], blobs[1], features, noise, float(header["flood_sigma"])
        )
        return {}, [payload]
    if op == "add":
        payload = add_in_process(blobs[0], header["headers"], blobs[1:])
        return {}, [payload]
    raise BadRequest(f"unknown sandbox operation {op!r}")


def main() -> int:
    """Read one request from stdin, run it, write one response to stdout; exit 0 unless killed."""
    data = sys.stdin.buffer.read()
    try:
        header, blobs = unpack_frame(REQUEST_MAGIC, data)
        _limit_resources(int(header.get("memory_bytes", 0)), int(header.get("cpu_seconds", 0)))
        result, out_blobs = dispatch(header, blobs)
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
