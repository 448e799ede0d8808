"""Deterministic ("canonical") JSON bytes for release-log entries and signed messages.

The bytes of a log entry are its Merkle leaf data, so anyone who downloads the entry as JSON
must be able to re-encode it to exactly the bytes the gateway hashed. The rules:

- object keys sorted by Unicode code point, no insignificant whitespace (``,`` and ``:``);
- UTF-8 output, non-ASCII characters written as themselves (no ``\\u`` escapes except the
  ones JSON requires for control characters, ``"`` and ``\\``);
- integers in decimal; floats as Python's shortest round-trip ``repr`` (``0.1``, ``1e+16``,
  ``-0.0``), so ``json.loads`` gives back the identical float;
- only JSON types: ``dict`` with ``str`` keys, ``list``/``tuple``, ``str``, ``int``,
  ``float``, ``bool``, ``None``. NaN, ±Infinity, non-string keys (which ``json`` would
  silently coerce, letting ``{1: x}`` and ``{"1": x}`` collide), cycles, lone surrogates and
  any other type are rejected with :class:`CanonicalJsonError`.

This is a strict subset of what ``json.loads`` produces, so ``canonical_json(json.loads(b))``
is stable for any ``b`` this function emitted. It is not RFC 8785 (JCS): key order here is by
code point, not UTF-16 unit, and floats use Python's repr; both sides of the log use this
module, which is what matters for reproducibility.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from xdp_compute.errors import BadRequest

__all__ = ["CanonicalJsonError", "canonical_json"]

_MAX_DEPTH = 64


class CanonicalJsonError(BadRequest, ValueError):
    """A value cannot be encoded as canonical JSON (wrong type, NaN/Infinity, cycle, ...)."""

    slug, title = "not-canonical-json", "Value is not canonical JSON"


class _Reject(Exception):
    """Internal: carries the reason up the walk; each level prepends its key to the path."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.path: list[str] = []


def _walk(value: Any, depth: int, active: set[int]) -> bool:
    """Reject anything that is not plain, finite, acyclic JSON.

    Returns True when a non-``dict`` Mapping was seen (``json`` needs it copied into a dict).
    Exact-type checks first: this runs on every log entry, so the common case stays cheap.
    """
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:
        return False
    if kind is float:
        if not math.isfinite(value):
            raise _Reject(f"{value!r} is not allowed in JSON")
        return False
    if kind is dict or kind is list or kind is tuple or isinstance(value, (Mapping, list, tuple)):
        if depth >= _MAX_DEPTH:
            raise _Reject(f"nested deeper than {_MAX_DEPTH} levels")
        if id(value) in active:
            raise _Reject("circular reference")
        active.add(id(value))
        needs_copy = not isinstance(value, dict) and isinstance(value, Mapping)
        if isinstance(value, Mapping):
            for key, item in value.items():
                if not isinstance(key, str):
                    raise _Reject(f"object key {key!r} is a {type(key).__name__}, not a string")
                try:
                    needs_copy |= _walk(item, depth + 1, active)
                except _Reject as exc:
                    exc.path.append(f".{key}")
                    raise
        else:
            for i, item in enumerate(value):
                try:
                    needs_copy |= _walk(item, depth + 1, active)
                except _Reject as exc:
                    exc.path.append(f"[{i}]")
                    raise
        active.discard(id(value))
        return needs_copy
    if isinstance(value, (str, int)):  # str/int subclasses (enums): json writes their value
        return False
    if isinstance(value, float):
        return _walk(float(value), depth, active)
    raise _Reject(f"{type(value).__name__} is not a JSON type")


def _plain(value: Any) -> Any:
    """Copy Mapping subclasses into dicts so ``json`` accepts them (it needs real dicts)."""
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def canonical_json(obj: Any) -> bytes:
    """Encode ``obj`` as canonical JSON bytes (sorted keys, no whitespace, UTF-8).

    Raises :class:`CanonicalJsonError` (a ``BadRequest`` and a ``ValueError``) naming the
    offending path, e.g. ``$.cost.epsilon: nan is not allowed in JSON``.
    """
    try:
        needs_copy = _walk(obj, 0, set())
    except _Reject as exc:
        path = "$" + "".join(reversed(exc.path))
        raise CanonicalJsonError(f"{path}: {exc.reason}") from None
    text = json.dumps(
        _plain(obj) if needs_copy else obj,
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
    )
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        # Lone surrogates survive json.dumps(ensure_ascii=False) but are not UTF-8.
        raise CanonicalJsonError(f"$: string is not valid Unicode ({exc.reason})") from None
