"""The gateway's persistent store (SQLAlchemy 2; SQLite in WAL mode by default, PostgreSQL by URL).

Writes that must not race — budget reservations above all — run in ``Store.write()``: on SQLite
that transaction starts with ``BEGIN IMMEDIATE`` (the write lock is taken before anything is
read); on PostgreSQL the ledger uses conditional ``UPDATE ... WHERE spent + reserved + x <= budget``
so two concurrent reservations can never both pass.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import bindparam, create_engine, event, func, select, update
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from xdp_compute.domain.manifest import DatasetSpec
from xdp_compute.domain.names import check_region
from xdp_compute.domain.policy import NodePart, owner_policy
from xdp_compute.errors import BadRequest, BudgetExhausted, NotFound, SchemaConflict, Unauthorized
from xdp_compute.gateway import membership
from xdp_compute.gateway import models as m
from xdp_compute.gateway.migrations import (
    DatabaseUnavailable,
    SchemaOutdated,
    check_schema,
    migrate,
    schema_head,
    schema_revisions,
    schema_state,
)
from xdp_compute.gateway.parts import dataset_parts as read_dataset_parts
from xdp_compute.gateway.parts import lookup_parts as read_lookup_parts

# Where the store is opened, these are the failures to catch; ``migrate`` for ``xdp db upgrade``.
__all__ = ["DatabaseUnavailable", "SchemaOutdated", "Store", "make_engine", "migrate", "upgrade_database"]

ROLES = ("admin", "holder", "analyst", "auditor")
EPS_TOLERANCE = 1e-9
# Row of the ``secrets`` table that every token revocation and rotation overwrites with fresh
# random bytes, in the same transaction: the gateway's token cache is valid only while it reads
# the value it was filled under (``Store.cached_principal``).
AUTH_EPOCH = "auth-epoch"


def new_id() -> str:
    return uuid.uuid4().hex


class _Raced(Exception):
    """A dataset appeared between a registration's checks and its writes (retry the registration)."""


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _sqlite_path(url: str) -> str | None:
    """The file of a SQLite URL (None for in-memory databases and other dialects)."""
    if not url.startswith("sqlite"):
        return None
    path = url.split("///", 1)[1] if "///" in url else ""
    return path if path and path != ":memory:" else None


def make_engine(url: str, *, create: bool = True) -> Engine:
    """Create an engine; SQLite gets WAL, a busy timeout and BEGIN IMMEDIATE for write sessions.

    A SQLite file's directory must exist (a typo must not start an empty database elsewhere);
    with ``create=False`` the file itself must exist too. Raises ``DatabaseUnavailable``.
    """
    try:
        make_url(url)
    except ArgumentError:
        raise DatabaseUnavailable(f"not a database URL: {url!r} (sqlite:///PATH or "
                                  "postgresql://USER@HOST/DB)") from None
    if url.startswith("sqlite"):
        path = _sqlite_path(url)
        if path:
            if not Path(path).parent.is_dir():
                raise DatabaseUnavailable(f"the directory of the SQLite database {path} does not exist "
                                          f"({Path(path).parent}); create it or fix the URL")
            if not create and not Path(path).exists():
                raise DatabaseUnavailable(f"no database at {path}: start the gateway on it once, or run "
                                          f"`xdp db upgrade --db {url}`")
        engine = create_engine(url, connect_args={"timeout": 60, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _rec: Any) -> None:
            # Let SQLAlchemy, not pysqlite, decide where transactions begin.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=60000")
            cur.execute("PRAGMA foreign_keys=ON")
            # FULL: a commit is on disk before it returns. In WAL mode NORMAL may lose the last
            # commits to an OS crash or power cut; a released answer whose charge vanished so would
            # leave its budget to be spent twice, and its log entry unwritten. ~0.3 ms per commit.
            cur.execute("PRAGMA synchronous=FULL")
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Any) -> None:
            write = conn.get_execution_options().get("xdp_write", False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    # A server that does not answer must fail the start in seconds, not hang it.
    connect_args = {} if "connect_timeout" in url else {"connect_timeout": 10}
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20, connect_args=connect_args)


def upgrade_database(url: str) -> tuple[str | None, str]:
    """Run the migrations up to the head (``xdp db upgrade``); returns (revision before, after).
    Creates a SQLite file whose directory exists; raises ``DatabaseUnavailable`` otherwise."""
    engine = make_engine(url)
    try:
        before, _ = schema_state(engine)
        known = schema_revisions()
        if before is not None and before not in known:
            raise SchemaOutdated(f"database at revision {before}, unknown to this code (expects "
                                 f"{schema_head()}): a newer release wrote it")
        migrate(engine)
        return before, schema_state(engine)[0] or schema_head()
    finally:
        engine.dispose()


@dataclass(frozen=True)
class PrincipalView:
    id: str
    name: str
    role: str
    region: str


@dataclass(frozen=True)
class ReservationRequest:
    """Hold ``eps``/``delta`` on one (node, dataset) ledger row."""

    node_dataset_id: int
    eps: float
    delta: float


class Store:
    """All persistence of the gateway; routers and the job runner call only this."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._write_engine = engine.execution_options(xdp_write=True)
        # Read-side caches (issue #13): a node's gRPC calls authenticated through the ORM cost
        # ~1.6 ms of CPU per lookup and there are several calls per node per query.
        #   token digest -> (principal, expires_at), valid while the auth epoch is unchanged;
        #   node id -> (holder id, node name) (neither ever changes for a node id and nodes are
        #   never deleted; anything that ever moves, renames or deletes a node must call
        #   ``forget_node``).
        # Both live in this process only. The epoch row makes revocation and rotation by another
        # process (``xdp admin revoke-token`` writes the database directly) take effect on the very
        # next call here; a gateway replica (issue #18) needs nothing more than that row as long
        # as it reads the same database, but anything added to these caches later must either be
        # immutable (like node ownership) or be keyed to that epoch too.
        self._tokens: dict[str, tuple[PrincipalView, float | None, bytes | None]] = {}
        self._tokens_epoch: bytes | None = None
        self._owners: dict[str, tuple[str, str]] = {}
        self._epoch_lock = threading.Lock()
        self._epoch_conn: Any = None  # a dedicated SQLite connection, outside the pool

    @classmethod
    def open(cls, url: str, *, create: bool = True) -> Store:
        """Open the database at ``url`` at the schema this code expects.

        Nothing is migrated here: a database at an older revision raises ``SchemaOutdated``
        (``xdp db upgrade``). A brand-new empty database is initialised when ``create`` (the
        gateway's first start); with ``create=False`` (``xdp admin``) it must already exist.
        Raises ``DatabaseUnavailable`` with one line when it cannot be reached.
        """
        engine = make_engine(url, create=create)
        try:
            check_schema(engine, initialise=create)
        except BaseException:
            engine.dispose()
            raise
        return cls(engine)

    def close(self) -> None:
        with self._epoch_lock:
            if self._epoch_conn is not None:
                self._epoch_conn.close()
                self._epoch_conn = None
        self.engine.dispose()

    @contextmanager
    def read(self) -> Iterator[Session]:
        with Session(self.engine, expire_on_commit=False) as s, s.begin():
            yield s

    @contextmanager
    def write(self) -> Iterator[Session]:
        with Session(self._write_engine, expire_on_commit=False) as s, s.begin():
            yield s

    # ----------------------------------------------------------------- principals
    def create_principal(self, role: str, name: str, region: str, ttl_seconds: float | None = None) -> str:
        """Create a principal and return its bearer token (only its hash is stored)."""
        if role not in ROLES:
            raise BadRequest(f"unknown role {role!r} (expected one of {', '.join(ROLES)})")
        if not name or len(name) > 200:
            raise BadRequest("name must be 1..200 characters")
        check_region(region)  # the cross-border rules compare it with the nodes' regions
        token = "xdp_" + secrets.token_urlsafe(32)
        now = time.time()
        with self.write() as s:
            if s.scalar(select(m.Principal).where(m.Principal.name == name)) is not None:
                raise BadRequest(f"a principal named {name!r} already exists")
            s.add(m.Principal(id=new_id(), name=name, role=role, region=region, token_hash=hash_token(token),
                              created_at=now, expires_at=(now + ttl_seconds) if ttl_seconds else None,
                              revoked=False))
        return token

    def authenticate(self, token: str | None) -> PrincipalView:
        """Bearer token -> principal; unknown, revoked or expired -> Unauthorized."""
        return self._authenticate(token)[0]

    def _authenticate(self, token: str | None) -> tuple[PrincipalView, float | None]:
        if not token:
            raise Unauthorized("missing bearer token")
        digest = hash_token(token)
        with self.read() as s:
            p = s.scalar(select(m.Principal).where(m.Principal.token_hash == digest))
            # The lookup is by hash; compare again in constant time so no timing depends on the token.
            if p is None or not hmac.compare_digest(p.token_hash, digest):
                raise Unauthorized("unknown token")
            if p.revoked:
                raise Unauthorized("token revoked")
            if p.expires_at is not None and p.expires_at < time.time():
                raise Unauthorized("token expired")
            return PrincipalView(p.id, p.name, p.role, p.region), p.expires_at

    # ----------------------------------------------------------------- read-side caches
    @property
    def epoch_is_local(self) -> bool:
        """True when reading the auth epoch is a local file read of microseconds (SQLite on disk),
        cheap enough for an event loop; on a database server it is a round trip (use a thread)."""
        return self.engine.dialect.name == "sqlite" and self.engine.url.database not in (None, "", ":memory:")

    def auth_epoch(self) -> bytes | None:
        """The current auth epoch (None before any revocation or rotation ever happened)."""
        if not self.epoch_is_local:
            with self.engine.connect() as c:
                return c.execute(select(m.Secret.value).where(m.Secret.name == AUTH_EPOCH)).scalar()
        with self._epoch_lock:
            if self._epoch_conn is None:
                raw = self.engine.raw_connection()  # runs the connect hook: WAL, autocommit
                conn = raw.dbapi_connection
                raw.detach()  # ours for good: it never returns to (or holds a slot of) the pool
                conn.execute("PRAGMA busy_timeout=200")  # type: ignore[union-attr]
                self._epoch_conn = conn
            # fetchall ends the statement, so no read transaction stays open (it would hold back
            # WAL checkpoints).
            rows = self._epoch_conn.execute("SELECT value FROM secrets WHERE name = ?", (AUTH_EPOCH,)).fetchall()
        return bytes(rows[0][0]) if rows else None

    @staticmethod
    def bump_auth_epoch(s: Session) -> None:
        """Invalidate every gateway's token cache; call inside the transaction that revokes or
        rotates, so no reader can see the new state under the old epoch."""
        row = s.get(m.Secret, AUTH_EPOCH)
        if row is None:
            s.add(m.Secret(name=AUTH_EPOCH, value=os.urandom(16)))
        else:
            row.value = os.urandom(16)

    def invalidate_auth(self) -> None:
        """Forget every cached token of this process (the epoch does it for other processes)."""
        self._tokens.clear()

    def cached_principal(self, token: str | None) -> PrincipalView | None:
        """The principal of a token this process authenticated before, if no revocation or rotation
        happened since (one read of the auth epoch) and it has not expired; None: call
        ``authenticate_cached``. Raises Unauthorized for a cached token that expired."""
        if not token:
            return None
        try:
            epoch = self.auth_epoch()
        except (sqlite3.Error, SQLAlchemyError):
            return None  # e.g. a locked database: take the full path (which reports it)
        if epoch != self._tokens_epoch:
            self._tokens_epoch = epoch
            self._tokens.clear()  # memory only: entries carry their own epoch (below)
            return None
        hit = self._tokens.get(hash_token(token))
        # Each entry carries the epoch read before its lookup: an entry filled by a slow lookup
        # that raced a revocation can never match the newer epoch (random, never reused).
        if hit is None or hit[2] != epoch:
            return None
        view, expires_at, _ = hit
        if expires_at is not None and expires_at < time.time():
            raise Unauthorized("token expired")
        return view

    def authenticate_cached(self, token: str | None) -> PrincipalView:
        """``authenticate`` through the cache: same answers, same errors, at once after a
        revocation or rotation (see ``cached_principal``). Blocking: run it off the event loop."""
        hit = self.cached_principal(token)
        if hit is not None:
            return hit
        epoch = self.auth_epoch()  # read before the lookup: a revocation after it changes the epoch
        view, expires_at = self._authenticate(token)
        self._tokens[hash_token(token or "")] = (view, expires_at, epoch)
        return view

    def owns_node_cached(self, holder: PrincipalView, node_id: str) -> bool | None:
        """True/False if this process knows ``node_id``'s holder; None: ask ``check_node_owner``."""
        owner = self._owners.get(node_id)
        return None if owner is None else owner[0] == holder.id

    def check_node_owner(self, holder: PrincipalView, node_id: str) -> None:
        """``node_for`` without returning the row: Unauthorized unless ``holder`` owns ``node_id``."""
        known = self.owns_node_cached(holder, node_id)
        if known is None:
            self.node_for(holder, node_id)  # fills the cache on success
        elif not known:
            raise Unauthorized("this token does not own that node")

    def node_ref(self, holder: PrincipalView, node_id: str) -> m.Node:
        """``node_for`` from the cache when it can: a detached row with the node's id, name and
        holder only (enough for witnessing); Unauthorized unless ``holder`` owns ``node_id``."""
        owner = self._owners.get(node_id)
        if owner is None:
            return self.node_for(holder, node_id)
        if owner[0] != holder.id:
            raise Unauthorized("this token does not own that node")
        return m.Node(id=node_id, name=owner[1], holder_id=owner[0])

    def remember_owner(self, node_id: str, holder_id: str, node_name: str) -> None:
        self._owners[node_id] = (holder_id, node_name)

    def forget_node(self, node_id: str) -> None:
        self._owners.pop(node_id, None)

    def principal_names(self, ids: list[str]) -> dict[str, str]:
        with self.read() as s:
            return {p.id: p.name for p in s.scalars(select(m.Principal).where(m.Principal.id.in_(ids)))}

    # ----------------------------------------------------------------- nodes
    def register_node(self, holder: PrincipalView, node_name: str, region: str,
                      datasets: list[dict[str, Any]],
                      max_nodes_per_holder: int = membership.DEFAULT_MAX_NODES_PER_HOLDER,
                      facts: dict[str, Any] | None = None) -> str:
        """Register (or re-register) a node and its datasets atomically; clashes refuse all of it.

        A dataset name belongs to the first holder that registered it; another holder's node may
        declare it only once invited (``gateway.membership``), and never past the per-holder cap.
        ``facts``: what the node's holder sees about it — ``version`` (what it reports) and
        ``certificate`` (subject, fingerprint, not_after of the TLS client certificate).
        """
        specs = [DatasetSpec.from_dict(d) for d in datasets]
        try:
            return self._register_node(holder, node_name, region, specs, max_nodes_per_holder, facts or {})
        except (IntegrityError, _Raced):
            # Two registrations raced on a new name (a dataset or a node): the database kept one.
            # Run again: the loser now sees the winner's row and gets the ordinary refusal (or joins).
            return self._register_node(holder, node_name, region, specs, max_nodes_per_holder, facts or {})

    def _register_node(self, holder: PrincipalView, node_name: str, region: str, specs: list[DatasetSpec],
                       max_nodes_per_holder: int, facts: dict[str, Any]) -> str:
        from xdp_compute.domain.manifest import schema_differences

        now = time.time()
        with self.write() as s:
            node = s.scalar(select(m.Node).where(m.Node.name == node_name))
            if node is not None and node.holder_id != holder.id:
                raise SchemaConflict(f"node name {node_name!r} is already registered by another holder")
            twin = s.scalar(select(m.Node.name).where(func.lower(m.Node.name) == node_name.lower(),
                                                      m.Node.name != node_name))
            if twin is not None:
                # Names that differ only in case are one name on approval screens and in logs.
                raise SchemaConflict(f"node name {node_name!r} differs only in case from the registered node "
                                     f"{twin!r}: use that name, or another one")
            owned: dict[str, bool] = {}
            for spec in specs:
                ds = s.get(m.Dataset, spec.name)
                if ds is None:
                    continue
                owned[spec.name] = membership.check_joining(s, holder, node, spec, ds, max_nodes_per_holder)
                others = s.scalars(select(m.NodeDataset).where(m.NodeDataset.dataset_name == spec.name)).all()
                if owned[spec.name] and node is not None and others and all(o.node_id == node.id for o in others):
                    continue  # only this node of the owner declares it: it may change its own schema
                diffs = schema_differences(json.loads(ds.schema_json), spec.schema())
                if diffs:
                    raise SchemaConflict(
                        f"dataset {spec.name!r} from node {node_name!r} disagrees with the registered schema: "
                        + "; ".join(diffs), dataset=spec.name, differences=diffs)
            if node is None:
                node = m.Node(id=new_id(), name=node_name, holder_id=holder.id, region=region, online=True,
                              last_seen=now, registered_at=now)
                s.add(node)
                s.flush()
            else:
                node.region, node.online, node.last_seen = region, True, now
            cert = facts.get("certificate") or {}
            node.agent_version = facts.get("version")
            node.cert_subject, node.cert_fingerprint = cert.get("subject"), cert.get("fingerprint")
            node.cert_not_after = cert.get("not_after")
            for spec in specs:
                ds = s.get(m.Dataset, spec.name)
                if ds is not None and spec.name not in owned:
                    # Another registration created it since the checks above read nothing (a
                    # database that reads the newest commit per statement): check it all again.
                    raise _Raced(spec.name)
                if ds is None:
                    membership.claim(s, holder.id, spec, now)
                elif owned.get(spec.name):
                    # The owner's newest declaration sets the schema and the policy members run under.
                    ds.schema_json = json.dumps(spec.schema())
                    ds.policy_json = json.dumps(owner_policy(spec.to_dict()))
                nd = s.scalar(select(m.NodeDataset).where(m.NodeDataset.node_id == node.id,
                                                          m.NodeDataset.dataset_name == spec.name))
                if nd is None:
                    s.add(m.NodeDataset(node_id=node.id, dataset_name=spec.name,
                                        spec_json=json.dumps(spec.to_dict()), eps_budget=spec.epsilon_budget,
                                        delta_budget=spec.delta, eps_spent=0.0, delta_spent=0.0,
                                        eps_reserved=0.0, delta_reserved=0.0))
                else:
                    # Re-registration may change policy; spent budget is never reset.
                    nd.spec_json = json.dumps(spec.to_dict())
                    nd.eps_budget, nd.delta_budget = spec.epsilon_budget, spec.delta
            return node.id

    def node_for(self, holder: PrincipalView, node_id: str) -> m.Node:
        with self.read() as s:
            node = s.get(m.Node, node_id)
            if node is None or node.holder_id != holder.id:
                raise Unauthorized("this token does not own that node")
            self._owners[node.id] = (node.holder_id, node.name)
            return node

    def touch_node(self, node_id: str) -> bool:
        with self.write() as s:
            n = s.get(m.Node, node_id)
            if n is None:
                return False
            n.online, n.last_seen = True, time.time()
            return True

    def mark_offline(self, node_ids: list[str]) -> None:
        """Mark these nodes offline (the gateway's liveness monitor decided they are gone)."""
        with self.write() as s:
            for n in s.scalars(select(m.Node).where(m.Node.id.in_(node_ids))).all():
                n.online = False

    def mark_offline_stale(self, older_than: float) -> list[str]:
        with self.write() as s:
            stale = s.scalars(select(m.Node).where(m.Node.online.is_(True), m.Node.last_seen < older_than)).all()
            for n in stale:
                n.online = False
            return [n.id for n in stale]

    def list_nodes(self, holder_id: str | None = None) -> list[dict[str, Any]]:
        with self.read() as s:
            q = select(m.Node).order_by(m.Node.name)
            if holder_id is not None:
                q = q.where(m.Node.holder_id == holder_id)
            nodes = s.scalars(q).all()
            out = []
            for n in nodes:
                dss = s.scalars(select(m.NodeDataset.dataset_name).where(m.NodeDataset.node_id == n.id)).all()
                cert = ({"subject": n.cert_subject, "fingerprint": n.cert_fingerprint, "not_after": n.cert_not_after}
                        if n.cert_fingerprint else None)
                out.append({"id": n.id, "name": n.name, "region": n.region, "online": n.online,
                            "last_seen": n.last_seen, "datasets": sorted(dss), "version": n.agent_version,
                            "certificate": cert})
            return out

    def get_node(self, node_id: str, holder_id: str | None = None) -> dict[str, Any]:
        for n in self.list_nodes(holder_id):
            if n["id"] == node_id or n["name"] == node_id:
                return n
        raise NotFound(f"no node {node_id!r}")

    # ----------------------------------------------------------------- catalog
    def lookup_parts(self, name: str) -> list[dict[str, Any]]:
        """``dataset_parts`` of the dataset named ``name`` in any letter case; NotFound if none.
        One read transaction, two prebuilt statements (issue #13, ``gateway.parts``)."""
        with self.read() as s:
            return read_lookup_parts(s, name)

    def dataset_parts(self, name: str) -> list[dict[str, Any]]:
        """Every part of a dataset held by its owner or a current member: node id/name/region/online,
        holder, owner, role, spec and ledger row id.

        A member's part carries the owner's policy fields in its ``spec`` (its own budget stays in
        its ledger row), so every policy decision, approval and suppression downstream reads the
        owner's terms. Parts of a holder no longer a member are left out.
        """
        with self.read() as s:
            return read_dataset_parts(s, name)

    def dataset_membership(self, name: str) -> dict[str, Any]:
        """The dataset's owner and members (``gateway.membership.membership``)."""
        with self.read() as s:
            return membership.membership(s, name)

    def invite_member(self, actor: PrincipalView, dataset: str, holder: str) -> dict[str, Any]:
        with self.write() as s:
            return membership.invite(s, actor, dataset, holder)

    def revoke_member(self, actor: PrincipalView, dataset: str, holder: str) -> dict[str, Any]:
        with self.write() as s:
            return membership.revoke(s, actor, dataset, holder)

    def dataset_names(self, holder_id: str | None = None) -> list[str]:
        with self.read() as s:
            q = select(m.Dataset.name).order_by(m.Dataset.name)
            if holder_id is not None:
                q = (select(m.NodeDataset.dataset_name).join(m.Node, m.Node.id == m.NodeDataset.node_id)
                     .where(m.Node.holder_id == holder_id).distinct().order_by(m.NodeDataset.dataset_name))
            return list(s.scalars(q).all())

    # ----------------------------------------------------------------- ledger
    def ensure_analyst_budget(self, s: Session, principal_id: str, eps: float, delta: float) -> None:
        """Create the analyst's ledger row if absent (an upsert: concurrent first jobs do not clash)."""
        if self.engine.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert  # type: ignore[assignment]
        s.execute(insert(m.AnalystBudget).values(
            principal_id=principal_id, eps_budget=eps, delta_budget=delta, eps_spent=0.0, delta_spent=0.0,
            eps_reserved=0.0, delta_reserved=0.0).on_conflict_do_nothing(index_elements=["principal_id"]))

    def reserve(self, s: Session, job_id: str, analyst_id: str, holds: list[ReservationRequest],
                analyst_eps: float, analyst_delta: float) -> None:
        """Atomically hold budget on every ledger row, or raise BudgetExhausted and hold nothing.

        Runs inside the caller's write transaction; each hold is a conditional UPDATE, so a
        concurrent reservation can never push spent + reserved past the budget. Rows are locked in
        one order everywhere (ledger rows by id, then the analyst's row; ``settle`` the same), so
        concurrent reservations and settlements, on one gateway or several replicas, never
        deadlock.
        """
        tol = EPS_TOLERANCE
        for h in sorted(holds, key=lambda x: x.node_dataset_id):
            res = s.execute(_RESERVE_LEDGER, {"b_id": h.node_dataset_id, "b_eps": h.eps, "b_delta": h.delta,
                                              "b_tol": tol})
            if res.rowcount != 1:  # type: ignore[attr-defined]
                _expire_budgets(s)
                nd = s.get(m.NodeDataset, h.node_dataset_id)
                node = s.get(m.Node, nd.node_id) if nd else None
                left = (nd.eps_budget - nd.eps_spent - nd.eps_reserved) if nd else 0.0
                raise BudgetExhausted(
                    f"privacy budget of dataset {nd.dataset_name if nd else '?'!r} on node "
                    f"{node.name if node else '?'!r} cannot afford epsilon={h.eps:g} "
                    f"(left: {max(left, 0.0):g})", node=node.name if node else None, epsilon_left=max(left, 0.0))
            s.add(m.Reservation(job_id=job_id, node_dataset_id=h.node_dataset_id, analyst_id=None,
                                eps=h.eps, delta=h.delta, state="reserved"))
        res = s.execute(_RESERVE_ANALYST, {"b_id": analyst_id, "b_eps": analyst_eps, "b_delta": analyst_delta,
                                           "b_tol": tol})
        if res.rowcount != 1:  # type: ignore[attr-defined]
            raise BudgetExhausted(f"your analyst budget cannot afford epsilon={analyst_eps:g}")
        s.add(m.Reservation(job_id=job_id, node_dataset_id=None, analyst_id=analyst_id, eps=analyst_eps,
                            delta=analyst_delta, state="reserved"))
        _expire_budgets(s)

    def settle(self, s: Session, job_id: str, commit: bool,
               actual: dict[int, tuple[float, float]] | None = None,
               analyst_actual: tuple[float, float] | None = None) -> None:
        """Turn a job's reservations into spend (commit) or give them back (refund).

        ``actual`` may lower the charge of a node-dataset row (e.g. training that stopped early
        charges what its accountant spent); it can never raise it above the reservation.
        """
        rows = s.scalars(select(m.Reservation).where(m.Reservation.job_id == job_id,
                                                     m.Reservation.state == "reserved")).all()
        # The lock order of ``reserve``: ledger rows by id, then the analyst's row. One statement
        # per table, executed for all its rows (issue #13: one compiled UPDATE per row was ~10% of
        # the gateway's CPU with 20 nodes); executemany runs the rows in the list's order.
        ledger: list[dict[str, Any]] = []
        analysts: list[dict[str, Any]] = []
        for r in sorted(rows, key=lambda x: (x.node_dataset_id is None, x.node_dataset_id or 0)):
            spend_eps, spend_delta = r.eps, r.delta
            if commit and actual is not None and r.node_dataset_id in actual:
                spend_eps = min(r.eps, actual[r.node_dataset_id][0])
                spend_delta = min(r.delta, actual[r.node_dataset_id][1])
            if commit and analyst_actual is not None and r.analyst_id is not None:
                spend_eps, spend_delta = min(r.eps, analyst_actual[0]), min(r.delta, analyst_actual[1])
            if not commit:
                spend_eps = spend_delta = 0.0
            params = {"b_id": r.node_dataset_id if r.node_dataset_id is not None else r.analyst_id,
                      "b_eps": r.eps, "b_delta": r.delta, "b_spend_eps": spend_eps, "b_spend_delta": spend_delta}
            (ledger if r.node_dataset_id is not None else analysts).append(params)
            r.state = "committed" if commit else "refunded"
            if commit:
                r.eps, r.delta = spend_eps, spend_delta
        if ledger:
            s.execute(_SETTLE_LEDGER, ledger)
        if analysts:
            s.execute(_SETTLE_ANALYST, analysts)
        _expire_budgets(s)

    def analyst_budget(self, principal_id: str) -> dict[str, float]:
        with self.read() as s:
            b = s.get(m.AnalystBudget, principal_id)
            if b is None:
                return {}
            return {"epsilon_budget": b.eps_budget, "epsilon_spent": b.eps_spent,
                    "epsilon_reserved": b.eps_reserved, "delta_budget": b.delta_budget, "delta_spent": b.delta_spent}

    # ----------------------------------------------------------------- secrets
    def get_or_create_secret(self, name: str, factory: Any) -> bytes:
        with self.write() as s:
            row = s.get(m.Secret, name)
            if row is None:
                row = m.Secret(name=name, value=factory())
                s.add(row)
            return bytes(row.value)


def _budget_statements(table: Any, key: Any) -> tuple[Any, Any]:
    """(reserve, settle) statements of a budget table, built once, keyed by ``b_id`` (refund: zero spend)."""
    c = table.c
    reserve = (update(table)
               .where(key == bindparam("b_id"),
                      c.eps_spent + c.eps_reserved + bindparam("b_eps") <= c.eps_budget + bindparam("b_tol"),
                      c.delta_spent + c.delta_reserved + bindparam("b_delta") <= c.delta_budget + 1e-15)
               .values(eps_reserved=c.eps_reserved + bindparam("b_eps"),
                       delta_reserved=c.delta_reserved + bindparam("b_delta")))
    settle = (update(table).where(key == bindparam("b_id"))
              .values(eps_reserved=c.eps_reserved - bindparam("b_eps"),
                      delta_reserved=c.delta_reserved - bindparam("b_delta"),
                      eps_spent=c.eps_spent + bindparam("b_spend_eps"),
                      delta_spent=c.delta_spent + bindparam("b_spend_delta")))
    return reserve, settle


_LEDGER_TABLE: Any = m.NodeDataset.__table__
_ANALYST_TABLE: Any = m.AnalystBudget.__table__
_RESERVE_LEDGER, _SETTLE_LEDGER = _budget_statements(_LEDGER_TABLE, _LEDGER_TABLE.c.id)
_RESERVE_ANALYST, _SETTLE_ANALYST = _budget_statements(_ANALYST_TABLE, _ANALYST_TABLE.c.principal_id)


def _expire_budgets(s: Session) -> None:
    """Expire budget rows this session loaded: the table-level UPDATEs above made them stale."""
    for obj in list(s.identity_map.values()):
        if isinstance(obj, m.NodeDataset | m.AnalystBudget):
            s.expire(obj)


def node_parts(parts: list[dict[str, Any]]) -> list[NodePart]:
    """Store rows of a dataset's parts -> the policy's view of each node (spec and budget left)."""
    return [NodePart(node=p["node"], region=p["region"], spec=DatasetSpec.from_dict(p["spec"]),
                     epsilon_left=p["eps_budget"] - p["eps_spent"] - p["eps_reserved"],
                     delta_left=p["delta_budget"] - p["delta_spent"], member=p.get("role") == "member")
            for p in parts]
