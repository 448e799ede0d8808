"""Keyword PIR for hidden lookups (issue #17): an OPRF (RFC 9497) and the encoded, padded table.

The protocol and what each party learns are in docs/hidden-lookup.md.
"""

from xdp_compute.crypto.pir.keys import lookup_key_bytes
from xdp_compute.crypto.pir.oprf import OUTPUT_BYTES, POINT_BYTES, Blind, OprfKey, blind, finalize
from xdp_compute.crypto.pir.table import (
    LabelTooLong,
    LookupTable,
    Selection,
    TableError,
    build_selected,
    build_table,
    encode_label,
    entry_bytes,
    select_records,
)

__all__ = [
    "OUTPUT_BYTES",
    "POINT_BYTES",
    "Blind",
    "LabelTooLong",
    "LookupTable",
    "OprfKey",
    "Selection",
    "TableError",
    "blind",
    "build_selected",
    "build_table",
    "encode_label",
    "entry_bytes",
    "finalize",
    "lookup_key_bytes",
    "select_records",
]
