"""The files behind a node's file source: one file's version (``FileState``), and the listed
Parquet files of a folder or glob source (``ParquetFiles``) with their hive partition keys.

A folder or glob is listed here, by the node, never by DuckDB's own globbing: the engine is then
sandboxed to exactly the files listed, each checked to resolve inside the declared folder.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from xdp_compute.domain.manifest import SourceRef
from xdp_compute.errors import XdpError


class SourceError(XdpError):
    """The node's data source cannot be opened or read (the holder must fix it; see ``xdp node validate``)."""

    status, slug, title = 503, "source-unavailable", "Data source unavailable"


@dataclass(frozen=True)
class FileState:
    """One version of a file as the OS reports it; any rewrite changes at least one field.

    ctime cannot be set from user space, so even a rewrite that restores size and mtime
    (``touch -d``) is seen; a replaced file (rename over it) has another inode.
    """

    dev: int
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, path: Path) -> FileState | None:
        """The file's state now, or None if it is not a readable regular file."""
        try:
            st = os.stat(path)
        except OSError:
            return None
        if not Path(path).is_file():
            return None
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


# What a source's files were when last looked at: (path, FileState) per file, sorted by path.
SourceState = tuple[tuple[str, FileState], ...]
_HIVE_PART = re.compile(r"^([^=]+)=([^=]*)$")
_DUCKDB_GLOB = re.compile(r"[*?\[]")


@dataclass(frozen=True)
class ParquetFiles:
    """The Parquet files a folder or glob source names now: sorted, each resolving inside ``root``.

    ``files`` are spelled under the resolved ``root`` (hive partition values are read from those
    spellings); ``hive_keys`` are the partition columns when every file sits in ``key=value``
    folders with the same keys, else ().
    """

    root: Path
    files: tuple[Path, ...]
    hive_keys: tuple[str, ...] = ()

    @classmethod
    def listing(cls, root: Path, ref: SourceRef, dataset: str) -> ParquetFiles:
        """List ``ref``'s files under ``root`` (the folder, or the glob's folder); ``SourceError``
        if there are none, one escapes ``root`` (a symbolic link), or partition layouts differ.

        A folder source takes every ``*.parquet`` below it, skipping names that begin with '.' or
        '_' (Hive's and Spark's metadata and temporary files); a glob takes what it matches
        (``**`` spans folders), hidden names excepted.
        """
        try:
            base = root.resolve(strict=True)
        except OSError:
            raise SourceError(f"dataset '{dataset}': source folder not found") from None
        if not base.is_dir():
            raise SourceError(f"dataset '{dataset}': source folder not found")
        rel: list[str] = []
        if ref.layout == "folder":
            for dirpath, dirnames, filenames in os.walk(base):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith((".", "_")))
                sub = os.path.relpath(dirpath, base)
                rel += [os.path.normpath(os.path.join(sub, f)) for f in filenames
                        if f.lower().endswith(".parquet") and not f.startswith((".", "_"))]
        else:
            rel = [r for r in glob.glob(ref.pattern, root_dir=base, recursive=True)
                   if r.lower().endswith(".parquet")]
        files = []
        for r in sorted(set(rel)):
            f = base / r
            if not f.is_file():
                continue
            # The manifest declares a folder: no match may read outside it, whatever a link says.
            if not f.resolve().is_relative_to(base):
                raise SourceError(f"dataset '{dataset}': a file of the source resolves outside its folder "
                                  "(a symbolic link?); the node reads only files inside the declared folder")
            if _DUCKDB_GLOB.search(str(f)):
                # DuckDB expands every path it is given as a glob: 'part?.parquet' would also read
                # 'part1.parquet', a second time.
                raise SourceError(f"dataset '{dataset}': a path of the source contains *, ? or [, which DuckDB "
                                  "reads as a wildcard; rename the file or folder")
            files.append(f)
        if not files:
            what = "in the source folder" if ref.layout == "folder" else "match the source glob"
            raise SourceError(f"dataset '{dataset}': no .parquet files {what}")
        return cls(base, tuple(files), _hive_keys(base, files, dataset))

    def state(self) -> SourceState | None:
        """Each file's ``FileState`` now, or None if one is gone."""
        out = []
        for f in self.files:
            st = FileState.of(f)
            if st is None:
                return None
            out.append((str(f), st))
        return tuple(out)


def _hive_keys(base: Path, files: Sequence[Path], dataset: str) -> tuple[str, ...]:
    """The partition keys every file's folders spell (``year=2024/month=01``), or () if none do."""
    layouts = set()
    for f in files:
        parts = f.relative_to(base).parts[:-1]
        matches = [_HIVE_PART.match(p) for p in parts]
        if any(matches) and not all(matches):
            layouts.add(None)
        else:
            layouts.add(tuple(m.group(1) for m in matches if m))
    if len(layouts) == 1:
        (keys,) = layouts
        if keys is not None and len({k.lower() for k in keys}) == len(keys):
            return keys
    if layouts == {()}:
        return ()
    # Keys only: the folder names' values are the holder's data.
    raise SourceError(f"dataset '{dataset}': the Parquet files are not all in one partition layout "
                      "(the same key=value folders, each key once, for every file)")
