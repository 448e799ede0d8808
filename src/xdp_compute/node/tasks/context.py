"""What every task handler may know about the node it runs on."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from xdp_compute.domain.manifest import Manifest


@dataclass
class NodeContext:
    """This node's manifest, the id the gateway gave it, and its count of noisy tasks.

    ``node_id`` is empty until the agent has registered; the worker sets it before each task.
    """

    manifest: Manifest
    node_id: str = ""
    _noisy_tasks: itertools.count[int] = field(default_factory=itertools.count, repr=False)

    def next_noisy_task(self) -> int:
        """0, 1, 2, ... — the n-th task on this node that draws noise (keys test-only seeded noise)."""
        return next(self._noisy_tasks)
