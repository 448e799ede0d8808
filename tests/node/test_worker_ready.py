"""A node registers once its task worker has loaded the training libraries (issue #13 goal 7)."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_node_tasks import _node

from xdp_compute.node.worker import TaskWorker, WorkerOptions


@pytest.mark.parametrize("preload", [False, True])
def test_the_worker_says_when_it_is_ready(tmp_path: Path, preload: bool) -> None:
    manifest = _node(tmp_path, "h0", 40, seed=0).manifest
    worker = TaskWorker(manifest, WorkerOptions(threads=1, concurrency=1, preload=preload))
    try:
        assert worker.ready.wait(180), "the task worker never signalled that it is ready"
        # Tasks still run after the ready signal (ids start at 1; the signal is id 0).
        out = worker.run("node-1", "validate", "job-1", {"v": 1}, {})
        assert out.ok, out.error
    finally:
        worker.close()
