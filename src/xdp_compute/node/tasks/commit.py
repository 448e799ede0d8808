"""``commit``: a commitment to one dataset's content, computed here so the rows never leave.

The data exchange registers a dataset as an asset with a commitment to its content (issue #17):
re-registering after any row changed gives another commitment, an unchanged source the same one.
The commitment is

    HMAC-SHA256(K, len(r_1) || r_1 || len(r_2) || r_2 || ...)

where each r_i is the canonical JSON array of one row's declared columns, in declaration order,
every value as the engine's text cast (NULL as null), the rows sorted bytewise (so the order of
the file does not matter) and each length an 8-byte big-endian prefix (so no two row lists
encode alike). K is a 32-byte key this node draws once per dataset from the OS CSPRNG and keeps
in its state folder (``commitment-<dataset>.key``, mode 0600).

Why keyed: a bare SHA-256 of a small or guessable table can be tested by anyone who guesses its
rows; under HMAC with a key nobody else holds the value is a pseudorandom function of the
content, so it says nothing about it beyond "same as before or not" (hiding). It still binds the
holder: HMAC-SHA256 with a known key is as collision resistant as SHA-256, so the holder cannot
later show other rows for the same value. To open it (to an auditor or a court) the holder hands
over the key and the rows; the auditor recomputes this function (``content_commitment``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from xdp_compute.contract.tasks import Commit, Committed
from xdp_compute.domain.manifest import DatasetSpec
from xdp_compute.errors import BadRequest, XdpError
from xdp_compute.node.sources import DuckDBSource, PostgresSource, SourceError, open_source
from xdp_compute.node.tasks.context import NodeContext

SCHEME = "hmac-sha256/v1: canonical JSON rows of the declared columns (text casts), sorted, length-prefixed"
KEY_BYTES = 32


def content_commitment(key: bytes, rows: Iterable[Sequence[Any]]) -> str:
    """The commitment of the module docstring over ``rows`` (each a sequence of text-or-None values)."""
    encoded = sorted(json.dumps(list(r), ensure_ascii=False, separators=(",", ":")).encode() for r in rows)
    mac = hmac.new(key, digestmod=hashlib.sha256)
    for r in encoded:
        mac.update(len(r).to_bytes(8, "big"))
        mac.update(r)
    return mac.hexdigest()


def commitment_key(state: Path, dataset: str) -> bytes:
    """This node's key for ``dataset``: read, or drawn from the CSPRNG and written 0600 once."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", dataset.lower())
    path = Path(state) / f"commitment-{safe}.key"
    if path.exists():
        key = path.read_bytes()
        if len(key) != KEY_BYTES:
            raise XdpError(f"the commitment key {path.name} is damaged ({len(key)} bytes, expected {KEY_BYTES})")
        return key
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_bytes(KEY_BYTES)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another task made it first: use that one
        return commitment_key(state, dataset)
    with os.fdopen(fd, "wb") as f:
        f.write(key)
        f.flush()
        os.fsync(f.fileno())
    return key


def _text_rows(dataset: DatasetSpec, source: Any) -> list[tuple[Any, ...]]:
    names = source.column_names()
    actual = []
    for c in dataset.columns:
        match = next((n for n in names if n.lower() == c.name.lower()), None)
        if match is None:
            raise BadRequest(f"column '{c.name}' missing from the source of dataset {dataset.name!r}")
        actual.append(match)
    cols = ", ".join('CAST("' + a.replace('"', '""') + '" AS VARCHAR)' for a in actual)
    return source.execute(f"SELECT {cols} FROM {source.relation_sql()}")  # type: ignore[no-any-return]


def commit(node: NodeContext, job_id: str, request: Commit) -> Committed:
    """The content commitment of one of this node's datasets. Refuses with a message that names no
    value (engine messages can quote a line of a file, so they are not passed on)."""
    dataset = next((d for d in node.manifest.datasets if d.name.lower() == request.dataset.lower()), None)
    if dataset is None:
        raise BadRequest(f"this node declares no dataset {request.dataset!r}")
    try:
        source = open_source(node.manifest, dataset)
    except SourceError:
        raise BadRequest(f"the source of dataset {dataset.name!r} could not be opened") from None
    try:
        if not isinstance(source, DuckDBSource | PostgresSource):
            raise BadRequest(f"content commitments are offered for CSV, Parquet and PostgreSQL sources, not "
                             f"{dataset.source_ref.kind}")
        try:
            rows = _text_rows(dataset, source)
        except SourceError:
            raise BadRequest(f"the source of dataset {dataset.name!r} could not be read") from None
    finally:
        source.close()
    key = commitment_key(node.manifest.state_path, dataset.name)
    return Committed(commitment=content_commitment(key, rows), scheme=SCHEME)
