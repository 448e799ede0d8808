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


def _check(value: Any, path: str, depth: int, active: set[int]) -> None:
    """Reject anything that is not plain, finite, acyclic JSON; ``path`` names the culprit."""
    if depth > _MAX_DEPTH:
        raise CanonicalJsonError(f"{path}: nested deeper than {_MAX_DEPTH} levels")
    if value is None or isinstance(value, (bool, int)):
        return
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise CanonicalJsonError(f"{path}: string is not valid Unicode ({exc.reason})") from None
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise CanonicalJsonError(f"{path}: {value!r} is not allowed in JSON")
        return
    if isinstance(value, (Mapping, list, tuple)):
        if id(value) in active:
            raise CanonicalJsonError(f"{path}: circular reference")
        active.add(id(value))
        if isinstance(value, Mapping):
            for key, item in value.items():
                if not isinstance(key, str):
                    raise CanonicalJsonError(
                        f"{path}: object key {key!r} is a {type(key).__name__}, not a string"
                    )
                _check(key, f"{path}.{key}", depth + 1, active)
                _check(item, f"{path}.{key}", depth + 1, active)
        else:
            for i, item in enumerate(value):
                _check(item, f"{path}[{i}]", depth + 1, active)
        active.discard(id(value))
        return
    raise CanonicalJsonError(f"{path}: {type(value).__name__} is not a JSON type")


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
    _check(obj, "$", 0, set())
    text = json.dumps(
        _plain(obj),
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
    )
    return text.encode("utf-8")
