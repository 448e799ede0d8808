"""A Spark source in the manifest (issue #18): ``source = "spark://local"`` and ``[datasets.spark]``.

``source = "spark://local"`` (or ``local[N]``, ``local[*]``) names a dataset read by Spark SQL in
local mode, in the JVM of the node's own task worker; ``[datasets.spark]`` names the files it reads
(``path``), their ``format`` and a few session settings (``conf``). Only local mode: a cluster
master would run the query on executors outside the node's sandbox, and none can be run or tested
here. No catalog table: local mode has no metastore shared with the holder's warehouse, so the
holder names the table's files. The path and settings never leave the node (only the kind does).

Pure parsing: ``domain/manifest.py`` calls it and turns ``SparkManifestError`` into its own
``ManifestError`` naming the file and key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TRINO_REFUSAL = ("Trino is not supported: no Trino server can be run or tested here (Trino ships from "
                 "Maven); the design and dialect mapping are in docs/scale-out.md, section Trino")
# Source kinds a node might name at Register that are refused with a reason, not just as unknown.
REFUSED_SOURCE_KINDS = {"trino": TRINO_REFUSAL, "presto": TRINO_REFUSAL}
SPARK_FORMATS = ("parquet", "csv")
# Session settings a holder may tune. Every other key (jars, packages, the master, the UI, the bind
# address, SQL on files, the catalog) could undo what the node sets for its sandbox: refused.
SPARK_CONF_KEYS = ("spark.driver.memory", "spark.sql.shuffle.partitions", "spark.default.parallelism",
                   "spark.sql.files.maxPartitionBytes", "spark.sql.files.openCostInBytes")
_SPARK_MASTER = re.compile(r"^spark://local(?:\[(\*|[1-9][0-9]{0,2})\])?/?$", re.IGNORECASE)
_CONF_VALUE = re.compile(r"^[A-Za-z0-9.]{1,32}$")
_GLOB_CHARS = re.compile(r"[*?\[{]")
CATALOG_REFUSAL = ("catalog tables are not supported: local mode has no metastore shared with the holder's "
                   "warehouse; name the table's Parquet files in [datasets.spark] path")


class SparkManifestError(ValueError):
    """A bad ``[datasets.spark]``: ``key`` relative to the dataset (``spark.path``), ``what`` is wrong."""

    def __init__(self, key: str, what: str) -> None:
        super().__init__(what)
        self.key, self.what = key, what


@dataclass(frozen=True)
class SparkOptions:
    """A Spark source's ``[datasets.spark]`` table: where the files are and how the session runs."""

    master: str  # local[N] or local[*]
    path: str  # as written in the manifest (relative to its folder); a folder ends in "/"
    format: str  # one of SPARK_FORMATS
    conf: tuple[tuple[str, str], ...] = ()  # sorted (key, value) pairs from SPARK_CONF_KEYS

    def to_dict(self) -> dict[str, Any]:
        return {"master": self.master, "path": self.path, "format": self.format, "conf": dict(self.conf)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SparkOptions:
        return cls(master=d["master"], path=d["path"], format=d["format"],
                   conf=tuple(sorted((str(k), str(v)) for k, v in (d.get("conf") or {}).items())))

    @property
    def is_folder(self) -> bool:
        return self.path.endswith(("/", "\\"))

    @property
    def session(self) -> tuple[str, tuple[tuple[str, str], ...]]:
        """What one Spark session is started with (a node runs one for all its Spark datasets)."""
        return self.master, self.conf


def spark_master(source: str) -> str:
    """The local master ``spark://local[...]`` names (``local[*]`` for plain ``spark://local``);
    ``ValueError`` for anything else, never quoting the URL (a cluster URL may carry a password)."""
    m = _SPARK_MASTER.match(source)
    if m is None:
        raise ValueError("unsupported Spark master: only local mode runs here (spark://local, spark://local[N] "
                         "or spark://local[*]); a cluster master (spark://host:port, YARN, Kubernetes) is not "
                         "supported")
    return f"local[{m.group(1) or '*'}]"


def parse_spark_options(opts: Any, *, master: str, table: Any, base_dir: Path, check_files: bool) -> SparkOptions:
    """Validate a spark:// dataset's ``[datasets.spark]`` (``opts``) and its ``table`` key (must be
    absent); ``SparkManifestError`` naming the key and what is wrong."""
    if table is not None:
        raise SparkManifestError("table", f"a Spark source takes no table: {CATALOG_REFUSAL}")
    if not isinstance(opts, dict):
        raise SparkManifestError("spark", "a spark:// source needs a [datasets.spark] table with path = \"<a "
                                          ".parquet or .csv file, or a folder of .parquet files>\"")
    if "table" in opts:
        raise SparkManifestError("spark.table", CATALOG_REFUSAL)
    unknown = sorted(set(opts) - {"path", "format", "conf"})
    if unknown:
        raise SparkManifestError(f"spark.{unknown[0]}", "unknown key (allowed: conf, format, path)")
    path = opts.get("path")
    if not isinstance(path, str) or not path or "://" in path:
        raise SparkManifestError("spark.path", "required: a .parquet or .csv file, or a folder of .parquet files, "
                                               "on this machine (relative to the manifest's folder)")
    if _GLOB_CHARS.search(path):
        raise SparkManifestError("spark.path", "no wildcards: name a file or a folder (the node lists a folder's "
                                               "files itself and hands Spark exactly those)")
    p = Path(path) if Path(path).is_absolute() else base_dir / path
    is_dir = path.endswith(("/", "\\")) or (check_files and p.is_dir())
    suffix = Path(path).suffix.lower()
    fmt = opts.get("format")
    if fmt is not None and fmt not in SPARK_FORMATS:
        raise SparkManifestError("spark.format", f"must be one of {', '.join(SPARK_FORMATS)}, got {str(fmt)[:40]!r}")
    if is_dir:
        if fmt == "csv":
            raise SparkManifestError("spark.format", "a CSV source is one .csv file; a folder must hold .parquet "
                                                     "files")
        fmt = "parquet"
        if not path.endswith(("/", "\\")):
            path += "/"
    else:
        if suffix not in (".parquet", ".csv"):
            raise SparkManifestError("spark.path", f"unsupported file type {suffix or '(none)'!r}: a .parquet or "
                                                   ".csv file, or a folder of .parquet files")
        if fmt is not None and fmt != suffix[1:]:
            raise SparkManifestError("spark.format", f"{fmt!r} does not match the file's suffix {suffix!r}")
        fmt = suffix[1:]
    if check_files and is_dir and not p.is_dir():
        raise SparkManifestError("spark.path", f"folder not found: {p}")
    if check_files and not is_dir and not p.is_file():
        raise SparkManifestError("spark.path", f"file not found: {p}")
    conf_raw = opts.get("conf", {})
    if not isinstance(conf_raw, dict):
        raise SparkManifestError("spark.conf", "must be a table of Spark settings, e.g. "
                                               "{ \"spark.driver.memory\" = \"2g\" }")
    conf = []
    for k, v in conf_raw.items():
        if k not in SPARK_CONF_KEYS:
            raise SparkManifestError("spark.conf", f"setting {k[:80]!r} is not allowed (allowed: "
                                                   f"{', '.join(SPARK_CONF_KEYS)}; the node sets the rest itself "
                                                   "to keep Spark on loopback and sandboxed)")
        if isinstance(v, bool) or not isinstance(v, int | str) or not _CONF_VALUE.fullmatch(str(v)):
            raise SparkManifestError("spark.conf", f"setting {k!r} must be a number or a short word such as \"2g\"")
        conf.append((k, str(v)))
    return SparkOptions(master=master, path=path, format=fmt, conf=tuple(sorted(conf)))
