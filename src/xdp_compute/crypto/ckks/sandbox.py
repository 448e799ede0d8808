"""Launcher of the CKKS sandbox: one fresh, resource-limited ``python -I`` child per operation.

The child is :mod:`xdp_compute.crypto.ckks._worker`; requests and answers are frames
(:mod:`~xdp_compute.crypto.ckks._frame`). Whatever the child does — crash, hang, garbage, an
error class not on the allow-list — the caller gets a 4xx and survives. Overhead: one
interpreter start plus TenSEAL import (~0.2-0.5 s) and context parsing per call.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from xdp_compute.crypto.ckks._frame import REQUEST_MAGIC, RESPONSE_MAGIC, FrameError, pack_frame, unpack_frame
from xdp_compute.crypto.ckks.params import HeSandboxFailure, InvalidHeContext, UnsafeHeContext
from xdp_compute.errors import (
    BadRequest,
    InvalidCiphertext,
    InvalidSpec,
    PayloadTooLarge,
    XdpError,
)

_ERRORS: dict[str, type[XdpError]] = {
    cls.__name__: cls
    for cls in (
        BadRequest,
        InvalidHeContext,
        UnsafeHeContext,
        InvalidCiphertext,
        InvalidSpec,
        PayloadTooLarge,
    )
}


def _package_root() -> str:
    # The directory holding the ``xdp_compute`` package: src/xdp_compute/crypto/ckks/<this file>.
    return str(Path(__file__).resolve().parents[3])


def _worker_command() -> list[str]:
    # -I: isolated mode (no PYTHON* variables, no user site, no cwd on sys.path); the package
    # root is put on the path explicitly.
    boot = (
        f"import sys; sys.path.insert(0, {_package_root()!r}); "
        "from xdp_compute.crypto.ckks._worker import main; raise SystemExit(main())"
    )
    return [sys.executable, "-I", "-c", boot]


def run_sandboxed(
    header: dict[str, Any], blobs: Sequence[bytes], *, timeout: float, memory_bytes: int
) -> tuple[dict[str, Any], list[bytes]]:
    """Run one operation in a fresh sandbox; its answer, or the mapped error, or HeSandboxFailure."""
    request = pack_frame(
        REQUEST_MAGIC,
        {**header, "memory_bytes": memory_bytes, "cpu_seconds": math.ceil(timeout) + 5},
        blobs,
    )
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    try:
        proc = subprocess.Popen(
            _worker_command(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            close_fds=True,
        )
    except OSError as exc:
        raise XdpError(f"could not start the CKKS sandbox: {exc.strerror}") from None
    try:
        out, _ = proc.communicate(request, timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise HeSandboxFailure(
            f"HE input rejected: processing did not finish within {timeout:.0f} s"
        ) from None
    if proc.returncode != 0:
        how = f"signal {-proc.returncode}" if proc.returncode < 0 else f"exit status {proc.returncode}"
        raise HeSandboxFailure(f"HE input rejected: the parser crashed ({how})", exit=proc.returncode)
    try:
        answer, out_blobs = unpack_frame(RESPONSE_MAGIC, out)
    except FrameError:
        raise HeSandboxFailure("HE input rejected: the sandbox gave no valid answer") from None
    if not answer.get("ok"):
        error = _ERRORS.get(str(answer.get("error")), BadRequest)
        raise error(str(answer.get("detail", "HE input rejected"))[:1000])
    return answer, out_blobs


def single_blob(blobs: list[bytes]) -> bytes:
    """The one ciphertext a sandbox answer must carry."""
    if len(blobs) != 1 or not blobs[0]:
        raise HeSandboxFailure("HE input rejected: the sandbox returned no ciphertext")
    return blobs[0]
