"""Prometheus metrics of one gateway: jobs, phase latencies, epsilon spent, nodes online, drop-outs.

One ``CollectorRegistry`` per ``GatewayMetrics`` (one per ``Services``), never the process-wide
default: two gateways in one test process must not share counters (house rule: no module-level
state). Labels are operational vocabulary only — job kind, outcome, phase, dataset name (public
in the catalog). No principal, node or analyst name is ever a label: ``/metrics`` must not become
a per-analyst activity feed, and a label value that depended on the data would be an unmetered
release.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from xdp_compute.gateway.release import Outcome

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Phases of a job's latency (DESIGN "Flow of one job"): planning, the nodes' protocol rounds,
# and the pass through the ReleaseGate (policy re-check, suppression, log append).
PHASES = ("plan", "rounds", "release")
# Seconds: a dry run plans in milliseconds, a training job runs for minutes.
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)


class _NodesOnline(Collector):
    """``xdp_nodes_online``, read from the task hub at scrape time (no bookkeeping to drift)."""

    def __init__(self, count: Callable[[], int]) -> None:
        self.count = count

    def collect(self) -> Iterable[Metric]:
        yield GaugeMetricFamily("xdp_nodes_online", "Nodes with a live session to this gateway", value=self.count())


class GatewayMetrics:
    """The gateway's metrics and the calls that move them."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.jobs = Counter("xdp_jobs", "Jobs that ended, by kind (query, he_query, training) and "
                            "outcome (the release log's entry kind)", ["kind", "outcome"], registry=self.registry)
        self.phase_seconds = Histogram("xdp_job_phase_seconds", "Seconds a job spent in each phase",
                                       ["kind", "phase"], buckets=_BUCKETS, registry=self.registry)
        self.epsilon_spent = Counter("xdp_epsilon_spent", "Epsilon charged by released jobs, per dataset "
                                     "(the sum the metering endpoint reports, since this process started)",
                                     ["dataset"], registry=self.registry)
        self.dropouts = Counter("xdp_secagg_dropouts", "Nodes that dropped out of a secure-aggregation "
                                "session, by the round they missed", ["phase"], registry=self.registry)
        self.http_requests = Counter("xdp_http_requests", "REST requests, by method, route template and "
                                     "status", ["method", "route", "status"], registry=self.registry)
        self._online: Callable[[], int] = lambda: 0

    def count_nodes_online(self, count: Callable[[], int]) -> None:
        """Report ``count()`` as ``xdp_nodes_online`` (once per registry)."""
        self._online = count
        self.registry.register(_NodesOnline(lambda: self._online()))

    # ------------------------------------------------------------------ the calls that move them
    def job_ended(self, kind: str | None, outcome: str, datasets: Iterable[str] = (), epsilon: float = 0.0) -> None:
        """A release-log decision about a job: released, denied, budget_exhausted, failed, ..."""
        self.jobs.labels(kind or "unplanned", outcome).inc()
        if epsilon > 0:
            for d in datasets:
                self.epsilon_spent.labels(d).inc(epsilon)

    def gate_decision(self, outcome: Outcome | None, kind: str) -> None:
        """``ReleaseGate.on_decision``: a committed release-log entry about a job."""
        if outcome is None:
            self.job_ended(None, kind)
            return
        eps = float(outcome.cost.get("epsilon") or 0.0) if kind == "released" else 0.0
        self.job_ended(outcome.operation, kind, outcome.datasets, eps)

    @contextmanager
    def phase(self, kind: str, phase: str) -> Iterator[None]:
        """Time a block as ``phase`` of a ``kind`` job (observed also when it raises)."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.observe_phase(kind, phase, time.perf_counter() - started)

    def observe_phase(self, kind: str, phase: str, seconds: float) -> None:
        self.phase_seconds.labels(kind, phase).observe(max(seconds, 0.0))

    def dropped(self, phases: Iterable[str]) -> None:
        """Nodes dropped out of a session: one phase name per node (``SecureSumResult.dropped``)."""
        for ph in phases:
            self.dropouts.labels(ph).inc()

    def request(self, method: str, route: str, status: int) -> None:
        self.http_requests.labels(method, route, str(status)).inc()

    def exposition(self) -> bytes:
        """The Prometheus text format of this registry."""
        return generate_latest(self.registry)
