"""A job the node ran before a restart is not run again (issue #12: spent sessions were in memory only).

Before: a restarted node (or task worker) forgot which secure-aggregation sessions it had spent,
and its ledger answered the same job's charge idempotently, so the gateway could send a finished
job again and get a second, freshly noised release charged nothing.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_node_tasks import Node, _node

from xdp_compute.errors import BadRequest
from xdp_compute.node.ledger import NodeLedger


@pytest.fixture
def node(tmp_path: Path) -> Node:
    return _node(tmp_path, "h0", 40, seed=0)


def _charge(ledger: NodeLedger, node: Node, job: str) -> object:
    return ledger.charge(node.manifest.datasets[0], job_id=job, kind="query", principal="ana", plan_digest="d1",
                         epsilon=1.0, delta=1e-6)


def test_the_same_job_after_a_restart_is_refused(node: Node) -> None:
    ledger = NodeLedger(node.manifest.state_path)
    first = _charge(ledger, node, "job-1")
    assert _charge(ledger, node, "job-1") == first  # the same run: the gateway asked again
    restarted = NodeLedger(node.manifest.state_path)
    with pytest.raises(BadRequest, match="already ran on this node before it restarted"):
        _charge(restarted, node, "job-1")
    assert restarted.spent("patients").epsilon == 1.0
    _charge(restarted, node, "job-2")  # new jobs run as before
