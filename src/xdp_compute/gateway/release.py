"""The one ReleaseGate every output passes, and the verifiable release log behind it.

Gate steps (DESIGN "Flow of one job", step 5): policy re-check, small-cell suppression, then in
one database transaction budget commit (or refund), append to the release log (RFC 9162 leaf +
Ed25519 signed tree head) and store the delivery; then the caller delivers the result with its
receipt (log index, inclusion proof, signed tree head). Refusals (policy denied, budget
exhausted, approval refused, protocol failure) are log entries too.

The gate owns its steps: which re-check, which suppression and what the gateway may keep are
cases here, chosen by the output kind (``Outcome.operation``); producers hand over data, never
code.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import func, select
from sqlalchemy import text as sql_text
from sqlalchemy.orm import Session

from xdp_compute.audit import MerkleTree, SignedTreeHead, TreeHeadSigner, canonical_json
from xdp_compute.audit.note import ALG_ED25519, Checkpoint, format_note, log_origin, vkey
from xdp_compute.config import Settings
from xdp_compute.crypto.paillier import EncryptedVector, PaillierPublic, unmask_sealed_sum
from xdp_compute.domain.policy import Requester, evaluate
from xdp_compute.errors import Conflict, PolicyDenied, XdpError
from xdp_compute.gateway import models as m
from xdp_compute.gateway.store import Store, node_parts
from xdp_compute.query import QueryPlan
from xdp_compute.query.finalize import suppress_small_groups
from xdp_compute.query.sealed import cell_slots, small_cells

log = logging.getLogger("xdp.gateway.release")

# Entry kinds: one per decision.
RELEASED = "released"
DENIED = "denied"
BUDGET_EXHAUSTED = "budget_exhausted"
APPROVAL_GIVEN = "approval_given"
APPROVAL_REFUSED = "approval_refused"
FAILED = "failed"


class LogIntegrityError(XdpError):
    status, slug, title = 503, "log-integrity", "Release log integrity check failed"


def digest(obj: Any) -> str:
    """SHA-256 (hex) of an object's canonical JSON, or of raw bytes."""
    data = obj if isinstance(obj, bytes) else canonical_json(obj)
    return hashlib.sha256(data).hexdigest()


# PostgreSQL advisory-lock key (two int4 form: class, object) that serialises release-log appends
# across gateway replicas (issue #18). The two-key space never overlaps the one-bigint space the
# job leases use (``gateway/leases.py``). 0x58445043 is "XDPC".
LOG_LOCK_KEY = (0x58445043, 1)


class ReleaseLog:
    """Append-only entries in the store + an in-memory RFC 9162 tree, caught up from the store.

    The store is the authority (issue #18): every append takes the database's log lock (on
    PostgreSQL ``pg_advisory_xact_lock``, held until the transaction commits; on SQLite the
    ``BEGIN IMMEDIATE`` write lock), then first appends to the tree in memory whatever other
    gateway replicas committed since, and only then computes the next index and root. So replicas
    on one database write one sequence of indices and one signed head per size. Reads of the
    committed size catch up the same way (without the lock: an entry and its head commit together).

    The ``signer`` is kept outside the store (``gateway/log_key.py``): the database holds the
    log, never the key that signs it. Replicas are configured with the same key file.
    """

    def __init__(self, store: Store, signer: TreeHeadSigner) -> None:
        self.store = store
        self.signer = signer
        self.origin = log_origin(signer.key_id)
        self.tree = MerkleTree()
        # Re-entrant: reading ``committed_size`` catches up under it, also from code holding it.
        self.lock = threading.RLock()
        self.integrity_problem: str | None = None
        self._committed = 0  # the tree size whose entries and head are committed in the store
        self._rebuild()

    @property
    def committed_size(self) -> int:
        """The latest committed tree size, including entries other replicas appended."""
        with self.lock:
            self.catch_up()
            return self._committed

    @property
    def local_size(self) -> int:
        """The committed size this replica knows without reading the store: every entry up to it is
        committed. Callers that only need *a* committed size at least some n use it and catch up
        only when n is past it (issue #13: a catch-up read per witness call and per receipt)."""
        return self._committed

    def at_least(self, size: int) -> int:
        """A committed size >= ``size`` if the log has one (caught up only when needed)."""
        return self._committed if size <= self._committed else self.committed_size

    def catch_up(self) -> int:
        """Append to the tree in memory the entries committed in the store since it was read
        (by another replica); returns how many. Checks them against their signed head."""
        with self.lock:
            with self.store.read() as s:
                added = self._catch_up(s)
            if added:
                self._committed = self.tree.size
            return added

    def _catch_up(self, s: Session) -> int:
        """Inside ``s``: read entries with an index at or past the tree's size and append them; the
        head of the new size must be stored and match (RFC 9162 §2.1.1: same size, same root)."""
        if self.integrity_problem:
            return 0
        start = self.tree.size
        rows = s.execute(select(m.LogEntry.idx, m.LogEntry.entry_json).where(m.LogEntry.idx >= start)
                         .order_by(m.LogEntry.idx)).all()
        if not rows:
            return 0
        for i, (idx, _) in enumerate(rows):
            if idx != start + i:
                self.integrity_problem = f"entry index {idx} found at position {start + i}"
                break
        else:
            for _, leaf in rows:
                self.tree.append(leaf.encode())
            head = s.get(m.TreeHead, self.tree.size)
            if head is None:
                self.integrity_problem = f"no signed head for the {self.tree.size} committed entries"
            elif head.root_hash != self.tree.root().hex():
                self.integrity_problem = f"entries do not match the signed head of size {self.tree.size}"
        if self.integrity_problem:
            log.error("RELEASE LOG INTEGRITY: %s; releases are refused until an operator repairs it",
                      self.integrity_problem)
            return 0
        return len(rows)

    def _rebuild(self) -> None:
        with self.store.read() as s:
            rows = s.execute(select(m.LogEntry.idx, m.LogEntry.entry_json).order_by(m.LogEntry.idx)).all()
            last = s.scalar(select(m.TreeHead).order_by(m.TreeHead.tree_size.desc()).limit(1))
        tree = MerkleTree()
        for i, (idx, text) in enumerate(rows):
            if idx != i:
                self.integrity_problem = f"entry index {idx} found at position {i}"
            tree.append(text.encode())
        self.tree = tree
        self._committed = tree.size
        if last is not None:
            if last.tree_size > tree.size:
                self.integrity_problem = (f"last signed head covers {last.tree_size} entries but the store holds "
                                          f"{tree.size}")
            elif tree.root(last.tree_size).hex() != last.root_hash:
                self.integrity_problem = f"entries do not match the last signed head (size {last.tree_size})"
            elif last.key_id != self.signer.key_id:
                self.integrity_problem = "the signing key differs from the one that signed the last head"
        if self.integrity_problem is None:
            self.integrity_problem = self._contradicting_witness(tree)
        if self.integrity_problem:
            log.error("RELEASE LOG INTEGRITY: %s; releases are refused until an operator repairs it",
                      self.integrity_problem)

    def _contradicting_witness(self, tree: MerkleTree) -> str | None:
        """A stored witness cosignature the entries contradict (a larger size or another root)."""
        with self.store.read() as s:
            rows = s.execute(select(m.WitnessCosignature.name, m.WitnessCosignature.tree_size,
                                    m.WitnessCosignature.root_hash)).all()
        for name, size, root in rows:
            if size > tree.size:
                return f"witness {name} cosigned {size} entries but the store holds {tree.size}"
            if tree.root(size).hex() != root:
                return f"witness {name} cosigned another root for size {size} than the stored entries give"
        return None

    @property
    def public_key_hex(self) -> str:
        return self.signer.public_key_bytes().hex()

    @property
    def vkey(self) -> str:
        """The log's C2SP verifier key (signed-note type 0x01); its name is the checkpoint origin."""
        return vkey(self.origin, ALG_ED25519, self.signer.public_key_bytes())

    def checkpoint(self, size: int | None = None) -> tuple[Checkpoint, str]:
        """The C2SP checkpoint of a committed size (default the latest) and its signed note."""
        with self.lock:
            committed = self.committed_size if size is None else self.at_least(size)
            size = committed if size is None else size
            if not 0 <= size <= committed:
                raise LogIntegrityError(f"no committed tree of size {size}")
            cp = Checkpoint(self.origin, size, self.tree.root(size))
        body = cp.body()
        return cp, format_note(body, [self.signer.sign_note(self.origin, body)])

    def append(self, s: Session, entry: dict[str, Any]) -> dict[str, Any]:
        """Add an entry and its signed head inside the caller's transaction.

        The caller uses ``self.transaction()``: it holds ``self.lock`` and the database's log lock,
        has caught the tree up with the store, and a rolled-back transaction also rolls back the
        in-memory tree.
        """
        if self.integrity_problem:
            raise LogIntegrityError(self.integrity_problem)
        idx = self.tree.size
        stored_max = s.scalar(select(func.max(m.LogEntry.idx)))
        if (stored_max if stored_max is not None else -1) != idx - 1:
            raise LogIntegrityError(f"store holds entries up to {stored_max}, memory up to {idx - 1}")
        full = {"index": idx, "time": round(time.time(), 3), **entry}
        leaf = canonical_json(full)
        s.add(m.LogEntry(idx=idx, entry_json=leaf.decode()))
        self.tree.append(leaf)
        sth = self.signer.sign(self.tree.size, self.tree.root())
        s.add(m.TreeHead(tree_size=sth.tree_size, root_hash=sth.root_hash.hex(), timestamp_ms=sth.timestamp_ms,
                         signature=sth.signature.hex(), key_id=sth.key_id))
        return full

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """Serialise appends across threads and replicas; on any failure rebuild the tree from the
        store (nothing half-done)."""
        with self.lock:
            try:
                with self.store.write() as s:
                    if s.get_bind().dialect.name == "postgresql":
                        # Held until commit or rollback: the next appender, on any replica, reads
                        # this transaction's entry and head before it computes its own.
                        s.execute(sql_text("SELECT pg_advisory_xact_lock(:k1, :k2)"),
                                  {"k1": LOG_LOCK_KEY[0], "k2": LOG_LOCK_KEY[1]})
                    self._catch_up(s)
                    yield s
            except BaseException:
                self._rebuild()
                raise
            self._committed = self.tree.size

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        with self.lock:  # the tree is not thread-safe; appends hold this lock
            if size > self._committed:
                self.catch_up()
            return self.tree.inclusion_proof(index, size)

    def consistency_proof(self, first: int, second: int) -> list[bytes]:
        with self.lock:
            if second > self._committed:
                self.catch_up()
            return self.tree.consistency_proof(first, second)

    def receipt(self, index: int) -> dict[str, Any]:
        """Log index, inclusion proof and the signed head of the latest committed size."""
        with self.lock:
            size = self.at_least(index + 1)  # caught up if the entry came from another replica
            proof = self.tree.inclusion_proof(index, size)
        with self.store.read() as s:
            head = s.get(m.TreeHead, size)
            entry = s.get(m.LogEntry, index)
        if head is None or entry is None:
            raise LogIntegrityError(f"log entry {index} or the head of size {size} is missing from the store")
        return {
            "log_index": index,
            "tree_size": head.tree_size,
            "inclusion_proof": [h.hex() for h in proof],
            "signed_tree_head": head_dict(head),
            "entry": json.loads(entry.entry_json),
            "public_key": self.public_key_hex,
        }


def count_cells(payload: dict[str, Any]) -> int:
    """Released numbers in a payload (for metering): non-null numeric cells of its rows, or its
    declared ``cells`` count (encrypted or model outputs)."""
    if isinstance(payload.get("cells"), int):
        return int(payload["cells"])
    return sum(1 for row in payload.get("rows") or [] for v in row.values()
               if isinstance(v, int | float) and not isinstance(v, bool))


def head_dict(h: m.TreeHead) -> dict[str, Any]:
    return SignedTreeHead(tree_size=h.tree_size, root_hash=bytes.fromhex(h.root_hash), timestamp_ms=h.timestamp_ms,
                          signature=bytes.fromhex(h.signature), key_id=h.key_id).to_dict()


@dataclass(frozen=True)
class PolicyContext:
    """Who asked for what, from which nodes: what the gate re-checks policy against at release."""

    requester: Requester
    dataset: str
    node_ids: tuple[str, ...]


@dataclass(frozen=True)
class GroupCells:
    """What small-cell suppression needs of a plain SQL answer."""

    plan: QueryPlan
    min_group_size: int
    hidden_count: bool


@dataclass(frozen=True)
class SealedCells:
    """What small-cell suppression needs of a Paillier encrypted SQL answer, and what finishes it.

    The gateway knows each cell's noisy COUNT(*) (unmasked to it by the sealed secure
    aggregation, ``query.sealed``: the same noisy value the analyst decrypts, so one charged
    release) and holds the survivors' masked encrypted sum with the masks' total. At release the
    gate removes the masks homomorphically and blanks every cell whose noisy count is below
    ``min_group_size``: its slots decrypt to uniform ring values, and ``suppressed_cells`` names
    it. A raw REST client thus never decrypts a small group's numbers.
    """

    plan: QueryPlan
    min_group_size: int
    counts: tuple[int, ...]          # signed noisy COUNT(*) per cell
    public: PaillierPublic
    sealed_sum: EncryptedVector      # product of the survivors' E(masked input)
    mask_total: np.ndarray           # uint64: the masks left in sealed_sum


@dataclass
class Outcome:
    """What a job produced and wants released."""

    operation: str                      # query | he_query | training
    payload: dict[str, Any]             # delivered to the requester
    datasets: list[str]
    nodes: list[str]
    spec_digest: str
    cost: dict[str, Any]
    decisions: list[dict[str, Any]] = field(default_factory=list)
    policy: PolicyContext | None = None  # None: nothing to re-check (refusals of unplanned jobs)
    cells: GroupCells | None = None      # plain SQL answers: the groups to suppress
    sealed: SealedCells | None = None    # Paillier SQL answers: the groups to blank, the masks to remove
    # Per ledger-row actual charge, when lower than reserved (e.g. training stopped early).
    actual_charges: dict[int, tuple[float, float]] | None = None
    # Private joins (issue #16): the other dataset's policy context; the gate re-checks both.
    joined: tuple[PolicyContext, ...] = ()


# Policy output label the re-check evaluates, per output kind.
_POLICY_OUTPUT = {"query": "query", "he_query": "he_query", "training": "trained model",
                  "join_aggregate": "he_query"}  # a join is delivered encrypted, as an HE query
# Payload members the gateway must not keep, per output kind: stored as their digest only.
_KEPT_OUT = {"he_query": ("ciphertext",), "join_aggregate": ("ciphertexts",)}
# Rules that are settled before release and not re-checked (the budget is already reserved).
_NOT_RECHECKED = ("budget", "epsilon_cap")


class ReleaseGate:
    """The only path by which any result leaves the gateway."""

    def __init__(self, store: Store, release_log: ReleaseLog, settings: Settings | None = None) -> None:
        self.store, self.log = store, release_log
        self.settings = settings or Settings()
        # Told each committed decision (outcome, entry kind) for metrics; it changes nothing.
        self.on_decision: Callable[[Outcome | None, str], None] = lambda outcome, kind: None

    # ------------------------------------------------------------------ the gate's own cases
    def recheck(self, outcome: Outcome) -> list[dict[str, Any]]:
        """Policy re-check at release against the holders' current policy (budget excluded)."""
        ctx = outcome.policy
        if ctx is None:
            return []
        out = []
        # join_aggregate: both datasets' current policies (issue #16); other kinds read one dataset.
        for c in (ctx, *outcome.joined):
            fresh = [x for x in self.store.lookup_parts(c.dataset) if x["node_id"] in set(c.node_ids)]
            decisions = evaluate(node_parts(fresh), c.requester, 0.0, 0.0,
                                 restricted_categories=self.settings.restricted_categories,
                                 output=_POLICY_OUTPUT[outcome.operation])
            out += [d.to_dict() for d in decisions if d.rule not in _NOT_RECHECKED]
        return out

    def suppress(self, outcome: Outcome) -> int:
        """Small-cell suppression by output kind; returns how many cells it suppressed."""
        match outcome.operation:
            case "query":
                c = outcome.cells
                if c is None:
                    return 0
                # A group whose noisy count is below min_group_size shows no numbers.
                return suppress_small_groups(c.plan, outcome.payload, c.min_group_size, c.hidden_count)
            case "he_query":
                sc = outcome.sealed
                if sc is None:
                    return 0
                # Same rule as the plain path, on the noisy counts the gateway was released;
                # the blanking randomness is drawn and dropped inside unmask_sealed_sum.
                small = small_cells(sc.counts, sc.min_group_size)
                done = unmask_sealed_sum(sc.public, sc.sealed_sum, sc.mask_total, cell_slots(sc.plan, small))
                outcome.payload["ciphertext"] = base64.b64encode(done.to_bytes(sc.public)).decode()
                outcome.payload["suppressed_cells"] = small
                outcome.payload["suppressed_groups"] = len(small)
                return len(small)
            case _:
                return 0  # a trained model has no groups

    @staticmethod
    def kept(outcome: Outcome) -> dict[str, Any]:
        """What the gateway keeps of a payload: members it must not hold become their digest."""
        out = _KEPT_OUT.get(outcome.operation, ())
        return {k: ({"sha256": digest(v if isinstance(v, bytes) else str(v).encode())} if k in out else v)
                for k, v in outcome.payload.items()}

    def _budget_left(self, s: Session, job_id: str) -> dict[str, float]:
        rows = s.execute(select(m.NodeDataset, m.Node.name).join(m.Reservation,
                                                                   m.Reservation.node_dataset_id == m.NodeDataset.id)
                         .join(m.Node, m.Node.id == m.NodeDataset.node_id)
                         .where(m.Reservation.job_id == job_id)).all()
        return {f"{name}/{nd.dataset_name}": round(nd.eps_budget - nd.eps_spent - nd.eps_reserved, 9)
                for nd, name in rows}

    def release(self, job_id: str, principal: str, outcome: Outcome, approvers: list[str] | None = None,
                compute_seconds: float | None = None) -> dict[str, Any]:
        """Pass ``outcome`` through the gate; return the delivery (result + receipt) or raise.

        ``approvers`` None: the holders who approved the job, read in the release's transaction;
        ``compute_seconds`` is recorded on the job there too."""
        decisions = self.recheck(outcome)
        denied = [d for d in decisions if not d["allowed"]]
        if denied:
            if compute_seconds is not None:
                with self.store.write() as s:
                    job = s.get(m.Job, job_id)
                    if job is not None:
                        job.compute_seconds = compute_seconds
            # A noisy value exists already: the reservation is charged, nothing is released.
            self.refuse(job_id, principal, outcome, DENIED, f"policy re-check at release: {denied[0]['reason']}",
                        refund=False, charge=True, decisions=decisions)
            raise PolicyDenied(f"denied at release by rule {denied[0]['rule']!r}: {denied[0]['reason']}")
        payload = outcome.payload
        suppressed = self.suppress(outcome)
        with self.log.transaction() as s:
                job = s.scalar(select(m.Job).where(m.Job.id == job_id).with_for_update())
                if job is None or job.status != "running":
                    raise Conflict(f"job {job_id} is {job.status if job else 'unknown'}, not running; "
                                   "nothing is released")
                self.store.settle(s, job_id, commit=True, actual=outcome.actual_charges)
                if compute_seconds is not None:
                    job.compute_seconds = compute_seconds
                if approvers is None:
                    approvers = sorted(s.scalars(select(m.Principal.name)
                                                 .join(m.Approval, m.Approval.holder_id == m.Principal.id)
                                                 .where(m.Approval.job_id == job_id,
                                                        m.Approval.decision == "approved")).all())
                left = self._budget_left(s, job_id)
                entry = {
                    "kind": RELEASED, "job_id": job_id, "principal": principal, "operation": outcome.operation,
                    "datasets": outcome.datasets, "nodes": outcome.nodes, "spec_digest": outcome.spec_digest,
                    "privacy_cost": outcome.cost, "budget_left": left, "policy_decisions": outcome.decisions,
                    "approvers": approvers or [], "suppressed_cells": suppressed,
                    "cells_released": count_cells(payload),
                    "payload_digest": digest(payload),
                }
                # Data exchange (issue #17): a job under a subscription is metered in this transaction.
                from xdp_compute.gateway.metered import meter_release, metered_entry

                metered = meter_release(s, job, outcome.nodes)
                if metered is not None:
                    entry["subscription"] = {k: v for k, v in metered.items() if k != "usage_id"}
                stored = self.log.append(s, entry)
                metered_entry(s, metered, stored["index"])
                delivery = {"job_id": job_id, "status": "released", "operation": outcome.operation,
                            "result": payload, "log_index": stored["index"], "budget_left": left,
                            "cost": outcome.cost}
                job.status = "released"
                job.result_json = json.dumps({**delivery, "result": self.kept(outcome)})
                job.updated_at = time.time()
        self.on_decision(outcome, RELEASED)
        delivery["receipt"] = self.log.receipt(stored["index"])
        return delivery

    def refuse(self, job_id: str | None, principal: str, outcome: Outcome | None, kind: str, reason: str, *,
               refund: bool, decisions: list[dict[str, Any]] | None = None,
               charge: bool = False) -> dict[str, Any]:
        """Record a decision that releases nothing; refund (or, if values may exist, charge) the job."""
        with self.log.transaction() as s:
                if job_id is not None and (refund or charge):
                    self.store.settle(s, job_id, commit=charge)
                entry = {
                    "kind": kind, "job_id": job_id, "principal": principal,
                    "operation": outcome.operation if outcome else None,
                    "datasets": outcome.datasets if outcome else [], "nodes": outcome.nodes if outcome else [],
                    "spec_digest": outcome.spec_digest if outcome else None,
                    "privacy_cost": outcome.cost if outcome else {}, "reason": reason,
                    "policy_decisions": decisions if decisions is not None else (outcome.decisions if outcome else []),
                    "payload_digest": None,
                }
                # Data exchange (issue #17): a job that releases nothing gives its subscription hold back.
                from xdp_compute.gateway.metered import return_job_hold

                return_job_hold(s, job_id)
                stored = self.log.append(s, entry)
                if job_id is not None:
                    job = s.get(m.Job, job_id)
                    if job is not None:
                        job.status = {DENIED: "denied", BUDGET_EXHAUSTED: "denied",
                                      APPROVAL_REFUSED: "denied"}.get(kind, "failed")
                        job.error_json = json.dumps({"detail": reason, "log_index": stored["index"]})
                        job.updated_at = time.time()
        self.on_decision(outcome, kind)
        return stored

    def record(self, entry: dict[str, Any]) -> dict[str, Any]:
        """Log a decision that is neither release nor refusal (e.g. an approval given)."""
        with self.log.transaction() as s:
            return self.log.append(s, entry)
