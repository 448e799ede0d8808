"""Owner-only secret files (private key material) for the HE key helpers.

A secret file is created with mode 0600 from the first byte (``os.open`` with ``O_CREAT |
O_EXCL``), so no window exists in which another user could open it, and a file that group or
others may read is refused on load: the key may already have leaked, and silently using it would
hide that. POSIX only; on platforms without POSIX modes the mode check is skipped.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from xdp_compute.errors import Conflict, InvalidKey

__all__ = ["read_secret_file", "write_secret_file"]

_POSIX = os.name == "posix"


def write_secret_file(path: str | os.PathLike[str], data: bytes, *, overwrite: bool = False) -> None:
    """Write ``data`` to a new file readable and writable by the owner only (0600).

    Refuses an existing path (``Conflict``) unless ``overwrite``; an overwrite goes through a
    fresh 0600 temporary file and an atomic rename, so the old key is never half-replaced.
    """
    target = Path(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp") if overwrite else target
    try:
        fd = os.open(tmp, flags, 0o600)
    except FileExistsError:
        raise Conflict(f"refusing to overwrite existing key file {target}") from None
    try:
        if _POSIX:
            # The umask can only remove bits; fchmod makes the mode exactly 0600 either way.
            os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if overwrite:
        os.replace(tmp, target)


def read_secret_file(path: str | os.PathLike[str], *, max_bytes: int) -> bytes:
    """Read a secret file, refusing one that group or others can access (``InvalidKey``)."""
    target = Path(path)
    try:
        fd = os.open(target, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        raise InvalidKey(f"key file {target} does not exist") from None
    except OSError as exc:  # e.g. ELOOP from O_NOFOLLOW on a symlink
        raise InvalidKey(f"cannot open key file {target}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise InvalidKey(f"key file {target} is not a regular file")
        if _POSIX and st.st_mode & 0o077:
            raise InvalidKey(
                f"key file {target} has mode {stat.S_IMODE(st.st_mode):04o}: it is readable by group or "
                "others; the key may be exposed. Restrict it with `chmod 600` (or rotate the key)."
            )
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise InvalidKey(f"key file {target} is larger than {max_bytes} bytes")
    return data
