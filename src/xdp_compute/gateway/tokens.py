"""Bearer-token administration: issue with a default expiry, list (never a secret), revoke, rotate.

A principal has one token; only its SHA-256 is stored (CONVENTIONS "Tokens stored hashed").
Rotation replaces the hash in one transaction, so the old secret stops working the moment the
new one exists, and the principal (its budget, its nodes, its log entries) stays the same.

Both write a new auth epoch in the same transaction (``Store.bump_auth_epoch``): a running
gateway, which caches authenticated tokens in memory, reads that epoch on every call and drops
its cache when it changed, so revocation and rotation done from another process (the admin CLI
writes the database directly) still take effect on the very next call.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

from sqlalchemy import select

from xdp_compute.errors import BadRequest, NotFound
from xdp_compute.gateway import models as m
from xdp_compute.gateway.store import Store, hash_token

# Analysts' tokens expire by default (issue #12): a forgotten analyst token stops working by itself.
DEFAULT_EXPIRY_DAYS: dict[str, float] = {"analyst": 90.0}
DAY = 86400.0


def ttl_for(role: str, expires_days: float | None = None, ttl_seconds: float | None = None) -> float | None:
    """Seconds until a new token of ``role`` expires: explicit days or seconds, else the role's default.

    ``0`` (either way) means never; a role without a default never expires unless told.
    """
    if ttl_seconds is not None and expires_days is not None:
        raise BadRequest("give --expires-days or --ttl, not both")
    if ttl_seconds is not None:
        if ttl_seconds < 0:
            raise BadRequest("--ttl must be >= 0 seconds (0: never expires)")
        return ttl_seconds or None
    if expires_days is not None:
        if expires_days < 0:
            raise BadRequest("--expires-days must be >= 0 (0: never expires)")
        return expires_days * DAY or None
    days = DEFAULT_EXPIRY_DAYS.get(role)
    return days * DAY if days else None


def issue_token(store: Store, role: str, name: str, region: str, expires_days: float | None = None,
                ttl_seconds: float | None = None) -> str:
    """Create a principal and return its bearer token (the only time the secret exists in clear)."""
    return store.create_principal(role, name, region, ttl_seconds=ttl_for(role, expires_days, ttl_seconds))


def _status(p: m.Principal, now: float) -> str:
    if p.revoked:
        return "revoked"
    if p.expires_at is not None and p.expires_at < now:
        return "expired"
    return "active"


def list_tokens(store: Store) -> list[dict[str, Any]]:
    """Every principal with its token's state; no secret and no hash."""
    now = time.time()
    with store.read() as s:
        rows = s.scalars(select(m.Principal).order_by(m.Principal.role, m.Principal.name)).all()
        return [{"name": p.name, "role": p.role, "region": p.region, "created_at": p.created_at,
                 "expires_at": p.expires_at, "status": _status(p, now)} for p in rows]


def _named(s: Any, name: str) -> m.Principal:
    p = s.scalar(select(m.Principal).where(m.Principal.name == name))
    if p is None:
        raise NotFound(f"no principal named {name!r} (see xdp admin list-tokens)")
    return p


def revoke_token(store: Store, name: str) -> bool:
    """Revoke ``name``'s token for good; True if it was not revoked already."""
    with store.write() as s:
        p = _named(s, name)
        was = bool(p.revoked)
        p.revoked = True
        store.bump_auth_epoch(s)
    store.invalidate_auth()  # this process's cache at once (the epoch covers every other process)
    return not was


def rotate_token(store: Store, name: str, expires_days: float | None = None,
                 ttl_seconds: float | None = None) -> str:
    """Issue a new secret for ``name``; the old one is refused from this transaction on."""
    token = "xdp_" + secrets.token_urlsafe(32)
    with store.write() as s:
        p = _named(s, name)
        if p.revoked:
            raise BadRequest(f"{name!r} is revoked: rotation does not bring it back (create a new principal)")
        ttl = ttl_for(p.role, expires_days, ttl_seconds)
        p.token_hash = hash_token(token)
        p.expires_at = time.time() + ttl if ttl else None
        store.bump_auth_epoch(s)
    store.invalidate_auth()
    return token
