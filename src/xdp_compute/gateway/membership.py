"""Dataset owners and members (issue #12: co-holders are strangers).

The first holder to register a dataset name owns it. Another holder's node may declare that
dataset only once the owner has invited that holder; a stranger's node is refused at
registration with a message naming the owner. The owner's policy fields
(``domain.policy.OWNER_POLICY_FIELDS``) apply to every member's rows; a member keeps its own
budget (its own ledger), and approvals are the owner's alone.

Functions here run inside the store's transactions (``Store.write()`` / ``Store.read()``).
"""

from __future__ import annotations

import json
import time
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from xdp_compute.domain.manifest import DatasetSpec
from xdp_compute.domain.policy import owner_policy
from xdp_compute.errors import BadRequest, Conflict, Forbidden, NotFound, SchemaConflict
from xdp_compute.gateway import models as m

DEFAULT_MAX_NODES_PER_HOLDER = 4


def is_member(s: Session, dataset: str, holder_id: str) -> bool:
    return s.scalar(select(m.DatasetMember.id).where(m.DatasetMember.dataset_name == dataset,
                                                     m.DatasetMember.holder_id == holder_id)) is not None


def check_joining(s: Session, holder: Any, node: m.Node | None, spec: DatasetSpec, ds: m.Dataset,
                  max_nodes_per_holder: int) -> bool:
    """May ``holder``'s ``node`` declare the existing dataset ``ds``? True if it is the owner's.

    Raises Forbidden naming the owner for a stranger, Conflict past the per-holder node cap and
    SchemaConflict when a member declares more rows than the owner sized the dataset for.
    """
    owner_id = ds.owner_id
    if owner_id is None:  # a row older than ownership that no node holds: the first declarer claims it
        ds.owner_id = owner_id = holder.id
    owner = s.get(m.Principal, owner_id)
    owner_name = owner.name if owner is not None else "?"
    mine = owner_id == holder.id
    if not mine and not is_member(s, ds.name, holder.id):
        raise Forbidden(
            f"dataset {ds.name!r} is owned by holder {owner_name!r}; holder {holder.name!r} is not a member. "
            f"Ask {owner_name!r} to invite you (xdp datasets invite {ds.name} {holder.name}), "
            "or give your dataset another name", dataset=ds.name, owner=owner_name)
    q = (select(func.count()).select_from(m.NodeDataset).join(m.Node, m.Node.id == m.NodeDataset.node_id)
         .where(m.NodeDataset.dataset_name == ds.name, m.Node.holder_id == holder.id))
    if node is not None:
        q = q.where(m.Node.id != node.id)
    if (s.scalar(q) or 0) >= max_nodes_per_holder:
        raise Conflict(
            f"holder {holder.name!r} already runs {max_nodes_per_holder} node(s) for dataset {ds.name!r}: "
            f"at most {max_nodes_per_holder} node(s) per holder per dataset (gateway setting "
            "XDP_MAX_NODES_PER_HOLDER); more nodes of one holder would add no party", dataset=ds.name)
    if not mine:
        cap = json.loads(ds.policy_json or "{}").get("max_rows")
        if cap is not None and spec.max_rows > cap:
            raise SchemaConflict(
                f"dataset {ds.name!r}: max_rows {spec.max_rows} here exceeds the owner's max_rows {cap}; "
                "the owner's plans are sized for at most that many rows per node", dataset=ds.name,
                differences=[f"max_rows: {spec.max_rows} here vs {cap} declared by the owner"])
    return mine


def claim(s: Session, holder_id: str, spec: DatasetSpec, now: float) -> m.Dataset:
    """A new dataset name: this holder owns it, under the policy its node declared."""
    ds = m.Dataset(name=spec.name, schema_json=json.dumps(spec.schema()), created_at=now, owner_id=holder_id,
                   policy_json=json.dumps(owner_policy(spec.to_dict())))
    s.add(ds)
    s.flush()
    return ds


# ------------------------------------------------------------------ the members API
def _dataset(s: Session, name: str) -> m.Dataset:
    ds = s.get(m.Dataset, name)
    if ds is None:
        ds = s.scalar(select(m.Dataset).where(func.lower(m.Dataset.name) == name.lower()))
    if ds is None:
        raise NotFound(f"no dataset named {name!r}")
    return ds


def _as_owner(s: Session, actor: Any, ds: m.Dataset) -> None:
    if actor.role == "admin" or ds.owner_id == actor.id:
        return
    owner = s.get(m.Principal, ds.owner_id) if ds.owner_id else None
    who = owner.name if owner is not None else "nobody"
    raise Forbidden(f"only the owner of dataset {ds.name!r} ({who!r}) or an admin manages its members",
                    dataset=ds.name, owner=who)


def _holder(s: Session, name: str) -> m.Principal:
    p = s.scalar(select(m.Principal).where(m.Principal.name == name))
    if p is None or p.role != "holder":
        raise NotFound(f"no holder named {name!r}")
    return p


def invite(s: Session, actor: Any, dataset: str, holder: str) -> dict[str, Any]:
    """The owner (or an admin) lets ``holder`` add its nodes' rows to ``dataset``; idempotent."""
    ds = _dataset(s, dataset)
    _as_owner(s, actor, ds)
    p = _holder(s, holder)
    if p.id == ds.owner_id:
        raise BadRequest(f"{holder!r} owns dataset {ds.name!r}; owners need no invitation")
    if not is_member(s, ds.name, p.id):
        s.add(m.DatasetMember(dataset_name=ds.name, holder_id=p.id, invited_by=actor.id, invited_at=time.time()))
        s.flush()
    return {"dataset": ds.name, "holder": p.name, "member": True}


def revoke(s: Session, actor: Any, dataset: str, holder: str) -> dict[str, Any]:
    """Remove a member: its nodes take part in no further job on ``dataset`` (its ledger stays)."""
    ds = _dataset(s, dataset)
    _as_owner(s, actor, ds)
    p = _holder(s, holder)
    row = s.scalar(select(m.DatasetMember).where(m.DatasetMember.dataset_name == ds.name,
                                                 m.DatasetMember.holder_id == p.id))
    if row is None:
        raise NotFound(f"{holder!r} is not a member of dataset {ds.name!r}")
    s.delete(row)
    return {"dataset": ds.name, "holder": p.name, "member": False}


def membership(s: Session, dataset: str) -> dict[str, Any]:
    """Owner and members of a dataset by name, each member with when and by whom it was invited."""
    ds = _dataset(s, dataset)
    names = dict(s.execute(select(m.Principal.id, m.Principal.name)).all())
    rows = s.scalars(select(m.DatasetMember).where(m.DatasetMember.dataset_name == ds.name)).all()
    members = sorted(({"holder": names.get(r.holder_id, "?"), "invited_by": names.get(r.invited_by, "?"),
                       "invited_at": r.invited_at} for r in rows), key=lambda x: str(x["holder"]))
    return {"dataset": ds.name, "owner": names.get(ds.owner_id or "", None), "owner_id": ds.owner_id,
            "members": members, "member_ids": sorted(r.holder_id for r in rows)}
