"""The data holder's manifest: what a node offers, under which policy (pure types, no I/O but parsing).

A manifest is TOML (see README). ``parse_manifest`` validates every key and raises
``ManifestError`` whose message names the file, the key and what is wrong, so that
``xdp node`` can exit with it. Several nodes declaring the same dataset name with the same
schema form one horizontally partitioned dataset; ``schema_differences`` names what differs.
"""

from __future__ import annotations

import math
import re
import tomllib
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from xdp_compute.domain.names import NODE_NAME, REGION
from xdp_compute.domain.spark import (
    REFUSED_SOURCE_KINDS,
    TRINO_REFUSAL,
    SparkManifestError,
    SparkOptions,
    parse_spark_options,
    spark_master,
)
from xdp_compute.errors import ManifestError

# -- sources ---------------------------------------------------------------------------------------
# One vocabulary for both sides (issue #14): the node opens these kinds of source, tells the gateway
# the kind of each dataset at Register (never its path or URL), and both refuse any other kind.
SOURCE_KINDS = ("csv", "parquet", "postgresql", "spark")
SUPPORTED_SOURCES = ("a .csv file, a .parquet file, a folder of .parquet files (\"data/sales/\", hive partitions "
                     "too), a glob of .parquet files (\"data/sales/*.parquet\"), postgresql://... with table, "
                     "or spark://local with a [datasets.spark] table")
_SQL_SCHEMES = ("postgresql", "postgres")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_GLOB_CHARS = re.compile(r"[*?\[]")
# Why a scheme someone is likely to try is refused, in the holder's words.
_REFUSED_SCHEMES = {
    "mysql": "MySQL and MariaDB are not supported",
    "mariadb": "MySQL and MariaDB are not supported",
    "s3": "the node reads local files only; copy the objects next to the node",
    "gs": "the node reads local files only; copy the objects next to the node",
    "gcs": "the node reads local files only; copy the objects next to the node",
    "az": "the node reads local files only; copy the objects next to the node",
    "abfss": "the node reads local files only; copy the objects next to the node",
    "http": "the node reads local files only; download the file next to the node",
    "https": "the node reads local files only; download the file next to the node",
    "file": "write the path without file://",
    "trino": TRINO_REFUSAL,
    "presto": TRINO_REFUSAL,
}


# -- Spark sources (issue #18; domain/spark.py) -----------------------------------------------------

def _spark_options(ctx: _Ctx, where: str, raw: dict[str, Any], ref: SourceRef, base_dir: Path,
                   check_files: bool) -> SparkOptions | None:
    """The ``[datasets.spark]`` table of a spark:// source (None for any other source)."""
    if ref.kind != "spark":
        if raw.get("spark") is not None:
            raise ctx.fail(f"{where}.spark", "only a spark:// source takes a [datasets.spark] table")
        return None
    try:
        return parse_spark_options(raw.get("spark"), master=ref.root, table=raw.get("table"), base_dir=base_dir,
                                   check_files=check_files)
    except SparkManifestError as e:
        raise ctx.fail(f"{where}.{e.key}", e.what) from None


def _check_one_spark_session(ctx: _Ctx, datasets: tuple[DatasetSpec, ...]) -> None:
    """A node runs one Spark session: all its Spark datasets must ask for the same one."""
    spark = [(d.name, d.spark) for d in datasets if d.spark is not None]
    for name, opts in spark[1:]:
        if opts.session != spark[0][1].session:
            raise ctx.fail(f"datasets[{name}].spark", "every Spark dataset of a node shares one Spark session: "
                                                      f"its master and conf must be those of datasets[{spark[0][0]}]")


@dataclass(frozen=True)
class SourceRef:
    """What a dataset's ``source`` names: its ``kind`` (one of ``SOURCE_KINDS``) and ``layout``.

    ``layout`` is ``file`` (one .csv or .parquet file), ``folder`` (every .parquet file under
    ``root``, hive partition folders included), ``glob`` (the .parquet files ``pattern`` matches
    under ``root``, the part of the path before the first wildcard) or ``database``.
    """

    kind: str
    layout: str
    root: str = ""
    pattern: str = ""


def parse_source(source: str, *, is_dir: bool = False) -> SourceRef:
    """Classify a manifest's ``source``; ``ValueError`` with a one-line reason naming what is supported.

    ``is_dir``: the path is an existing folder (a folder source need not end in ``/`` then).
    A URL's user, password and host are never quoted back: only its scheme.
    """
    m = _SCHEME.match(source)
    if m:
        scheme = m.group(1).lower()
        if scheme in _SQL_SCHEMES:
            return SourceRef("postgresql", "database")
        if scheme == "spark":
            return SourceRef("spark", "engine", root=spark_master(source))
        why = _REFUSED_SCHEMES.get(scheme, "unknown scheme")
        raise ValueError(f"unsupported source '{scheme}://' ({why}); supported: {SUPPORTED_SOURCES}")
    if "://" in source:
        raise ValueError(f"unsupported source (a URL needs a scheme such as postgresql://); "
                         f"supported: {SUPPORTED_SOURCES}")
    parts = Path(source).parts
    wild = next((i for i, part in enumerate(parts) if _GLOB_CHARS.search(part)), None)
    if wild is not None:
        # The root (before the first wildcard) is the holder's path, '..' and all, as for a single
        # file; after a wildcard, '..' could climb out of what the root declares.
        if ".." in parts[wild:]:
            raise ValueError("'..' may not follow a wildcard: a glob matches files under the folder before it")
        if not parts[-1].lower().endswith(".parquet"):
            raise ValueError(f"a glob must match .parquet files (end in .parquet); supported: {SUPPORTED_SOURCES}")
        root = str(Path(*parts[:wild])) if wild else "."
        return SourceRef("parquet", "glob", root=root, pattern=str(Path(*parts[wild:])))
    if source.endswith(("/", "\\")) or is_dir:
        return SourceRef("parquet", "folder", root=source.rstrip("/\\") or "/")
    suffix = Path(source).suffix.lower()
    if suffix not in (".csv", ".parquet"):
        raise ValueError(f"unsupported file type {suffix or '(none)'!r}; supported: {SUPPORTED_SOURCES}")
    return SourceRef(suffix[1:], "file", root=source)


COLUMN_TYPES = ("int", "float", "category", "text", "bool")
NUMERIC_TYPES = ("int", "float")
USES = ("aggregate", "filter", "group", "join")
# A join key (issue #16, docs/private-joins.md): its values leave the node only blinded, so it can
# be nothing else; ``join_domain`` names its identifier space (two datasets join only on keys of
# the same domain). Text or int columns only: a float or category key would not be an identifier.
JOIN_TYPES = ("text", "int")
JOIN_DOMAIN = re.compile(r"^[a-z][a-z0-9]*(?:[-_.][a-z0-9]+)*$")
MAX_JOIN_DOMAIN_CHARS = 40
CLASSIFICATIONS = ("public", "internal", "sensitive", "core")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_NODE_NAME = NODE_NAME
MAX_CATEGORY_VALUES = 1000


@dataclass(frozen=True)
class ColumnSpec:
    """One declared column: its type, bounds or values, and the uses an analyst may make of it."""

    name: str
    type: str
    min: float | None = None
    max: float | None = None
    values: tuple[str, ...] | None = None
    uses: tuple[str, ...] = ()
    join_domain: str | None = None  # set exactly when "join" is in uses

    @property
    def numeric(self) -> bool:
        return self.type in NUMERIC_TYPES

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["values"] = list(self.values) if self.values is not None else None
        d["uses"] = list(self.uses)
        if self.join_domain is None:
            # Absent, not null: a column declared before joins existed keeps its exact dict, so
            # schemas registered by older nodes still compare equal.
            del d["join_domain"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ColumnSpec:
        return cls(
            name=d["name"],
            type=d["type"],
            min=d.get("min"),
            max=d.get("max"),
            values=tuple(d["values"]) if d.get("values") is not None else None,
            uses=tuple(d.get("uses") or ()),
            join_domain=d.get("join_domain"),
        )


# Largest epsilon one query may spend on a dataset unless its manifest says otherwise. Without a
# per-query cap, two queries at a large epsilon that differ in one row's membership (WHERE ... vs
# WHERE ... AND id <> 5) reveal that row almost exactly (issue #11).
DEFAULT_MAX_EPSILON_PER_QUERY = 2.0
# Most rows one node may hold for a dataset unless its manifest says otherwise. It is public: the
# query planner refuses any plan whose worst case (declared bounds x max_rows x parties) could
# overflow the fixed-point ring, so a node's true totals never can (issue #11), and training plans
# its sampling rate from it instead of from the node's real row count.
DEFAULT_MAX_ROWS = 1_000_000
MAX_MAX_ROWS = 2**32


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset a node offers, with its policy. ``source`` is resolved against the manifest."""

    name: str
    source: str
    table: str | None
    classification: str
    categories: tuple[str, ...]
    epsilon_budget: float
    delta: float
    min_group_size: int
    require_approval: bool
    columns: tuple[ColumnSpec, ...]
    allowed_analysts: tuple[str, ...] | None = None
    allowed_regions: tuple[str, ...] | None = None
    max_epsilon_per_query: float = DEFAULT_MAX_EPSILON_PER_QUERY
    max_rows: int = DEFAULT_MAX_ROWS
    lookup: LookupSpec | None = None  # [datasets.lookup]: hidden lookups opted in (issue #17)
    spark: SparkOptions | None = None  # a spark:// source's [datasets.spark] table (issue #18)

    def column(self, name: str) -> ColumnSpec | None:
        for c in self.columns:
            if c.name.lower() == name.lower():
                return c
        return None

    @property
    def is_sql(self) -> bool:
        return "://" in self.source

    @property
    def source_ref(self) -> SourceRef:
        """What ``source`` names (``parse_source``); the manifest loader has already accepted it."""
        return parse_source(self.source)

    @property
    def source_kind(self) -> str:
        """csv, parquet or postgresql: what the node tells the gateway about its source."""
        return self.source_ref.kind

    def schema(self) -> dict[str, Any]:
        """The part that must agree between nodes forming one partitioned dataset."""
        return {
            "classification": self.classification,
            "categories": sorted(self.categories),
            "columns": {c.name: c.to_dict() for c in self.columns},
        }

    def to_dict(self, *, with_source: bool = False) -> dict[str, Any]:
        d: dict[str, Any] = {
            "name": self.name,
            "classification": self.classification,
            "categories": list(self.categories),
            "epsilon_budget": self.epsilon_budget,
            "delta": self.delta,
            "min_group_size": self.min_group_size,
            "require_approval": self.require_approval,
            "allowed_analysts": list(self.allowed_analysts) if self.allowed_analysts is not None else None,
            "allowed_regions": list(self.allowed_regions) if self.allowed_regions is not None else None,
            "max_epsilon_per_query": self.max_epsilon_per_query,
            "max_rows": self.max_rows,
            "columns": [c.to_dict() for c in self.columns],
        }
        if self.lookup is not None:
            d["lookup"] = self.lookup.to_dict()  # absent when not opted in: older dicts stay equal
        if self.source:
            # The kind only (csv, parquet, postgresql): the gateway refuses an unsupported one at
            # Register; the path or URL never leaves the node.
            d["source_kind"] = self.source_kind
        if with_source:
            d["source"] = self.source
            d["table"] = self.table
            if self.spark is not None:
                d["spark"] = self.spark.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DatasetSpec:
        return cls(
            name=d["name"],
            source=d.get("source", ""),
            table=d.get("table"),
            classification=d["classification"],
            categories=tuple(d.get("categories") or ()),
            epsilon_budget=float(d["epsilon_budget"]),
            delta=float(d["delta"]),
            min_group_size=int(d["min_group_size"]),
            require_approval=bool(d["require_approval"]),
            columns=tuple(ColumnSpec.from_dict(c) for c in d["columns"]),
            allowed_analysts=tuple(d["allowed_analysts"]) if d.get("allowed_analysts") is not None else None,
            allowed_regions=tuple(d["allowed_regions"]) if d.get("allowed_regions") is not None else None,
            max_epsilon_per_query=float(d.get("max_epsilon_per_query", DEFAULT_MAX_EPSILON_PER_QUERY)),
            max_rows=int(d.get("max_rows", DEFAULT_MAX_ROWS)),
            lookup=LookupSpec.from_dict(d["lookup"]) if d.get("lookup") is not None else None,
            spark=SparkOptions.from_dict(d["spark"]) if d.get("spark") is not None else None,
        )


@dataclass(frozen=True)
class Manifest:
    node_name: str
    region: str
    datasets: tuple[DatasetSpec, ...]
    base_dir: Path = field(default=Path("."))
    path: Path | None = None
    # The node's own policy (issue #12): how many of a session's nodes it assumes may collude with
    # the gateway (None: as the gateway's default, 1 once the roster has 3 or more nodes), and
    # where it keeps its ledger and journal (relative to the manifest's folder).
    max_colluding_nodes: int | None = None
    state_dir: str | None = None

    def dataset(self, name: str) -> DatasetSpec | None:
        return next((d for d in self.datasets if d.name == name), None)

    @property
    def state_path(self) -> Path:
        """The folder of this node's own state (ledger and journal); default ``.xdp/node/<name>``."""
        p = Path(self.state_dir) if self.state_dir else Path(".xdp") / "node" / self.node_name
        return p if p.is_absolute() else (self.base_dir / p)

    def source_path(self, ds: DatasetSpec) -> Path:
        p = Path(ds.source)
        return p if p.is_absolute() else (self.base_dir / p)


class _Ctx:
    def __init__(self, file: str) -> None:
        self.file = file

    def fail(self, key: str, what: str) -> ManifestError:
        return ManifestError(f"{self.file}: {key}: {what}", file=self.file, key=key)


def _take(ctx: _Ctx, table: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ctx.fail(f"{where}.{unknown[0]}" if where else unknown[0],
                       f"unknown key (allowed: {', '.join(sorted(allowed))})")


def _number(ctx: _Ctx, v: Any, key: str) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(float(v)):
        raise ctx.fail(key, f"must be a finite number, got {v!r}")
    return float(v)


def _str_list(ctx: _Ctx, v: Any, key: str) -> tuple[str, ...]:
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise ctx.fail(key, "must be a list of strings")
    return tuple(v)


def _column(ctx: _Ctx, ds: str, name: str, spec: Any) -> ColumnSpec:
    key = f"datasets[{ds}].columns.{name}"
    if not _NAME.match(name):
        raise ctx.fail(key, "column names must be identifiers (letters, digits, underscore)")
    if not isinstance(spec, dict):
        raise ctx.fail(key, "must be a table like { type = \"int\", min = 0, max = 1, uses = [...] }")
    _take(ctx, spec, {"type", "min", "max", "values", "uses", "join_domain"}, key)
    ctype = spec.get("type")
    if ctype not in COLUMN_TYPES:
        raise ctx.fail(f"{key}.type", f"unknown column type {ctype!r} (expected one of {', '.join(COLUMN_TYPES)})")
    uses = _str_list(ctx, spec.get("uses", []), f"{key}.uses")
    uses = tuple(u for u in uses if u != "none")
    bad = [u for u in uses if u not in USES]
    if bad:
        raise ctx.fail(f"{key}.uses", f"unknown use {bad[0]!r} (expected aggregate, filter, group, join or none)")
    join_domain = _join_domain(ctx, key, ctype, uses, spec)
    spec = {k: v for k, v in spec.items() if k != "join_domain"}  # checked; the rest as for any column
    lo = hi = None
    values = None
    if ctype in NUMERIC_TYPES:
        if "values" in spec:
            raise ctx.fail(f"{key}.values", f"a {ctype} column takes min/max, not values")
        if "min" not in spec or "max" not in spec:
            raise ctx.fail(key, f"a {ctype} column needs both min and max bounds")
        lo, hi = _number(ctx, spec["min"], f"{key}.min"), _number(ctx, spec["max"], f"{key}.max")
        if lo > hi:
            raise ctx.fail(f"{key}.min", f"min {lo:g} is above max {hi:g}")
        if ctype == "int" and (lo != int(lo) or hi != int(hi)):
            raise ctx.fail(key, "an int column needs integer bounds")
        if "group" in uses:
            raise ctx.fail(f"{key}.uses", "only category or bool columns with declared values can be used to group")
    elif ctype == "category":
        if "min" in spec or "max" in spec:
            raise ctx.fail(key, "a category column takes values, not min/max")
        values = _str_list(ctx, spec.get("values"), f"{key}.values") if "values" in spec else None
        if not values:
            raise ctx.fail(f"{key}.values", "a category column needs a non-empty list of declared values")
        if len(set(values)) != len(values):
            raise ctx.fail(f"{key}.values", "declared values must be distinct")
        if len(values) > MAX_CATEGORY_VALUES:
            raise ctx.fail(f"{key}.values", f"at most {MAX_CATEGORY_VALUES} values")
    elif ctype == "bool":
        if set(spec) - {"type", "uses"}:
            raise ctx.fail(key, "a bool column takes only type and uses")
        values = ("false", "true")
    else:  # text
        if set(spec) - {"type", "uses"}:
            raise ctx.fail(key, "a text column takes only type and uses")
        if uses and join_domain is None:
            raise ctx.fail(f"{key}.uses", "a text column cannot be aggregated, filtered or grouped; use [] "
                                          "(or [\"join\"] with a join_domain for a join key)")
    if "aggregate" in uses and ctype == "category" and values is not None and len(values) != 2:
        raise ctx.fail(f"{key}.uses", "only numeric, bool or two-valued category columns can be aggregated")
    return ColumnSpec(name=name, type=ctype, min=lo, max=hi, values=values, uses=uses, join_domain=join_domain)


def _join_domain(ctx: _Ctx, key: str, ctype: str, uses: tuple[str, ...], spec: dict[str, Any]) -> str | None:
    """The ``join_domain`` of a ``join`` column (docs/private-joins.md); None for any other column."""
    domain = spec.get("join_domain")
    if "join" not in uses:
        if domain is not None:
            raise ctx.fail(f"{key}.join_domain", "only a column with use \"join\" takes a join_domain")
        return None
    if len(uses) > 1:
        raise ctx.fail(f"{key}.uses", "a join column can have no other use: its values leave the node only "
                                      "blinded, so it cannot also be aggregated, filtered or grouped")
    if ctype not in JOIN_TYPES:
        raise ctx.fail(f"{key}.type", f"a join column is text or int, not {ctype} (a key identifies a person)")
    if not isinstance(domain, str) or len(domain) > MAX_JOIN_DOMAIN_CHARS or not JOIN_DOMAIN.fullmatch(domain):
        raise ctx.fail(f"{key}.join_domain", "required for a join column: a short lower-case identifier of the "
                                             "key's identifier space, e.g. \"citizen-id\" or \"phone\" (two "
                                             "datasets join only on keys of the same domain)")
    return domain


_DS_KEYS = {
    "name", "source", "table", "classification", "categories", "epsilon_budget", "delta",
    "min_group_size", "require_approval", "columns", "allowed_analysts", "allowed_regions",
    "max_epsilon_per_query", "max_rows", "spark",
}

# -- hidden lookups (issue #17) --------------------------------------------------------------------
# ``[datasets.lookup]``: the owner opts the dataset in to hidden lookups (keyword PIR, see
# docs/hidden-lookup.md). A lookup releases one record, not a DP aggregate, so it is offered only
# where the owner says: by the declared ``key`` column, for the listed ``columns``, from a table
# padded to ``capacity`` entries of ``label_bytes`` each (both public: the table's size shows
# them, never the row count).
LOOKUP_KEY_TYPES = ("text", "int")
DEFAULT_LOOKUP_LABEL_BYTES = 128
MIN_LOOKUP_LABEL_BYTES, MAX_LOOKUP_LABEL_BYTES = 16, 4096
MAX_LOOKUP_CAPACITY = 10_000_000


@dataclass(frozen=True)
class LookupSpec:
    """A dataset's hidden-lookup opt-in: key column, releasable columns, table capacity and label size."""

    key: str
    columns: tuple[str, ...]
    capacity: int
    label_bytes: int = DEFAULT_LOOKUP_LABEL_BYTES

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "columns": list(self.columns), "capacity": self.capacity,
                "label_bytes": self.label_bytes}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LookupSpec:
        return cls(key=d["key"], columns=tuple(d["columns"]), capacity=int(d["capacity"]),
                   label_bytes=int(d.get("label_bytes", DEFAULT_LOOKUP_LABEL_BYTES)))


def _lookup(ctx: _Ctx, where: str, raw: Any, cols: tuple[ColumnSpec, ...], classification: str) -> LookupSpec | None:
    """The ``[datasets.lookup]`` table (None: the dataset offers no hidden lookups)."""
    if raw is None:
        return None
    key = f"{where}.lookup"
    if not isinstance(raw, dict):
        raise ctx.fail(key, "must be a table like { key = \"citizen_id\", columns = [\"score\"], capacity = 100000 }")
    _take(ctx, raw, {"key", "columns", "capacity", "label_bytes"}, key)
    if classification == "core":
        raise ctx.fail(key, "a core dataset is never released, so it cannot offer hidden lookups")
    by_name = {c.name.lower(): c for c in cols}
    k = raw.get("key")
    col = by_name.get(k.lower()) if isinstance(k, str) else None
    if col is None:
        raise ctx.fail(f"{key}.key", "required: the declared column whose value a lookup asks for")
    if col.type not in LOOKUP_KEY_TYPES:
        raise ctx.fail(f"{key}.key", f"a lookup key is a text or int column, not {col.type} (a key identifies "
                                     "one record)")
    names = _str_list(ctx, raw.get("columns"), f"{key}.columns") if "columns" in raw else ()
    if not names:
        raise ctx.fail(f"{key}.columns", "required: a non-empty list of the declared columns a lookup may return")
    unknown = [n for n in names if n.lower() not in by_name]
    if unknown:
        raise ctx.fail(f"{key}.columns", f"{unknown[0]!r} is not a declared column")
    if len({n.lower() for n in names}) != len(names):
        raise ctx.fail(f"{key}.columns", "columns must be distinct")
    capacity = raw.get("capacity")
    if isinstance(capacity, bool) or not isinstance(capacity, int) or not 1 <= capacity <= MAX_LOOKUP_CAPACITY:
        raise ctx.fail(f"{key}.capacity", f"required: an integer in [1, {MAX_LOOKUP_CAPACITY}], at least the rows "
                                          "the node holds (public: the table is padded to it so its size hides "
                                          "the row count)")
    label_bytes = raw.get("label_bytes", DEFAULT_LOOKUP_LABEL_BYTES)
    if isinstance(label_bytes, bool) or not isinstance(label_bytes, int) or \
            not MIN_LOOKUP_LABEL_BYTES <= label_bytes <= MAX_LOOKUP_LABEL_BYTES:
        raise ctx.fail(f"{key}.label_bytes", f"must be an integer in [{MIN_LOOKUP_LABEL_BYTES}, "
                                             f"{MAX_LOOKUP_LABEL_BYTES}] (every record is padded to it; public)")
    return LookupSpec(key=col.name, columns=tuple(by_name[n.lower()].name for n in names), capacity=capacity,
                      label_bytes=label_bytes)


_DS_KEYS |= {"lookup"}  # [datasets.lookup] (issue #17)


def _dataset(ctx: _Ctx, i: int, raw: Any, base_dir: Path, check_files: bool) -> DatasetSpec:
    where = f"datasets[{i}]"
    if not isinstance(raw, dict):
        raise ctx.fail(where, "must be a table")
    name = raw.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise ctx.fail(f"{where}.name", "required; an identifier (letters, digits, underscore)")
    where = f"datasets[{name}]"
    _take(ctx, raw, _DS_KEYS, where)
    source = raw.get("source")
    if not isinstance(source, str) or not source:
        raise ctx.fail(f"{where}.source", f"required; one of {SUPPORTED_SOURCES}")
    table = raw.get("table")
    p = Path(source) if Path(source).is_absolute() else base_dir / source
    try:
        ref = parse_source(source, is_dir=check_files and "://" not in source and p.is_dir())
    except ValueError as e:
        raise ctx.fail(f"{where}.source", str(e)) from None
    spark = _spark_options(ctx, where, raw, ref, base_dir, check_files)
    if ref.layout == "folder" and not source.endswith(("/", "\\")):
        source += "/"  # spelled as a folder from here on, whether or not it exists where it is read
    if ref.kind == "spark":
        pass  # checked by _spark_options: the files are named in [datasets.spark]
    elif ref.layout == "database":
        if not isinstance(table, str) or not _NAME.match(table):
            raise ctx.fail(f"{where}.table", "a SQL source needs table = \"<identifier>\"")
    else:
        if table is not None:
            raise ctx.fail(f"{where}.table", "only a SQL URL source takes a table")
        root = Path(ref.root) if Path(ref.root).is_absolute() else base_dir / ref.root
        if check_files and ref.layout == "file" and not p.is_file():
            raise ctx.fail(f"{where}.source", f"file not found: {p}")
        if check_files and ref.layout != "file" and not root.is_dir():
            raise ctx.fail(f"{where}.source", f"folder not found: {root}")
    classification = raw.get("classification")
    if classification not in CLASSIFICATIONS:
        raise ctx.fail(f"{where}.classification", f"must be one of {', '.join(CLASSIFICATIONS)}")
    categories = _str_list(ctx, raw.get("categories", []), f"{where}.categories")
    eps = _number(ctx, raw.get("epsilon_budget"), f"{where}.epsilon_budget") if "epsilon_budget" in raw else None
    if eps is None or eps <= 0:
        raise ctx.fail(f"{where}.epsilon_budget", "required; a positive number")
    cap = _number(ctx, raw.get("max_epsilon_per_query", DEFAULT_MAX_EPSILON_PER_QUERY),
                  f"{where}.max_epsilon_per_query")
    if cap <= 0:
        raise ctx.fail(f"{where}.max_epsilon_per_query", "must be a positive number")
    max_rows = raw.get("max_rows", DEFAULT_MAX_ROWS)
    if isinstance(max_rows, bool) or not isinstance(max_rows, int) or not 1 <= max_rows <= MAX_MAX_ROWS:
        raise ctx.fail(f"{where}.max_rows", f"must be an integer in [1, {MAX_MAX_ROWS}] (the most rows this "
                                            "node will ever hold for the dataset; public)")
    delta = _number(ctx, raw.get("delta", 1e-6), f"{where}.delta")
    if not 0 < delta < 1:
        raise ctx.fail(f"{where}.delta", "must be in (0, 1)")
    mgs = raw.get("min_group_size", 10)
    if isinstance(mgs, bool) or not isinstance(mgs, int) or mgs < 0:
        raise ctx.fail(f"{where}.min_group_size", "must be a non-negative integer")
    approval = raw.get("require_approval", False)
    if not isinstance(approval, bool):
        raise ctx.fail(f"{where}.require_approval", "must be true or false")
    analysts = _str_list(ctx, raw["allowed_analysts"], f"{where}.allowed_analysts") if "allowed_analysts" in raw else None
    regions = _str_list(ctx, raw["allowed_regions"], f"{where}.allowed_regions") if "allowed_regions" in raw else None
    cols_raw = raw.get("columns")
    if not isinstance(cols_raw, dict) or not cols_raw:
        raise ctx.fail(f"{where}.columns", "required: a table of column declarations")
    cols = tuple(_column(ctx, name, cname, cspec) for cname, cspec in cols_raw.items())
    lowered = [c.name.lower() for c in cols]
    if len(set(lowered)) != len(lowered):
        raise ctx.fail(f"{where}.columns", "column names must be unique ignoring case")
    lookup = _lookup(ctx, where, raw.get("lookup"), cols, classification)
    return DatasetSpec(
        name=name, source=source, table=table, classification=classification, categories=categories,
        epsilon_budget=eps, delta=delta, min_group_size=mgs, require_approval=approval, columns=cols,
        allowed_analysts=analysts, allowed_regions=regions, max_epsilon_per_query=cap, max_rows=max_rows,
        lookup=lookup,
        spark=spark,
    )


def parse_manifest_text(text: str, *, file: str = "<manifest>", base_dir: Path | None = None,
                        check_files: bool = True) -> Manifest:
    """Parse and validate manifest TOML; raise ``ManifestError`` naming file, key and problem."""
    ctx = _Ctx(file)
    base = base_dir or Path(".")
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ManifestError(f"{file}: not valid TOML: {e}", file=file, key=None) from None
    _take(ctx, raw, {"node", "datasets"}, "")
    node = raw.get("node")
    if not isinstance(node, dict):
        raise ctx.fail("node", "required: a [node] table with name and region")
    _take(ctx, node, {"name", "region", "max_colluding_nodes", "state_dir"}, "node")
    name = node.get("name")
    if not isinstance(name, str) or not _NODE_NAME.fullmatch(name):
        raise ctx.fail("node.name", "required; letters, digits, '.', '_' or '-', at most 63 characters")
    region = node.get("region")
    if not isinstance(region, str) or not REGION.fullmatch(region):
        raise ctx.fail("node.region", "required; an upper-case ISO 3166 code, e.g. \"CN\" or \"CN-FJ\"")
    colluding = node.get("max_colluding_nodes")
    if colluding is not None and (isinstance(colluding, bool) or not isinstance(colluding, int) or colluding < 0):
        raise ctx.fail("node.max_colluding_nodes", "must be a non-negative integer (how many of a session's nodes "
                                                   "may collude with the gateway)")
    state_dir = node.get("state_dir")
    if state_dir is not None and (not isinstance(state_dir, str) or not state_dir):
        raise ctx.fail("node.state_dir", "must be a folder path (the node's ledger and journal)")
    dss = raw.get("datasets", [])
    if not isinstance(dss, list) or not dss:
        raise ctx.fail("datasets", "declare at least one [[datasets]] table")
    datasets = tuple(_dataset(ctx, i, d, base, check_files) for i, d in enumerate(dss))
    names = [d.name for d in datasets]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup:
        raise ctx.fail(f"datasets[{dup}]", "declared twice in this manifest")
    _check_one_spark_session(ctx, datasets)
    return Manifest(node_name=name, region=region, datasets=datasets, base_dir=base,
                    max_colluding_nodes=colluding, state_dir=state_dir)


def load_manifest(path: str | Path) -> Manifest:
    """Read and validate a manifest file; sources resolve relative to the file's folder."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ManifestError(f"{p}: manifest file not found", file=str(p), key=None) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ManifestError(f"{p}: cannot read manifest: {e}", file=str(p), key=None) from None
    m = parse_manifest_text(text, file=str(p), base_dir=p.resolve().parent)
    return replace(m, path=p)


def schema_differences(existing: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Name each difference between two ``DatasetSpec.schema()`` dicts ('' list when equal)."""
    out: list[str] = []
    for key in ("classification", "categories"):
        if existing.get(key) != new.get(key):
            out.append(f"{key}: {new.get(key)!r} here vs {existing.get(key)!r} already registered")
    a, b = existing.get("columns", {}), new.get("columns", {})
    for col in sorted(set(a) - set(b)):
        out.append(f"column {col!r} is missing here (declared by the other nodes)")
    for col in sorted(set(b) - set(a)):
        out.append(f"column {col!r} is not declared by the other nodes")
    for col in sorted(set(a) & set(b)):
        for attr in ("type", "min", "max", "values", "uses", "join_domain"):
            if a[col].get(attr) != b[col].get(attr):
                out.append(f"column {col!r} {attr}: {b[col].get(attr)!r} here vs {a[col].get(attr)!r} registered")
    return out


def parse_declaration(d: Any, *, origin: str = "registration") -> DatasetSpec:
    """Re-validate a dataset declaration as a node sends it (``DatasetSpec.to_dict()``, no source).

    The gateway trusts nothing a node sends: the declaration passes the same checks as a manifest.
    """
    ctx = _Ctx(origin)
    if not isinstance(d, dict):
        raise ctx.fail("datasets", "each declaration must be an object")
    raw = {k: v for k, v in d.items() if k not in ("columns", "source", "table", "source_kind", "spark")}
    kind = d.get("source_kind")
    if isinstance(kind, str) and kind in REFUSED_SOURCE_KINDS:
        raise ctx.fail(f"datasets[{d.get('name')}].source_kind",
                       f"unsupported source kind {kind!r} ({REFUSED_SOURCE_KINDS[kind]})")
    if kind not in SOURCE_KINDS:
        # A node of this package always says; anything else is refused here, before a query could
        # be planned against a source no node can open (issue #14: mysql:// failed at query time).
        shown = repr(kind) if isinstance(kind, str) and len(kind) <= 40 else "missing"
        raise ctx.fail(f"datasets[{d.get('name')}].source_kind",
                       f"unsupported source kind {shown} (supported: {', '.join(SOURCE_KINDS)}; "
                       f"in a manifest: {SUPPORTED_SOURCES})")
    cols = d.get("columns")
    if not isinstance(cols, list):
        raise ctx.fail(f"datasets[{d.get('name')}].columns", "must be a list of column declarations")
    table: dict[str, Any] = {}
    for c in cols:
        if not isinstance(c, dict) or not isinstance(c.get("name"), str):
            raise ctx.fail(f"datasets[{d.get('name')}].columns", "each column needs a name")
        spec = {k: v for k, v in c.items() if k != "name" and v is not None}
        if spec.get("type") == "bool":
            spec.pop("values", None)
        table[c["name"]] = spec
    raw["columns"] = table
    raw["source"] = "declared.csv"
    for k in ("allowed_analysts", "allowed_regions"):
        if raw.get(k) is None:
            raw.pop(k, None)
    spec = _dataset(ctx, 0, raw, Path("."), check_files=False)
    return DatasetSpec(**{**spec.__dict__, "source": ""})
