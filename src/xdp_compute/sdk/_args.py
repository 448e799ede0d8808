"""Checks on SDK arguments, made before anything is sent: a bad argument never reaches the gateway.

``epsilon="1"`` used to be sent (and spent) and ``epsilon=nan`` died inside httpx's JSON encoder;
here both are an ``InvalidArgument`` naming the argument. The gateway checks again (its border).
"""

from __future__ import annotations

import math
from numbers import Real
from typing import Any

from xdp_compute.errors import InvalidArgument


def real(name: str, value: Any) -> float:
    """A finite real number (not a bool, not a string)."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise InvalidArgument(f"{name} must be a number, not {type(value).__name__} {value!r}")
    out = float(value)
    if not math.isfinite(out):
        raise InvalidArgument(f"{name} must be finite, not {out}")
    return out


def positive(name: str, value: Any) -> float:
    out = real(name, value)
    if out <= 0:
        raise InvalidArgument(f"{name} must be greater than 0, not {out:g}")
    return out


def epsilon(value: Any, name: str = "epsilon") -> float:
    return positive(name, value)


def delta(value: Any, name: str = "delta") -> float:
    out = real(name, value)
    if not 0 < out < 1:
        raise InvalidArgument(f"{name} must be between 0 and 1 (exclusive), not {out:g}")
    return out


def count(name: str, value: Any, *, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"{name} must be an integer, not {type(value).__name__} {value!r}")
    if not low <= value <= high:
        raise InvalidArgument(f"{name} must be between {low} and {high}, not {value}")
    return value


def text(name: str, value: Any, *, max_len: int) -> str:
    if not isinstance(value, str):
        raise InvalidArgument(f"{name} must be a string, not {type(value).__name__}")
    if not value.strip():
        raise InvalidArgument(f"{name} must not be empty")
    if len(value) > max_len:
        raise InvalidArgument(f"{name} is longer than {max_len} characters")
    return value


def query_body(sql: Any, eps: Any, dlt: Any, dry_run: Any, idempotency_key: Any, level: Any) -> dict[str, Any]:
    """The JSON body of ``POST /v1/queries``, every member checked."""
    if not isinstance(dry_run, bool):
        raise InvalidArgument(f"dry_run must be True or False, not {dry_run!r}")
    lvl = real("level", level)
    if not 0 < lvl < 1:
        raise InvalidArgument(f"level must be between 0 and 1 (exclusive), e.g. 0.95, not {lvl:g}")
    return {"sql": text("sql", sql, max_len=20000), "epsilon": epsilon(eps),
            "delta": None if dlt is None else delta(dlt), "dry_run": dry_run,
            "idempotency_key": None if idempotency_key is None else text("idempotency_key", idempotency_key,
                                                                          max_len=200),
            "level": lvl}
