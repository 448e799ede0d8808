"""What every task handler may know about the node it runs on."""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass, field

from xdp_compute.domain.manifest import Manifest
from xdp_compute.node.ledger import NodeLedger
from xdp_compute.node.sources import SourceCache


@dataclass
class NodeContext:
    """This node's manifest, the id the gateway gave it, its own ledger, and its count of noisy tasks.

    ``node_id`` is empty until the agent has registered; the worker sets it before each task. The
    ledger (and journal) lives in the manifest's state folder; it is opened at the first charge.
    """

    manifest: Manifest
    node_id: str = ""
    _noisy_tasks: itertools.count[int] = field(default_factory=itertools.count, repr=False)
    _ledger: NodeLedger | None = field(default=None, repr=False)
    _ledger_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    #: The node's open DuckDB sources, kept across queries (issue #13: a fresh sandboxed DuckDB and a
    #: DESCRIBE cost 20-40 ms a query); each reloads itself when its file changes (``SourceCache``).
    sources: SourceCache = field(default_factory=SourceCache, repr=False)

    def next_noisy_task(self) -> int:
        """0, 1, 2, ... — the n-th task on this node that draws noise (keys test-only seeded noise)."""
        return next(self._noisy_tasks)

    @property
    def ledger(self) -> NodeLedger:
        """This node's own privacy ledger and journal (``node.ledger``)."""
        with self._ledger_lock:
            if self._ledger is None:
                self._ledger = NodeLedger(self.manifest.state_path)
            return self._ledger
