"""Canonical join keys: the bytes both holders hash for the same person (docs/private-joins.md).

Both holders must turn one person's identifier into the same bytes, or the person never matches;
nothing else about a key is ever compared. Rules, per ``join_domain``:

1. Unicode NFC (a composed "é" and "e" + combining accent are one key), surrounding whitespace
   removed; every domain.
2. ``phone``: keep the digits and a leading ``+`` ("+86 138-0000-0000" == "+8613800000000").
3. ``email``: lower-cased (the local part is case-insensitive at every provider we know of).
4. Any other domain: as written after step 1; case-sensitive (a citizen id's letters are data).

An empty key after normalisation is no key: the row does not join (``None``).
"""

from __future__ import annotations

import re
import unicodedata

__all__ = ["normalise_key"]

# Which domain names a manifest may declare is the manifest's business (domain.manifest.JOIN_DOMAIN).

_NOT_PHONE = re.compile(r"[^0-9]")


def normalise_key(domain: str, value: object) -> bytes | None:
    """The canonical UTF-8 bytes of ``value`` as a key of ``domain``, or None if it is no key."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise TypeError("a join key is text or an integer, not a bool")
    if isinstance(value, float):
        # 1.0 and "1" would silently differ between a CSV and a database; refuse instead.
        raise TypeError("a join key is text or an integer, not a float")
    text = unicodedata.normalize("NFC", str(value)).strip()  # rule 1
    if domain == "phone":  # rule 2
        text = ("+" if text.startswith("+") else "") + _NOT_PHONE.sub("", text)
        if text in ("", "+"):
            return None
    elif domain == "email":  # rule 3
        text = text.lower()
    return text.encode("utf-8") if text else None
