"""Which gateway replica runs which job: a lease per job, held as a PostgreSQL session advisory lock.

Replicas over one PostgreSQL (issue #18) must tell a job another replica is running from a job
whose replica died. A job's lease is the session-level advisory lock keyed by its id, taken by
the replica that accepted (or, after approval, started) the job on one dedicated connection,
before the job row is committed, and given back once the job has ended. PostgreSQL drops every
lock of a session when its connection closes, so a replica killed with ``kill -9`` loses its
leases as soon as the kernel closes its sockets; a replica whose host vanished loses them when
TCP keepalive on that connection gives up (``KEEPALIVE`` below, about 15 s). The lease needs no
table and no migration: the heartbeat is the connection itself.

Another replica finds such a job with ``pg_try_advisory_lock``: a job in ``reserved`` or
``running`` whose lock it can take is an orphan (``recovery.recover_orphaned_jobs``). Session
advisory locks are re-entrant within a session, so this process never tries the leases it
holds itself (``held``).

SQLite has one gateway: ``JobLeases`` there holds nothing and finds no orphan; a restart's
recovery fails every interrupted job, as before.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from typing import Any

from xdp_compute.gateway.store import Store

log = logging.getLogger("xdp.gateway.leases")

# libpq TCP keepalive on the lease connection: a replica whose host is gone loses its leases
# after about idle + interval * count seconds.
KEEPALIVE = {"keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2, "keepalives_count": 5}


def lease_key(job_id: str) -> int:
    """The signed 64-bit advisory-lock key of a job (the one-bigint key space; the release log's
    lock uses the two-int4 space, which never overlaps it)."""
    return int.from_bytes(hashlib.sha256(b"xdp-job-lease:" + job_id.encode()).digest()[:8], "big", signed=True)


class JobLeases:
    """The leases this gateway process holds, on one dedicated PostgreSQL connection."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.enabled = store.engine.dialect.name == "postgresql"
        self.held: set[str] = set()
        self._lock = threading.Lock()
        self._conn: Any = None

    def _connection(self) -> Any:
        """The lease connection (autocommit, outside the pool); opened on first use."""
        if self._conn is None or self._conn.closed:
            import psycopg

            url = self.store.engine.url.set(drivername="postgresql")
            dsn = url.render_as_string(hide_password=False)
            self._conn = psycopg.connect(dsn, autocommit=True, connect_timeout=10, **KEEPALIVE)
            if self.held:
                # A lost connection lost every lease; another replica may already have failed
                # those jobs (their release is then refused: the job is no longer running).
                log.error("the lease connection was lost; %d running job(s) lost their leases", len(self.held))
                self.held.clear()
        return self._conn

    def take(self, job_id: str) -> bool:
        """Hold ``job_id``'s lease; False if another replica holds it (running or recovering it)."""
        if not self.enabled:
            return True
        with self._lock:
            if job_id in self.held:
                return True
            got = bool(self._connection().execute("SELECT pg_try_advisory_lock(%s)",
                                                  (lease_key(job_id),)).fetchone()[0])
            if got:
                self.held.add(job_id)
            return got

    def give_back(self, job_id: str) -> None:
        """The job ended (or was never created): let go of its lease."""
        if not self.enabled:
            return
        with self._lock:
            if job_id not in self.held:
                return
            self.held.discard(job_id)
            try:
                self._connection().execute("SELECT pg_advisory_unlock(%s)", (lease_key(job_id),))
            except Exception:  # noqa: BLE001 - a broken connection released it already
                log.warning("could not give back the lease of job %s (connection lost)", job_id)

    def try_orphan(self, job_id: str) -> bool:
        """Take the lease of a job this process does not run; True means no live replica holds
        it (the caller recovers the job, then calls ``give_back``)."""
        if not self.enabled:
            return False
        with self._lock:
            if job_id in self.held:
                return False
            got = bool(self._connection().execute("SELECT pg_try_advisory_lock(%s)",
                                                  (lease_key(job_id),)).fetchone()[0])
            if got:
                self.held.add(job_id)
            return got

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            self.held.clear()
