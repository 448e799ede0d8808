"""The bytes of a lookup key, written the same way by the holder's node and the analyst's SDK."""

from __future__ import annotations

from typing import Any

from xdp_compute.crypto.psi.keys import normalise_key

__all__ = ["lookup_key_bytes"]

_TEXT_RULES = "lookup"  # normalise_key's rules for a domain other than phone and email: NFC, trimmed


def lookup_key_bytes(key_type: str, value: Any) -> bytes | None:
    """The canonical bytes of a key of a ``text`` or ``int`` column, or None (no key).

    Text: Unicode NFC, surrounding whitespace removed (``normalise_key``); case kept. Int: the
    decimal of the integer ("007" and 7.0 are 7). None: empty, or not an integer in an int column;
    a record without a key cannot be looked up.
    """
    if value is None or isinstance(value, bool):
        return None
    if key_type == "int":
        if isinstance(value, float):  # the node's engine reads numeric columns as DOUBLE
            return str(int(value)).encode() if value.is_integer() else None
        text = str(value).strip()
        try:
            return str(int(text)).encode() if text and "." not in text else None
        except ValueError:
            return None
    if key_type != "text":
        raise ValueError(f"a lookup key is text or int, not {key_type!r}")
    return normalise_key(_TEXT_RULES, str(value))
