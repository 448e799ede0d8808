"""Hidden lookups on the node (issue #17): the encoded table and one OPRF evaluation per lookup.

The node is the OPRF server of docs/hidden-lookup.md. Per (dataset, product) it keeps a secret
key ``k`` and the table built with it (``crypto.pir.build_table``: a tag and an encrypted label
per record, padded with dummies to the declared capacity). A new key and a new table version
are made when the source changes (or the product asks for other columns), so a version's tags
always match its data. Keys live in the task worker's memory only: a restarted node builds a new
version and the SDK fetches it.

What the node sees of a lookup is ``LookupEvaluate``: a uniformly random group element (the
analyst's ``r·H(key)``), the product and who asks. It learns neither the key nor whether it
matched: the match happens in the analyst's SDK. Its own policy is checked first: the dataset
must be opted in (``[datasets.lookup]``) and the product may ask only for columns listed there.

A source that breaks its lookup declaration (a repeated key, more keys than ``capacity``, a record
longer than ``label_bytes``) does not stop the build: those records are left out by the fixed
rule of ``crypto.pir.table.select_records`` and the table is built from the rest, padded to the
capacity as always. What was left out is this node's log's business and its validation report's
(``lookup_report``), never the gateway's: a failure there would tell the analyst about rows it
did not ask for (the observable rule, DESIGN.md).
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sqlglot import exp

from xdp_compute.contract.tasks import (
    LOOKUP_PART_BYTES,
    LOOKUP_STALE,
    LookupEvaluate,
    LookupEvaluated,
    LookupPrepare,
    LookupPrepared,
    LookupTablePart,
    LookupTablePartReply,
)
from xdp_compute.crypto.pir import OprfKey, Selection, build_selected, select_records
from xdp_compute.crypto.pir.keys import lookup_key_bytes
from xdp_compute.crypto.pir.table import NO_SUCH_PART
from xdp_compute.domain.manifest import DatasetSpec, LookupSpec
from xdp_compute.errors import BadRequest, Conflict, PolicyDenied, XdpError
from xdp_compute.node.sources import LocalSource
from xdp_compute.node.tasks.context import NodeContext

log = logging.getLogger("xdp.node.lookup")

# A PostgreSQL table has no file state to compare: its lookup table is rebuilt once this old.
SQL_TABLE_MAX_AGE_SECONDS = 600.0
# What the gateway (and through it the analyst) is told when a table cannot be built: the same
# words whatever the reason, which this node's own log gives. Only the source itself can cause it
# now (unreadable, a declared column missing): the rows' contents no longer stop a build.
NOT_BUILT = "the holder's node could not build the lookup table (the reason is in the node's log)"


class StaleVersion(Conflict):
    """A table version this node no longer holds (its data changed or it restarted)."""

    slug, title = "lookup-version-stale", "Lookup table version is stale"


@dataclass
class _Table:
    version: str
    key: OprfKey
    columns: tuple[str, ...]
    fingerprint: Any
    data: bytes
    spec: LookupSpec
    key_type: str

    def info(self) -> LookupPrepared:
        return LookupPrepared(version=self.version, key_type=self.key_type, columns=list(self.columns),
                              capacity=self.spec.capacity, label_bytes=self.spec.label_bytes,
                              table_bytes=len(self.data), parts=max(1, math.ceil(len(self.data) / LOOKUP_PART_BYTES)))


def _typed(ctype: str, value: Any) -> Any:
    """A label value as its declared type (CSV cells arrive as text); unreadable -> None."""
    if value is None:
        return None
    try:
        if ctype == "int":
            if isinstance(value, float):  # read as DOUBLE by the node's engine
                return int(value) if value.is_integer() else None
            return int(str(value).strip())
        if ctype == "float":
            f = float(value)
            return f if math.isfinite(f) else None
        if ctype == "bool":
            text = str(value).strip().lower()
            return True if text in ("true", "1", "t", "yes") else False if text in ("false", "0", "f", "no") else None
    except ValueError:
        return None
    return str(value)


def read_records(src: LocalSource, ds: DatasetSpec, spec: LookupSpec, columns: tuple[str, ...]
                 ) -> Iterator[tuple[bytes, dict[str, Any]]]:
    """The source's records as (normalised key, declared columns); a record without a key is skipped
    (nobody can look it up). ``BadRequest`` when a column is missing from the source."""
    key_col = ds.column(spec.key)
    assert key_col is not None
    types = {c: ds.column(c).type for c in columns}  # type: ignore[union-attr]
    actual = {n.lower(): n for n in src.column_names()}
    wanted = (spec.key, *columns)
    missing = [c for c in wanted if c.lower() not in actual]
    if missing:
        raise BadRequest(f"column {missing[0]!r} is missing from the source")
    select = ", ".join(exp.to_identifier(actual[c.lower()], quoted=True).sql(dialect=src.dialect) for c in wanted)
    rows = src.execute(f"SELECT {select} FROM {src.relation_sql()}")
    for row in rows:
        k = lookup_key_bytes(key_col.type, row[0])
        if k is None:
            continue
        yield k, {c: _typed(types[c], v) for c, v in zip(columns, row[1:], strict=True)}


def left_out_text(chosen: Selection, spec: LookupSpec) -> str:
    """What was left out of a table, in counts, for the holder (its node's log)."""
    parts = []
    if chosen.repeated_keys:
        parts.append(f"{chosen.repeated_keys} key{'s' * (chosen.repeated_keys != 1)} repeated "
                     f"({chosen.repeated_rows} rows; every row of a repeated key is left out)")
    if chosen.beyond_capacity:
        parts.append(f"{chosen.beyond_capacity} key{'s' * (chosen.beyond_capacity != 1)} beyond the capacity "
                     f"{spec.capacity} (the last in key order are left out)")
    if chosen.labels_too_long:
        parts.append(f"{chosen.labels_too_long} record{'s' * (chosen.labels_too_long != 1)} longer than "
                     f"label_bytes={spec.label_bytes}")
    return (f"{chosen.left_out} of {chosen.rows} rows with a key left out: " + "; ".join(parts)
            + ". Lookups of those keys answer \"not found\"; fix the source or the [datasets.lookup] declaration")


def lookup_report(src: LocalSource, ds: DatasetSpec) -> dict[str, Any]:
    """For ``xdp node validate``: which of the source's rows a lookup table would leave out, in counts.

    Labels are measured with every ``[datasets.lookup]`` column (the longest a product can ask
    for), so ``labels_too_long`` is an upper bound for a product that asks for fewer.
    """
    spec = ds.lookup
    assert spec is not None
    chosen = select_records(read_records(src, ds, spec, tuple(spec.columns)), capacity=spec.capacity,
                            label_bytes=spec.label_bytes)
    return {"capacity": spec.capacity, "label_bytes": spec.label_bytes, **chosen.counts(),
            "left_out": chosen.left_out}


class LookupTasks:
    """The node's lookup tables and keys, per (dataset, product); thread-safe."""

    def __init__(self, node: NodeContext) -> None:
        self.node = node
        self._tables: dict[tuple[str, str], _Table] = {}
        self._lock = threading.Lock()
        self._build_locks: dict[tuple[str, str], threading.Lock] = {}

    # ------------------------------------------------------------------ policy
    def _opted_in(self, dataset: str, columns: list[str]) -> tuple[DatasetSpec, LookupSpec, tuple[str, ...]]:
        ds = self.node.manifest.dataset(dataset)
        if ds is None:
            raise BadRequest(f"this node declares no dataset {dataset!r}")
        if ds.lookup is None:
            raise PolicyDenied(f"dataset {dataset!r} is not open to hidden lookups on this node (its manifest "
                               "has no [datasets.lookup] table)")
        allowed = {c.lower(): c for c in ds.lookup.columns}
        outside = [c for c in columns if c.lower() not in allowed]
        if outside:
            raise PolicyDenied(f"column {outside[0]!r} of dataset {dataset!r} is not open to lookups on this node "
                               f"(its [datasets.lookup] columns: {', '.join(ds.lookup.columns)})")
        return ds, ds.lookup, tuple(allowed[c.lower()] for c in columns)

    def _fingerprint(self, ds: DatasetSpec) -> Any:
        """What says the source changed: its file(s)' state, or for SQL the age bucket."""
        if ds.is_sql:
            return ("sql", int(time.time() // SQL_TABLE_MAX_AGE_SECONDS))
        from xdp_compute.node.sources import parquet_files

        files = parquet_files(self.node.manifest, ds)
        if files is not None:
            return files.state()
        try:
            st = os.stat(self.node.manifest.source_path(ds))
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    # ------------------------------------------------------------------ building
    def _build(self, ds: DatasetSpec, spec: LookupSpec, columns: tuple[str, ...], fingerprint: Any) -> _Table:
        key_col = ds.column(spec.key)
        assert key_col is not None
        oprf = OprfKey()  # Kales et al. 2019 §3: a fresh PRF key per table version
        version = os.urandom(16)
        started = time.monotonic()
        try:
            with self.node.sources.open(self.node.manifest, ds) as src:
                chosen = select_records(read_records(src, ds, spec, columns), capacity=spec.capacity,
                                        label_bytes=spec.label_bytes)
            data = build_selected(oprf, version, chosen, capacity=spec.capacity, label_bytes=spec.label_bytes)
        except (ValueError, XdpError) as e:
            # Only the source can fail here (unreadable, a column missing), not its rows' values.
            log.error("lookup table of dataset %s not built: %s", ds.name,
                      e.detail if isinstance(e, XdpError) else e)
            raise BadRequest(NOT_BUILT) from None
        log.info("lookup table of dataset %s built: %d entries in %.1fs", ds.name, spec.capacity,
                 time.monotonic() - started)
        if chosen.left_out:
            # The holder's eyes only: counts, never a key. The gateway gets the same table shape.
            log.warning("lookup table of dataset %s: %s", ds.name, left_out_text(chosen, spec))
        return _Table(version.hex(), oprf, columns, fingerprint, data, spec, key_col.type)

    def _table(self, dataset: str, product: str, columns: list[str]) -> _Table:
        ds, spec, cols = self._opted_in(dataset, columns)
        key = (dataset, product)
        with self._lock:
            build_lock = self._build_locks.setdefault(key, threading.Lock())
        with build_lock:  # one build per (dataset, product) at a time; others wait for it
            fingerprint = self._fingerprint(ds)
            with self._lock:
                t = self._tables.get(key)
            if t is None or t.fingerprint != fingerprint or t.columns != cols or t.spec != spec or fingerprint is None:
                t = self._build(ds, spec, cols, fingerprint)
                with self._lock:
                    self._tables[key] = t
            return t

    def _version(self, dataset: str, product: str, version: str) -> _Table:
        ds, _, _ = self._opted_in(dataset, [])  # the opt-in is re-read at every call
        with self._lock:
            t = self._tables.get((dataset, product))
        # A version whose data changed is not served: its tags no longer say what the source holds.
        if t is None or t.version != version or t.fingerprint != self._fingerprint(ds):
            raise StaleVersion(LOOKUP_STALE)
        return t

    # ------------------------------------------------------------------ handlers
    def prepare(self, job_id: str, request: LookupPrepare) -> LookupPrepared:
        """The current table of the product (built now if missing or stale): its public shape."""
        return self._table(request.dataset, request.product, list(request.columns)).info()

    def table_part(self, job_id: str, request: LookupTablePart) -> LookupTablePartReply:
        t = self._version(request.dataset, request.product, request.version)
        start = request.part * LOOKUP_PART_BYTES
        if start >= len(t.data):
            raise BadRequest(NO_SUCH_PART)
        return LookupTablePartReply(version=t.version, data=t.data[start:start + LOOKUP_PART_BYTES])

    def evaluate(self, job_id: str, request: LookupEvaluate) -> LookupEvaluated:
        """RFC 9497 BlindEvaluate: ``k·B`` for the version's key, with its VOPRF proof; ``B`` is checked first."""
        t = self._version(request.dataset, request.product, request.version)
        z = t.key.blind_evaluate(request.point)
        proof = t.key.prove(request.point, z)  # RFC 9497 §2.2.1: the SDK checks z against the table's pk
        # The holder's own record of who looked up on which product: never a key (it has none).
        log.info("hidden lookup on dataset %s, product %s, by %s", request.dataset, request.product,
                 request.principal or "?")
        return LookupEvaluated(version=t.version, point=z, proof=proof)
