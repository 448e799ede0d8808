"""The node's own privacy ledger per dataset, kept as a journal of every task run on its data.

The gateway keeps the deployment's ledger; a node does not take its word for it (issue #12).
Each task that releases something computed from this node's rows — a query's or an encrypted
query's noisy vector, a training job — is charged here when the node accepts it, *before* a row
is read, and refused when this node's own ``epsilon_budget`` / ``delta`` (its manifest) cannot
afford it, whatever the gateway's ledger says. Sequential composition: a dataset's spend is the
sum of its entries' (epsilon, delta), as on the gateway.

The journal is the ledger: one append-only JSON Lines file (``journal.jsonl`` in the node's
state folder), one line per accepted task, each written and fsynced before the task reads a row
(the plain query answers its Round 0 with public keys meanwhile: ``charge(..., durable=False)``
then ``sync``), so a restart (or a crash) keeps every charge. A job is charged once (the gateway may ask again): the
same job id with the same kind, dataset, plan digest, epsilon and delta is the same charge; the
same job id with anything else is refused. ``xdp node audit`` reads the same file and checks that
each entry appears in the gateway's release log.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from xdp_compute.domain.manifest import DatasetSpec
from xdp_compute.errors import BadRequest, BudgetExhausted

JOURNAL_FILE = "journal.jsonl"
# The same slack as the gateway's ledger (``domain.policy.evaluate``): float sums of charges.
EPSILON_SLACK = 1e-9
DELTA_SLACK = 1e-15


class LedgerUnreadable(BadRequest):
    """The node's journal has a line that is not a journal entry: it refuses every task until fixed."""

    slug, title = "node-ledger-unreadable", "Node ledger unreadable"


@dataclass(frozen=True)
class JournalEntry:
    """One task run on this node's data: who asked, what was planned, what it cost here."""

    job_id: str
    kind: str            # "query" | "he_query" | "training"
    dataset: str
    principal: str | None
    plan_digest: str     # the plan (queries) or training spec digest this node accepted
    epsilon: float
    delta: float
    time: float

    def same_task(self, other: JournalEntry) -> bool:
        return (self.kind, self.dataset, self.plan_digest, self.epsilon, self.delta) == \
            (other.kind, other.dataset, other.plan_digest, other.epsilon, other.delta)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> JournalEntry:
        return cls(job_id=str(d["job_id"]), kind=str(d["kind"]), dataset=str(d["dataset"]),
                   principal=None if d.get("principal") is None else str(d["principal"]),
                   plan_digest=str(d["plan_digest"]), epsilon=float(d["epsilon"]), delta=float(d["delta"]),
                   time=float(d["time"]))


@dataclass(frozen=True)
class Spent:
    epsilon: float = 0.0
    delta: float = 0.0


class NodeLedger:
    """This node's journal and the per-dataset spend it implies; safe across threads and processes.

    Writers take an exclusive ``flock`` on the file, read whatever other writers appended since
    (a restarted task worker, say), decide, then append one line and fsync it.
    """

    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / JOURNAL_FILE
        self._lock = threading.Lock()
        self._entries: dict[str, JournalEntry] = {}
        self._order: list[str] = []
        self._spent: dict[str, Spent] = {}
        self._offset = 0
        self._charged_here: set[str] = set()  # jobs this ledger object charged (this process's run)

    # ------------------------------------------------------------------ reading
    @contextlib.contextmanager
    def _locked(self) -> Iterator[int]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = not self.path.exists()
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        if new:  # the file's name is durable too, not only its lines
            dir_fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield fd
        finally:
            os.close(fd)  # releases the lock

    def _catch_up(self, fd: int) -> None:
        """Read lines appended since the last read; a torn last line (a crash mid-write) is cut off."""
        size = os.fstat(fd).st_size
        if size <= self._offset:
            return
        data = os.pread(fd, size - self._offset, self._offset)
        end = data.rfind(b"\n") + 1
        if end < len(data):
            # Never completed, so never acknowledged: that task did not run. Cut it so the next
            # append starts on a line of its own.
            os.ftruncate(fd, self._offset + end)
            data = data[:end]
        for n, line in enumerate(data.splitlines()):
            if not line.strip():
                continue
            try:
                self._add(JournalEntry.from_dict(json.loads(line)))
            except (ValueError, KeyError, TypeError):
                raise LedgerUnreadable(f"{self.path}: line {len(self._order) + n + 1} is not a journal entry; "
                                       "this node refuses tasks until its ledger is repaired") from None
        self._offset += end

    def _add(self, e: JournalEntry) -> None:
        if e.job_id in self._entries:
            return  # written twice by racing writers of an identical charge: it counts once
        self._entries[e.job_id] = e
        self._order.append(e.job_id)
        s = self._spent.get(e.dataset, Spent())
        self._spent[e.dataset] = Spent(s.epsilon + e.epsilon, s.delta + e.delta)

    def refresh(self) -> None:
        with self._lock, self._locked() as fd:
            self._catch_up(fd)

    def entries(self) -> list[JournalEntry]:
        """Every journal entry, oldest first."""
        self.refresh()
        with self._lock:
            return [self._entries[j] for j in self._order]

    def spent(self, dataset: str) -> Spent:
        self.refresh()
        with self._lock:
            return self._spent.get(dataset, Spent())

    # ------------------------------------------------------------------ charging
    def charge(self, ds: DatasetSpec, *, job_id: str, kind: str, principal: str | None, plan_digest: str,
               epsilon: float, delta: float, durable: bool = True) -> JournalEntry:
        """Charge (epsilon, delta) to ``ds`` for ``job_id`` and journal it, or refuse.

        ``durable=False``: the line is written (every reader of the journal sees it at once) but
        not yet synced to disk; the caller must call ``sync`` before it reads a row for the task
        (the plain query does so first thing in its background data step, issue #13), so the
        charge is still on disk before anything is computed from the data.

        Idempotent per job within one run of the node: the same task again returns its first
        entry and charges nothing. A job charged by an earlier run (before a restart of the node
        or of its task worker) is refused: running it again would draw fresh noise under the one
        charge, a second release the ledger never saw. Raises ``BudgetExhausted`` past this
        node's own budget, ``BadRequest`` for a job id already charged for another task or by an
        earlier run.
        """
        entry = JournalEntry(job_id, kind, ds.name, principal, plan_digest, float(epsilon), float(delta), time.time())
        with self._lock, self._locked() as fd:
            self._catch_up(fd)
            known = self._entries.get(job_id)
            if known is not None:
                if known.same_task(entry):
                    if job_id not in self._charged_here:
                        raise BadRequest(f"job {job_id} already ran on this node before it restarted (journal "
                                         f"{known.kind} on {known.dataset!r}); running it again would draw fresh "
                                         "noise under the same charge: refused")
                    return known
                raise BadRequest(f"job {job_id} was already charged on this node for another task "
                                 f"({known.kind} on {known.dataset!r}, plan {known.plan_digest[:12]}, "
                                 f"epsilon {known.epsilon:.6g}); refused")
            s = self._spent.get(ds.name, Spent())
            if s.epsilon + entry.epsilon > ds.epsilon_budget + EPSILON_SLACK:
                raise BudgetExhausted(
                    f"this node's own ledger for {ds.name!r} has spent epsilon {s.epsilon:.6g} of its "
                    f"{ds.epsilon_budget:g}; this task's epsilon {entry.epsilon:.6g} would exceed it: refused")
            if s.delta + entry.delta > ds.delta + DELTA_SLACK:
                raise BudgetExhausted(
                    f"this node's own ledger for {ds.name!r} has spent delta {s.delta:.3g} of its {ds.delta:g}; "
                    f"this task's delta {entry.delta:.3g} would exceed it: refused")
            line = (json.dumps(entry.to_dict(), sort_keys=True, separators=(",", ":")) + "\n").encode()
            os.write(fd, line)
            # Durable before the task runs: a restart keeps the charge. fdatasync flushes the line
            # and the file's new size (what reading it back needs), not its timestamps (issue #13).
            if durable:
                _sync_data(fd)
            self._offset += len(line)
            self._add(entry)
            self._charged_here.add(job_id)
            return entry


    def sync(self) -> None:
        """Flush every line written so far to disk (after ``charge(..., durable=False)``)."""
        fd = os.open(self.path, os.O_RDONLY)
        try:
            _sync_data(fd)  # syncs the file, whichever descriptor wrote it
        finally:
            os.close(fd)


def _sync_data(fd: int) -> None:
    sync = getattr(os, "fdatasync", None)  # not on macOS: fsync there
    (sync or os.fsync)(fd)


def read_journal(state_dir: Path) -> list[JournalEntry]:
    """The journal of a node's state folder (for ``xdp node audit``); [] if it has none yet."""
    path = Path(state_dir) / JOURNAL_FILE
    if not path.exists():
        return []
    return NodeLedger(Path(state_dir)).entries()


__all__ = ["JOURNAL_FILE", "JournalEntry", "LedgerUnreadable", "NodeLedger", "Spent", "read_journal"]
