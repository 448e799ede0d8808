"""What routers, the gRPC servicer and job runners share: one typed object, built by the lifespan.

It holds no job logic; it is how the shells reach the store, the task hub and the release gate.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from xdp_compute.audit import TreeHeadSigner
from xdp_compute.config import Settings
from xdp_compute.gateway.hub import TaskHub
from xdp_compute.gateway.leases import JobLeases
from xdp_compute.gateway.log_key import load_log_signer
from xdp_compute.gateway.metrics import GatewayMetrics
from xdp_compute.gateway.release import ReleaseGate, ReleaseLog
from xdp_compute.gateway.store import Store


@dataclass
class Services:
    """Built once per gateway process (or per test); never a module global."""

    settings: Settings
    store: Store
    hub: TaskHub = field(default_factory=TaskHub)
    # Live progress of running training jobs (round, epsilon, loss), shown by GET /v1/jobs/{id}.
    progress: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Encrypted answers of approved jobs that nobody waited for: handed over once, then dropped
    # (the gateway keeps only their digest).
    undelivered: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Jobs this process created already running (no approval needed): their ``start`` has nothing
    # left to write (``JobLifecycle._create``; issue #13: one write transaction less per job).
    born_running: set[str] = field(default_factory=set)
    metrics: GatewayMetrics = field(default_factory=GatewayMetrics)
    grpc_address: tuple[str, int] | None = None  # (host, bound port) once the node server is serving
    release_log: ReleaseLog = field(init=False)
    gate: ReleaseGate = field(init=False)
    leases: JobLeases = field(init=False)  # which jobs this replica runs (issue #18)

    def __post_init__(self) -> None:
        self.release_log = ReleaseLog(self.store, _log_signer(self.settings, self.store))
        self.gate = ReleaseGate(self.store, self.release_log, self.settings)
        self.gate.on_decision = self.metrics.gate_decision
        self.metrics.count_nodes_online(self.hub.online_count)
        self.leases = JobLeases(self.store)


def _log_signer(settings: Settings, store: Store) -> TreeHeadSigner:
    """The release log's key from outside the database; an in-memory database gets an in-memory key."""
    if settings.db_url in ("sqlite://", "sqlite:///:memory:") and settings.log_key_path is None \
            and not settings.log_key:
        return TreeHeadSigner.generate()  # the log dies with the process; so may its key
    return load_log_signer(settings, store)
