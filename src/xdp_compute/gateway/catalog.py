"""Catalog views and mock previews, built from metadata alone (never from data)."""

from __future__ import annotations

import secrets
from typing import Any

import numpy as np

from xdp_compute.domain.manifest import DatasetSpec
from xdp_compute.errors import BadRequest, NotFound
from xdp_compute.gateway.store import PrincipalView, Store

MAX_MOCK_ROWS = 1000


def visible_parts(store: Store, name: str, who: PrincipalView) -> list[dict[str, Any]]:
    """The dataset's parts this principal may see; 404 when it may see none (or none exist)."""
    parts = store.dataset_parts(name)
    if who.role == "holder":
        # The owner sees every part of its dataset; a member sees its own parts only.
        parts = [p for p in parts if who.id in (p["holder_id"], p["owner_id"])]
    if not parts:
        raise NotFound(f"no dataset named {name!r}")
    return parts


def dataset_view(parts: list[dict[str, Any]], members: dict[str, Any] | None = None) -> dict[str, Any]:
    """One catalog entry: owner and members, schema, classification, the owner's policy and the
    nodes; no data-derived figure. ``members`` is ``Store.dataset_membership`` of the dataset."""
    spec = DatasetSpec.from_dict(parts[0]["spec"])
    return {
        "name": spec.name,
        "owner": (members or {}).get("owner"),
        "members": [x["holder"] for x in (members or {}).get("members", [])],
        "classification": spec.classification,
        "categories": list(spec.categories),
        "columns": [c.to_dict() for c in spec.columns],
        "policy": {
            "min_group_size": max(p["spec"]["min_group_size"] for p in parts),
            "require_approval": any(p["spec"]["require_approval"] for p in parts),
            "allowed_analysts": parts[0]["spec"].get("allowed_analysts"),
            "allowed_regions": parts[0]["spec"].get("allowed_regions"),
        },
        "nodes": [{"name": p["node"], "region": p["region"], "online": p["online"],
                   "role": p.get("role", "owner"), "epsilon_budget": p["eps_budget"], "delta": p["delta_budget"]}
                  for p in parts],
    }


def mock_rows(spec: DatasetSpec, rows: int) -> list[dict[str, Any]]:
    """``rows`` synthetic rows drawn uniformly from declared bounds and values only."""
    if not 1 <= rows <= MAX_MOCK_ROWS:
        raise BadRequest(f"rows must be between 1 and {MAX_MOCK_ROWS}")
    rng = np.random.default_rng(secrets.randbits(64))  # synthetic, not privacy-relevant
    out: list[dict[str, Any]] = [{} for _ in range(rows)]
    for c in spec.columns:
        if c.type == "int":
            vals: list[Any] = rng.integers(int(c.min or 0), int(c.max or 0) + 1, rows).tolist()
        elif c.type == "float":
            vals = np.round(rng.uniform(c.min or 0.0, c.max or 0.0, rows), 2).tolist()
        elif c.type == "bool":
            vals = rng.integers(0, 2, rows).astype(bool).tolist()
        elif c.type == "category":
            vals = [c.values[i] for i in rng.integers(0, len(c.values or ()), rows)] if c.values else [None] * rows
        else:
            vals = [f"mock-{c.name}-{i + 1}" for i in range(rows)]
        for r, v in zip(out, vals, strict=True):
            r[c.name] = v
    return out
