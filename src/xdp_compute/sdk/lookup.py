"""Hidden lookups in the SDK (issue #17): blind the key, ask the holder to evaluate, match locally.

The analyst's side of docs/hidden-lookup.md (RFC 9497 OPRF; Kales et al. 2019 with labels):

1. ``POST /v1/lookups/{product}/table-info``: the current table version (nothing counted).
2. The table, once per version (``GET .../tables/{version}/parts/{n}``), kept with the client.
3. ``Blind``: ``B = r·H(key)``; only ``B`` leaves this process, never the key.
4. ``POST .../evaluate``: the holder's ``Z = k·B`` (one call counted, one log entry), with a
   proof (RFC 9497 VOPRF) checked against the ``pk`` in the table's header: a holder that
   answers with another key is caught, not believed.
5. ``Finalize`` and look the result up in the table: the record's declared columns, or "not found".

Whether the key matched is known here only: the requests of a present and an absent key have
the same shape and size.
"""

from __future__ import annotations

import base64
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from xdp_compute import errors as E
from xdp_compute.contract import api as A
from xdp_compute.crypto.pir import LookupTable, TableError, blind, finalize, lookup_key_bytes
from xdp_compute.crypto.pir.oprf import verify_proof

if TYPE_CHECKING:
    from xdp_compute.sdk.client import Client

__all__ = ["LookupResult", "hidden_lookup"]

_STALE = "lookup-version-stale"
MAX_KEY_CHARS = 1000
# Tables this process fetched, per client and product: the newest version only.
_TABLES: weakref.WeakKeyDictionary[Any, dict[str, LookupTable]] = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class LookupResult:
    """The outcome of one hidden lookup: ``found`` and the ``record`` (declared columns), or not found.

    ``record`` holds typed values (int, float, bool, text; None where the holder's cell was empty).
    ``log_index`` and ``receipt`` name the release-log entry of the call (it holds no key and no
    outcome); ``calls_left`` is what the subscription has left.
    """

    product: str
    found: bool
    record: dict[str, Any] | None
    columns: list[str]
    version: str
    log_index: int
    calls_left: float
    receipt: dict[str, Any] = field(repr=False, default_factory=dict)

    def __bool__(self) -> bool:
        return self.found

    def to_dict(self) -> dict[str, Any]:
        return {"product": self.product, "found": self.found, "record": self.record, "columns": self.columns,
                "version": self.version, "log_index": self.log_index, "calls_left": self.calls_left}


@dataclass(frozen=True)
class _Raw:
    """A request as ``BaseClient._read`` reads its error answer (this module must not import the client)."""

    method: str
    path: str
    parse: Any = None


def _path(product: str) -> str:
    if not isinstance(product, str) or not product or len(product) > 200:
        raise E.InvalidArgument("product: a product id (1 to 200 characters)")
    return f"/v1/lookups/{quote(product, safe='')}"


def _fetch_table(client: Client, product: str, info: A.LookupTableInfo) -> LookupTable:
    cached = _TABLES.setdefault(client, {}).get(product)
    if cached is not None and cached.version.hex() == info.version:
        return cached
    chunks = []
    for part in range(info.parts):
        path = f"{_path(product)}/tables/{info.version}/parts/{part}"
        resp = client._http.get(path)
        if resp.status_code >= 400:
            client._read(_Raw("GET", path), resp)  # raises the problem's XdpError subclass
        chunks.append(resp.content)
    try:
        table = LookupTable.parse(b"".join(chunks))
    except TableError as e:
        raise E.ProtocolAborted(f"the lookup table of product {product!r} is malformed: {e}") from None
    if table.version.hex() != info.version or table.capacity != info.capacity:
        raise E.ProtocolAborted(f"the lookup table of product {product!r} is not the version announced")
    _TABLES[client][product] = table
    return table


def _stale(e: E.XdpError) -> bool:
    return str((getattr(e, "problem", None) or {}).get("type", "")).endswith("/" + _STALE)


def hidden_lookup(client: Client, product: str, key: str | int, columns: list[str] | None = None) -> LookupResult:
    """``Client.lookup``: the steps of the module docstring; one retry if the table changed meanwhile."""
    if isinstance(key, bool) or not isinstance(key, str | int) or len(str(key)) > MAX_KEY_CHARS:
        raise E.InvalidArgument(f"key: text or an integer, at most {MAX_KEY_CHARS} characters")
    if columns is not None and (not isinstance(columns, list) or not columns
                                or not all(isinstance(c, str) for c in columns)):
        raise E.InvalidArgument("columns: a non-empty list of column names")
    for attempt in (1, 2):
        info = A.LookupTableInfo.model_validate(client._post(f"{_path(product)}/table-info"))  # step 1
        if columns is not None:
            outside = [c for c in columns if c not in info.columns]
            if outside:  # refused before anything is counted
                raise E.InvalidArgument(f"columns: {outside[0]!r} is not a column of product {product!r} "
                                        f"(it returns {', '.join(info.columns)})")
        key_bytes = lookup_key_bytes(info.key_type, key)
        if key_bytes is None:
            raise E.InvalidArgument(f"key: not a valid {info.key_type} key")
        table = _fetch_table(client, product, info)  # step 2
        state = blind(key_bytes)  # step 3
        try:
            out = A.LookupEvaluation.model_validate(client._post(  # step 4
                f"{_path(product)}/evaluate",
                json={"version": info.version, "point": base64.b64encode(state.blinded).decode()}))
        except E.XdpError as e:
            if attempt == 1 and _stale(e):
                continue  # the data changed between steps 1 and 4: fetch the new version once
            raise
        evaluated, proof = base64.b64decode(out.point), base64.b64decode(out.proof)
        if not verify_proof(table.public_key, state.blinded, evaluated, proof):  # RFC 9497 VOPRF
            raise E.ProtocolAborted(f"the holder's answer for product {product!r} was not made with the key its "
                                    "table was published under; nothing was looked up (the call was counted)")
        record = table.find(finalize(state, evaluated))  # step 5
        shown = columns or info.columns
        if record is not None:
            record = {c: record.get(c) for c in shown}
        return LookupResult(product=product, found=record is not None, record=record, columns=list(shown),
                            version=out.version, log_index=out.log_index, calls_left=out.calls_left,
                            receipt=out.receipt)
    raise E.ProtocolAborted(f"the lookup table of product {product!r} changed twice during one lookup; retry")
