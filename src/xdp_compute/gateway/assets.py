"""Data assets (issue #17, item 1): a dataset registered as an asset, version by version, in the release log.

The log is the registry (確權 and traceability without a blockchain). Registering writes one
``asset_registered`` entry: owner, description, classification and grade, categories, schema
with the declared bounds (from the owner's manifest declaration), licence, a commitment to the
metadata (SHA-256 of its canonical JSON) and a commitment to the data content that each of the
owner's nodes computed over its own rows (``node/tasks/commit.py``: a keyed hash; no row and no
count leaves the node). Registering again adds version n+1, which names the log index of
version n. ``xdp audit verify`` checks these entries like every other: inclusion in the signed
Merkle tree and consistency with earlier heads, entry by entry, whatever their kind.

Only the dataset's owner registers (migration 0002: the first holder to declare it). Every one
of the owner's nodes that declares the dataset must be online: a commitment of some of them only
would not commit to the asset.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from typing import Any

from sqlalchemy import func, select

from xdp_compute.audit import canonical_json
from xdp_compute.contract.tasks import Commit, Committed
from xdp_compute.errors import Conflict, Forbidden, NotFound, XdpError
from xdp_compute.gateway import models as m
from xdp_compute.gateway.hub import NodeDropped, NodeFailed
from xdp_compute.gateway.services import Services
from xdp_compute.gateway.store import PrincipalView

ASSET_REGISTERED = "asset_registered"
COLUMN_FIELDS = ("name", "type", "min", "max", "values", "uses")


def declared_schema(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """The columns with their types, uses and declared bounds (public metadata of the manifest)."""
    return [{k: c[k] for k in COLUMN_FIELDS if c.get(k) is not None} for c in spec.get("columns") or []]


def content_commitment(per_node: dict[str, str]) -> str:
    """The asset's content commitment: SHA-256 of the canonical JSON of {node: its commitment}."""
    return hashlib.sha256(canonical_json(per_node)).hexdigest()


class AssetRegistry:
    """Register, list and trace assets; the rows of ``asset_versions`` index the log entries."""

    def __init__(self, svc: Services) -> None:
        self.svc, self.store, self.log = svc, svc.store, svc.release_log

    async def register(self, who: PrincipalView, body: dict[str, Any]) -> dict[str, Any]:
        """Register (or re-register) ``body["dataset"]``; returns the new version's entry."""
        parts = await asyncio.to_thread(self.store.lookup_parts, body["dataset"])
        name = parts[0]["spec"]["name"] if parts else body["dataset"]
        with self.store.read() as s:
            ds = s.get(m.Dataset, name)
        if ds is None or not parts:
            raise NotFound(f"no dataset named {body['dataset']!r}")
        if ds.owner_id != who.id:
            raise Forbidden(f"only the owner of dataset {name!r} may register it as an asset")
        own = [p for p in parts if p["holder_id"] == who.id]
        if not own:  # no node of the owner's holds it: the commitment would be to no rows, for any data
            raise Conflict(f"no node of yours declares dataset {name!r}: an asset commits to the owner's own rows")
        # Online in the store and connected to this gateway (a node never heard from cannot answer).
        offline = [p["node"] for p in own if not p["online"] or not self.svc.hub.is_online(p["node_id"])]
        if offline:
            raise Conflict(f"node(s) {', '.join(offline)} of dataset {name!r} are offline: every one of the "
                           "owner's nodes must commit to its rows")
        per_node = {}
        for p in own:
            per_node[p["node"]] = await self._commit(p, name)
        spec = own[0]["spec"]
        metadata = {
            "dataset": name, "owner": who.name, "description": body["description"],
            "classification": spec.get("classification"), "grade": body.get("grade"),
            "categories": sorted(spec.get("categories") or []), "schema": declared_schema(spec),
            "licence": body["licence"], "nodes": sorted(per_node),
        }
        entry: dict[str, Any] = {
            "kind": ASSET_REGISTERED, "principal": who.name, "datasets": [name], "asset": metadata,
            "metadata_commitment": hashlib.sha256(canonical_json(metadata)).hexdigest(),
            "content_commitment": content_commitment(per_node), "node_commitments": per_node,
            "commitment_scheme": "per node: HMAC-SHA256 under the node's own key over its rows in canonical "
                                 "order (node/tasks/commit.py); asset: SHA-256 of the canonical JSON of them",
        }
        return await asyncio.to_thread(self._append, who, name, entry)

    async def _commit(self, part: dict[str, Any], dataset: str) -> str:
        try:
            reply = await self.svc.hub.ask(part["node_id"], "", Commit(dataset=dataset),
                                           self.svc.settings.round_timeout_seconds * 6)
        except NodeDropped as e:
            raise Conflict(f"node {part['node']!r} did not answer: {e}") from None
        except NodeFailed as e:
            raise Conflict(f"node {part['node']!r} could not commit to its rows: {e.error}") from None
        except XdpError as e:
            raise Conflict(f"node {part['node']!r} answered outside the task contract: {e.detail}") from None
        assert isinstance(reply, Committed)
        return reply.commitment

    def _append(self, who: PrincipalView, name: str, entry: dict[str, Any]) -> dict[str, Any]:
        """Version n+1 naming version n's log index, in the transaction that appends its entry."""
        with self.log.transaction() as s:
            last = s.scalar(select(m.AssetVersion).where(m.AssetVersion.dataset_name == name)
                            .order_by(m.AssetVersion.version.desc()).limit(1))
            entry["version"] = (last.version + 1) if last is not None else 1
            entry["previous_index"] = last.log_index if last is not None else None
            stored = self.log.append(s, entry)
            s.add(m.AssetVersion(dataset_name=name, version=entry["version"], log_index=stored["index"],
                                 owner_id=who.id, content_commitment=entry["content_commitment"],
                                 metadata_commitment=entry["metadata_commitment"], registered_at=stored["time"]))
        return stored

    def history(self, dataset: str) -> list[dict[str, Any]]:
        """Every version of the asset, oldest first, as its log entries (one query)."""
        with self.store.read() as s:
            rows = s.execute(select(m.LogEntry.entry_json).join(m.AssetVersion, m.AssetVersion.log_index == m.LogEntry.idx)
                             .where(func.lower(m.AssetVersion.dataset_name) == dataset.lower())
                             .order_by(m.AssetVersion.version)).scalars().all()
        if not rows:
            raise NotFound(f"no asset registered for dataset {dataset!r}")
        return [json.loads(r) for r in rows]

    def latest(self) -> list[dict[str, Any]]:
        """The newest version of every registered asset, by dataset name."""
        with self.store.read() as s:
            newest = (select(m.AssetVersion.dataset_name, func.max(m.AssetVersion.version).label("v"))
                      .group_by(m.AssetVersion.dataset_name).subquery())
            rows = s.execute(select(m.LogEntry.entry_json)
                             .join(m.AssetVersion, m.AssetVersion.log_index == m.LogEntry.idx)
                             .join(newest, (newest.c.dataset_name == m.AssetVersion.dataset_name)
                                   & (newest.c.v == m.AssetVersion.version))
                             .order_by(m.AssetVersion.dataset_name)).scalars().all()
        return [json.loads(r) for r in rows]
