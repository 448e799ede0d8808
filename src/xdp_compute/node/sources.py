"""A node's own data sources, and the node-local part of a federated DP SQL query.

``open_source(manifest, dataset)`` opens the dataset's declared source on the holder's own engine:

* CSV / Parquet: an in-process DuckDB sandboxed to that one file (``allowed_paths`` +
  ``enable_external_access = false`` + ``lock_configuration``), extension auto-install and
  auto-load off — nothing is downloaded at run time.
* A folder or glob of Parquet files (``ParquetFiles``): the node lists the files itself (never
  DuckDB's own globbing, which the sandbox forbids), checks each resolves inside the folder the
  manifest declares, and sandboxes the engine to exactly those files. Hive partition folders
  (``year=2024/month=01/part-0.parquet``) become text columns, spelled as in the folder names. CSV is read with ``all_varchar``: a holder's
  file may hold bad values, and the generated SQL casts with TRY_CAST so a bad value is a NULL
  (and is counted by ``validate_source``) instead of failing the whole query.
* PostgreSQL (``source = "postgresql://..."`` plus ``table``): psycopg 3, read-only transactions.

``SourceCache`` keeps one sandboxed DuckDB per dataset file in the node's task worker, so a query
does not pay for a fresh engine (~20 ms) and a DESCRIBE each time (issue #13). A CSV file is
loaded once into a table of that same sandboxed engine, its declared numeric and bool columns
converted with the TRY_CAST the pushdown SQL applies anyway (a bad cell is a NULL, as before),
and reloaded when the file changes (``FileState``: device, inode, size, mtime, ctime). A folder or
glob source has changed when its set of files or any file's ``FileState`` has: a new engine is
sandboxed to the new set (the old one closes once its last query is done).

``run_local_query(plan, manifest, dataset)`` re-validates the plan against this node's manifest,
runs the pushdown SQL and returns the node's fixed-point vector (cell-major, uint64 two's
complement), ready for secure aggregation and noise.

Engine error messages are never passed on: DuckDB's CSV errors quote the offending line, so
``SourceError`` names the dataset and the error class only.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import numpy as np
from sqlglot import exp

from xdp_compute.crypto.fixedpoint import FixedPointOverflow
from xdp_compute.domain.manifest import ColumnSpec, DatasetSpec, Manifest, SourceRef
from xdp_compute.errors import XdpError
from xdp_compute.query.plan import (
    HEADROOM_BITS,
    QueryPlan,
    encode_fixed,
    to_ring,
    validate_plan_for,
)
from xdp_compute.query.pushdown import local_sql


class SourceError(XdpError):
    """The node's data source cannot be opened or read (the holder must fix it; see ``xdp node validate``)."""

    status, slug, title = 503, "source-unavailable", "Data source unavailable"


def _sql_url(source: str) -> bool:
    return source.startswith(("postgresql://", "postgres://"))


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


class LocalSource(ABC):
    """One dataset's relation on the holder's engine."""

    dialect: str
    kind: str

    @abstractmethod
    def execute(self, sql: str) -> list[tuple[Any, ...]]:
        """Run ``sql`` (generated by this package) and return all rows; ``SourceError`` on failure."""

    @abstractmethod
    def relation_sql(self) -> str:
        """A FROM-able relation in ``dialect`` (e.g. ``read_csv(...)`` or ``"table"``)."""

    @abstractmethod
    def column_names(self) -> list[str]:
        """The relation's actual column names, in order."""

    def close(self) -> None:
        """Release the engine connection."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


class DuckDBSource(LocalSource):
    """CSV or Parquet file, or a set of Parquet files (``files``), read by an in-process, sandboxed DuckDB.

    Safe to share between threads: ``execute`` serialises statements on the connection (DuckDB
    connections must not be used by two threads at once), and a ``snapshot`` runs each on a
    cursor of its own (which shares the database and its locked sandbox settings). ``snapshot`` gives one query a consistent relation to read; for a CSV
    file no larger than ``materialise_max_bytes`` that relation is a table loaded once per
    version of the file (``FileState``).
    """

    dialect = "duckdb"

    def __init__(self, path: Path, dataset: str, *, skip_malformed_lines: bool = False,
                 materialise_max_bytes: int = 0, files: ParquetFiles | None = None) -> None:
        import duckdb

        self.files = files
        self.path = files.root if files is not None else Path(path).resolve()
        self.dataset = dataset
        suffix = ".parquet" if files is not None else self.path.suffix.lower()
        if suffix not in (".csv", ".parquet"):
            raise SourceError(f"dataset '{dataset}': unsupported source file type {suffix or '(none)'!r}")
        self.kind = suffix[1:]
        self.skip_malformed_lines = skip_malformed_lines
        self.materialise_max_bytes = materialise_max_bytes
        self._duckdb = duckdb
        self._lock = threading.Lock()  # the cached names and tables
        self._exec_lock = threading.Lock()  # the connection itself
        self._names: tuple[SourceState, list[str]] | None = None
        self._table: _LoadedTable | None = None
        self._retired: list[_LoadedTable] = []
        self._generations = itertools.count(1)
        self._users = 0  # open snapshots, and a SourceCache's hold while it takes one
        self._retired_source = False  # superseded by a new set of files: close at the last release
        self._con = duckdb.connect(":memory:", config={
            "autoinstall_known_extensions": False,
            "autoload_known_extensions": False,
        })
        try:
            # DuckDB 2.0 pushes TRY_CAST into the CSV reader as a strict cast, so one bad cell
            # fails the whole scan (duckdb/duckdb#23818); our SQL relies on TRY_CAST -> NULL.
            self._con.execute("SET disabled_optimizers = 'type_pushdown'")
        except duckdb.Error:  # older DuckDB: no such optimizer, and no such bug
            pass
        # Sandbox: this connection may read the declared file (or the listed files) and nothing
        # else. The settings are the database's, so every cursor of this connection has them too.
        allowed = [str(f) for f in files.files] if files is not None else [str(self.path)]
        self._con.execute("SET allowed_paths = ?", [allowed])
        self._con.execute("SET enable_external_access = false")
        self._con.execute("SET lock_configuration = true")

    def relation_sql(self, *, extra: dict[str, bool] | None = None) -> str:
        path = exp.Literal.string(str(self.path))
        if self.files is not None:
            # Named files, never a glob: the sandbox allows exactly these. Partition values stay
            # text as the folder names spell them ('01' is not 1), as CSV cells do (all_varchar).
            listed = exp.Array(expressions=[exp.Literal.string(str(f)) for f in self.files.files])
            hive = {"hive_partitioning": bool(self.files.hive_keys), "hive_types_autocast": False}
            node: exp.Expression = exp.Anonymous(this="read_parquet", expressions=[listed] + [
                exp.EQ(this=exp.column(k), expression=exp.Boolean(this=v)) for k, v in hive.items()])
        elif self.kind == "parquet":
            node = exp.Anonymous(this="read_parquet", expressions=[path])
        else:
            # A fixed dialect (RFC 4180: comma, double quote) instead of sniffing: on a small or
            # damaged file the sniffer can silently pick another delimiter and read one column.
            opts: dict[str, bool | str] = {"header": True, "all_varchar": True, "delim": ",", "quote": '"',
                                           "escape": '"'}
            if self.skip_malformed_lines:
                opts["ignore_errors"] = True
            opts.update(extra or {})
            node = exp.Anonymous(this="read_csv", expressions=[path] + [
                exp.EQ(this=exp.column(k), expression=exp.Boolean(this=v) if isinstance(v, bool)
                       else exp.Literal.string(v)) for k, v in opts.items()])
        return node.sql(dialect="duckdb")

    def execute(self, sql: str) -> list[tuple[Any, ...]]:
        """Run ``sql`` on the source's own connection (one statement at a time; its temporary
        tables, such as ``reject_errors``, stay visible to the next statement)."""
        with self._exec_lock:
            return self._run(self._con, sql)

    def execute_concurrently(self, sql: str) -> list[tuple[Any, ...]]:
        """Run ``sql`` on a cursor of its own, alongside other statements on this source."""
        try:
            cur = self._con.cursor()
        except self._duckdb.Error:
            raise SourceError(f"dataset '{self.dataset}': the {self.kind} source is closed") from None
        try:
            return self._run(cur, sql)
        finally:
            cur.close()

    def state(self) -> SourceState | None:
        """The source's file(s) as the OS reports them now; None if one is gone."""
        if self.files is not None:
            return self.files.state()
        st = FileState.of(self.path)
        return None if st is None else ((str(self.path), st),)

    def present(self) -> bool:
        """Every file this engine reads is still there."""
        if self.files is not None:
            return all(f.is_file() for f in self.files.files)
        return self.path.is_file()

    def _run(self, con: Any, sql: str) -> list[tuple[Any, ...]]:
        if not self.present():
            raise SourceError(f"dataset '{self.dataset}': source file not found")
        try:
            return list(con.execute(sql).fetchall())
        except self._duckdb.Error as e:
            # The message may quote a line of the file: pass on the error class only.
            raise SourceError(f"dataset '{self.dataset}': the {self.kind} source could not be read "
                              f"({type(e).__name__}); run the node's source validation") from None

    def column_names(self) -> list[str]:
        # The file's state is taken before DESCRIBE: if the file changes in between, the names
        # are filed under the older state and the next call describes the file again.
        state = self.state()
        with self._lock:
            if state is not None and self._names is not None and self._names[0] == state:
                return list(self._names[1])
        names = [str(r[0]) for r in self.execute(f"DESCRIBE SELECT * FROM {self.relation_sql()}")]
        if state is not None:
            with self._lock:
                self._names = (state, names)
        return list(names)

    def snapshot(self, columns: Sequence[ColumnSpec]) -> LocalSource:
        """A view of the file as it is now, for one query; close it when the query is done.

        A CSV file of at most ``materialise_max_bytes`` is served from a table loaded once per
        version of the file, holding the declared ``columns`` the file has (numeric as DOUBLE,
        bool as BOOLEAN, each by TRY_CAST; the rest as text). The pushdown SQL applies the very
        same TRY_CAST to them, so the result is the one a scan of the file would give.
        """
        state = self.state()
        if state is None:
            raise SourceError(f"dataset '{self.dataset}': source file not found")
        if self.kind != "csv" or sum(st.size for _, st in state) > self.materialise_max_bytes:
            return _Snapshot(self, self.relation_sql(), self.column_names(), lambda: None)
        with self._lock:
            table = self._table if self._table is not None and self._table.state == state else None
            if table is None:
                # Loading under the lock: queries that arrive meanwhile wait for this one load.
                table = self._load(state, columns)
                if self._table is not None:
                    self._retired.append(self._table)
                self._table = table
                self._drop_retired()
            table.users += 1
        return _Snapshot(self, table.relation, list(table.columns), lambda: self._release(table))

    def _load(self, state: SourceState, columns: Sequence[ColumnSpec]) -> _LoadedTable:
        """CREATE TABLE from the file (caller holds ``_lock``); ``state`` was taken before reading."""
        names = [str(r[0]) for r in self.execute(f"DESCRIBE SELECT * FROM {self.relation_sql()}")]
        actual = {n.lower(): n for n in names}  # the spelling ``column_map_for`` would pick
        select: list[exp.Expression] = []
        for spec in columns:
            a = actual.get(spec.name.lower())
            if a is None:
                continue
            col: exp.Expression = exp.column(a, quoted=True)
            if spec.numeric:
                col = exp.TryCast(this=col, to=exp.DataType.build("DOUBLE"))
            elif spec.type == "bool":
                col = exp.TryCast(this=col, to=exp.DataType.build("BOOLEAN"))
            select.append(exp.alias_(col, a, quoted=True))
        if not select:  # nothing declared is in the file: keep COUNT(*) meaningful
            select.append(exp.alias_(exp.Literal.number(1), "__xdp_row", quoted=True))
        name = f"xdp_source_v{next(self._generations)}"
        relation = exp.to_identifier(name, quoted=True).sql(dialect="duckdb")
        exprs = ", ".join(e.sql(dialect="duckdb") for e in select)
        self.execute(f"CREATE TABLE {relation} AS SELECT {exprs} FROM {self.relation_sql()}")
        kept = [e.alias for e in select if e.alias != "__xdp_row"]
        return _LoadedTable(relation=relation, state=state, columns=tuple(kept))

    def _release(self, table: _LoadedTable) -> None:
        with self._lock:
            table.users -= 1
            self._drop_retired()

    def _drop_retired(self) -> None:
        """Drop superseded tables no query still reads (caller holds ``_lock``)."""
        for t in [t for t in self._retired if t.users == 0]:
            self._retired.remove(t)
            with contextlib.suppress(SourceError):
                self.execute(f"DROP TABLE IF EXISTS {t.relation}")

    def hold(self) -> None:
        """Keep this engine open until the matching ``release_hold`` (a query is about to use it)."""
        with self._lock:
            self._users += 1

    def release_hold(self) -> None:
        with self._lock:
            self._users -= 1
            close = self._retired_source and self._users == 0
        if close:
            self.close()

    def retire(self) -> None:
        """Close once no query holds this engine (its set of files was superseded)."""
        with self._lock:
            self._retired_source = True
            close = self._users == 0
        if close:
            self.close()

    def close(self) -> None:
        self._con.close()


@dataclass
class _LoadedTable:
    """One version of a CSV file loaded into the source's engine, and how many queries read it."""

    relation: str
    state: SourceState
    columns: tuple[str, ...]
    users: int = 0


class _Snapshot(LocalSource):
    """One query's view of a shared DuckDB source: a fixed relation and its columns."""

    dialect = "duckdb"

    def __init__(self, owner: DuckDBSource, relation: str, columns: list[str],
                 release: Callable[[], None]) -> None:
        self.kind = owner.kind
        self._owner, self._relation, self._columns, self._release = owner, relation, columns, release
        self._closed = False

    def execute(self, sql: str) -> list[tuple[Any, ...]]:
        return self._owner.execute_concurrently(sql)

    def relation_sql(self) -> str:
        return self._relation

    def column_names(self) -> list[str]:
        return list(self._columns)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._release()


class PostgresSource(LocalSource):
    """A table in the holder's PostgreSQL, queried by pushdown SQL in read-only transactions."""

    dialect = "postgres"
    kind = "postgresql"

    def __init__(self, url: str, table: str, dataset: str, *, connect_timeout: int = 10,
                 statement_timeout_ms: int | None = 600_000) -> None:
        try:
            import psycopg
        except ImportError:
            raise SourceError(f"dataset '{dataset}': PostgreSQL sources need psycopg "
                              "(pip install 'xdp-compute[postgres]')") from None
        self._psycopg = psycopg
        self.dataset = dataset
        try:
            self._conn = psycopg.connect(url, connect_timeout=connect_timeout)
            self._conn.read_only = True
            with self._conn.cursor() as cur:
                # sqlglot quotes literals the standard way (doubling quotes); make sure the server
                # reads a backslash as a plain character, whatever its configuration.
                cur.execute("SET standard_conforming_strings = on")
                if statement_timeout_ms is not None:
                    cur.execute(f"SET statement_timeout = {int(statement_timeout_ms)}")
            self._conn.commit()
        except psycopg.Error as e:
            # The message may carry host names or credentials: class only.
            raise SourceError(f"dataset '{dataset}': cannot connect to the PostgreSQL source "
                              f"({type(e).__name__})") from None
        self.table = self._resolve_table(table)

    def _resolve_table(self, table: str) -> str:
        for candidate in (table, table.lower()):
            quoted = exp.to_identifier(candidate, quoted=True).sql(dialect="postgres")
            rows = self._query("SELECT to_regclass(%s) IS NOT NULL", (quoted,))
            if rows and rows[0][0]:
                return candidate
        raise SourceError(f"dataset '{self.dataset}': table '{table}' not found in the PostgreSQL source")

    def _query(self, sql: str, params: tuple[Any, ...] | None = None) -> list[tuple[Any, ...]]:
        try:
            with self._conn.cursor() as cur:
                cur.execute(sql, params)
                rows = list(cur.fetchall())
            return rows
        except self._psycopg.Error as e:
            raise SourceError(f"dataset '{self.dataset}': the PostgreSQL source could not be read "
                              f"({type(e).__name__}); run the node's source validation") from None
        finally:
            if not self._conn.closed:
                self._conn.rollback()

    def execute(self, sql: str) -> list[tuple[Any, ...]]:
        return self._query(sql)

    def write_privileges(self) -> list[str]:
        """What the connecting role could change besides reading: table privileges it holds
        beyond SELECT, and superuser. Every session is read-only regardless, but a node should
        connect with a role that cannot write at all (README: a read-only role)."""
        rows = self._query(
            "SELECT has_table_privilege(to_regclass(%s), 'INSERT'), has_table_privilege(to_regclass(%s), 'UPDATE'), "
            "has_table_privilege(to_regclass(%s), 'DELETE'), has_table_privilege(to_regclass(%s), 'TRUNCATE'), "
            "(SELECT rolsuper FROM pg_roles WHERE rolname = current_user)",
            (self.relation_sql(),) * 4)
        flags = rows[0] if rows else ()
        names = ["INSERT", "UPDATE", "DELETE", "TRUNCATE", "superuser"]
        return [n for n, f in zip(names, flags, strict=False) if f]

    def relation_sql(self) -> str:
        return exp.to_identifier(self.table, quoted=True).sql(dialect="postgres")

    def column_types(self) -> list[tuple[str, str]]:
        """(name, PostgreSQL type) of each column of the table, in order."""
        return [(str(n), str(t)) for n, t in self._query(
            "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
            "WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
            (self.relation_sql(),))]

    def column_names(self) -> list[str]:
        return [n for n, _ in self.column_types()]

    def close(self) -> None:
        self._conn.close()


def open_source(manifest: Manifest, dataset: DatasetSpec, *, skip_malformed_lines: bool = False) -> LocalSource:
    """Open ``dataset``'s declared source (path resolved against the manifest's folder).

    ``skip_malformed_lines`` makes DuckDB skip CSV lines it cannot parse instead of failing the
    query (``validate_source`` counts them either way). Raises ``SourceError``.
    """
    if _sql_url(dataset.source):
        if not dataset.table:
            raise SourceError(f"dataset '{dataset.name}': a PostgreSQL source needs a table")
        return PostgresSource(dataset.source, dataset.table, dataset.name)
    if dataset.is_sql:
        scheme = dataset.source.split("://", 1)[0]
        raise SourceError(f"dataset '{dataset.name}': unsupported database URL scheme '{scheme}' "
                          "(use postgresql://)")
    files = parquet_files(manifest, dataset)
    return DuckDBSource(manifest.source_path(dataset), dataset.name, skip_malformed_lines=skip_malformed_lines,
                        files=files)


def parquet_files(manifest: Manifest, dataset: DatasetSpec) -> ParquetFiles | None:
    """The files of a folder or glob source as they are now (None for one file); ``SourceError``."""
    ref = dataset.source_ref
    if ref.layout not in ("folder", "glob"):
        return None
    root = Path(ref.root)
    return ParquetFiles.listing(root if root.is_absolute() else manifest.base_dir / root, ref, dataset.name)


# A CSV file up to this size is loaded into the node's engine once per version of the file; a
# larger one is scanned by every query (its table could crowd the holder's memory).
DEFAULT_MATERIALISE_MAX_BYTES = 256 * 2**20


class SourceCache:
    """The node's open DuckDB sources, one per dataset file, kept across queries.

    Keyed by the file's resolved path (a re-pointed symlink is a new entry, sandboxed to its new
    target), the dataset's declared columns and ``skip_malformed_lines``. A folder or glob source is
    keyed by its resolved folder and pattern; each ``open`` lists its files, and a new set of files
    gets a new engine sandboxed to it (the old one closes after its last query). A PostgreSQL
    source is not kept: each ``open`` connects afresh, as ``open_source`` does. Thread-safe.
    """

    def __init__(self, *, materialise_max_bytes: int = DEFAULT_MATERIALISE_MAX_BYTES) -> None:
        self.materialise_max_bytes = materialise_max_bytes
        self._lock = threading.Lock()
        self._sources: dict[tuple[str, tuple[tuple[str, str], ...], bool], DuckDBSource] = {}

    @contextlib.contextmanager
    def open(self, manifest: Manifest, dataset: DatasetSpec, *,
             skip_malformed_lines: bool = False) -> Iterator[LocalSource]:
        """``dataset``'s source as it is now, for the ``with`` block; ``SourceError`` as ``open_source``."""
        if dataset.is_sql:
            with open_source(manifest, dataset, skip_malformed_lines=skip_malformed_lines) as src:
                yield src
            return
        files = parquet_files(manifest, dataset)
        if files is None:
            path = manifest.source_path(dataset).resolve()
            where = str(path)
        else:
            path = files.root
            where = f"{files.root}{os.sep}{dataset.source_ref.pattern or '**'}"
        key = (where, tuple((c.name.lower(), c.type) for c in dataset.columns), skip_malformed_lines)
        with self._lock:
            shared = self._sources.get(key)
            if shared is not None and shared.files != files:
                shared.retire()  # another set of files: its sandbox does not cover the new set
                shared = None
            if shared is None:
                shared = DuckDBSource(path, dataset.name, skip_malformed_lines=skip_malformed_lines,
                                      materialise_max_bytes=self.materialise_max_bytes, files=files)
                self._sources[key] = shared
            shared.hold()
        try:
            snap = shared.snapshot(dataset.columns)
            try:
                yield snap
            finally:
                snap.close()
        finally:
            shared.release_hold()

    def close(self) -> None:
        """Close every kept engine (in-flight queries must have finished)."""
        with self._lock:
            sources, self._sources = list(self._sources.values()), {}
        for src in sources:
            src.retire()


def column_map_for(plan: QueryPlan, source: LocalSource) -> dict[str, str]:
    """Declared name -> the source's spelling for every column the plan uses; ``SourceError`` if missing."""
    actual = {n.lower(): n for n in source.column_names()}
    out: dict[str, str] = {}
    missing = []
    for c in plan.columns:
        if c.name.lower() in actual:
            out[c.name] = actual[c.name.lower()]
        else:
            missing.append(c.name)
    if missing:
        raise SourceError(f"dataset '{plan.dataset}': column {', '.join(repr(m) for m in missing)} missing "
                          "from the source")
    return out


def encode_rows(plan: QueryPlan, rows: list[tuple[Any, ...]]) -> np.ndarray:
    """Turn the pushdown SQL's rows into the node's uint64 vector (cell-major; absent cells are 0).

    Each total is encoded as round(total * 2^frac_bits) in two's complement modulo 2^64; a total
    whose magnitude times ``max_parties`` reaches 2^62 raises ``FixedPointOverflow`` rather than
    wrapping around silently.
    """
    k = len(plan.group_columns)
    n_m = len(plan.measurements)
    cell_index = {cell: i for i, cell in enumerate(plan.cells)}
    vec = np.zeros(plan.vector_length, dtype=np.uint64)
    limit = (1 << HEADROOM_BITS) // plan.max_parties
    seen: set[int] = set()
    for row in rows:
        key = tuple(str(v) for v in row[:k])
        ci = cell_index.get(key)
        if ci is None or ci in seen:
            # The SQL keeps declared values only and groups by them; anything else is a bug.
            raise SourceError(f"dataset '{plan.dataset}': the local query returned an unexpected group")
        seen.add(ci)
        for j, m in enumerate(plan.measurements):
            raw = row[k + j]
            if raw is None:
                continue
            v = int(raw) if m.kind == "count" else encode_fixed(float(raw), m.frac_bits)
            if abs(v) >= limit:
                raise FixedPointOverflow(
                    f"the total of {m.key} on this node does not fit the fixed-point range for "
                    f"{plan.max_parties} parties; the holder should declare tighter bounds")
            vec[ci * n_m + j] = np.uint64(to_ring(v))
    return vec


def run_local_query(plan: QueryPlan, manifest: Manifest, dataset: DatasetSpec, *,
                    source: LocalSource | None = None, sources: SourceCache | None = None) -> np.ndarray:
    """This node's vector for ``plan``: re-validate against the own manifest, run the pushdown, encode.

    Returns ``np.ndarray`` of dtype uint64, length ``plan.vector_length``, entry
    ``plan.index(cell, m)`` = round(total * 2^frac_bits) mod 2^64 (two's complement); cells with
    no rows here are zeros. Raises ``InvalidQuery`` (plan not allowed here), ``SourceError`` or
    ``FixedPointOverflow``. No noise is added here. ``source``: an open source to use;
    ``sources``: the node's ``SourceCache`` to take it from (default: open and close one).
    """
    checked = validate_plan_for(plan, dataset)
    with contextlib.ExitStack() as stack:
        if source is None:
            source = stack.enter_context(sources.open(manifest, dataset) if sources is not None
                                         else open_source(manifest, dataset))
        cmap = column_map_for(checked, source)
        sql = local_sql(checked, source.relation_sql(), source.dialect, column_map=cmap)
        rows = source.execute(sql)
    return encode_rows(checked, rows)
