"""The node's agent takes its tasks over the task channel (one stream per session, issue #13), and
over PullTask/SubmitResult from a gateway that has no channel (an older gateway): the same task,
the same answer, either way. A real agent (its task worker process included) against the
gateway's real ``NodeService`` on loopback."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from xdp_compute.contract import Validate, Validated
from xdp_compute.domain.manifest import load_manifest
from xdp_compute.gateway.grpc_service import NodeService, build_server
from xdp_compute.gateway.hub import TaskHub
from xdp_compute.gateway.store import Store
from xdp_compute.node.agent import NodeAgent
from xdp_compute.node.worker import WorkerOptions
from xdp_compute.v1 import node_pb2_grpc as pb_grpc

MANIFEST = """
[node]
name = "n1"
region = "CN-FJ"

[[datasets]]
name = "visits"
source = "visits.csv"
classification = "internal"
epsilon_budget = 5
delta = 1e-5
min_group_size = 2

[datasets.columns]
age = { type = "int", min = 0, max = 100, uses = ["aggregate"] }
"""


class OlderNodeService(NodeService):
    """A gateway from before the task channel: TaskChannel answers UNIMPLEMENTED."""

    TaskChannel = pb_grpc.NodeServiceServicer.TaskChannel  # type: ignore[assignment]


@pytest.mark.parametrize("channel", [True, False], ids=["task-channel", "older-gateway"])
def test_the_agent_serves_a_task_over_the_channel_or_by_long_polling(tmp_path: Path, channel: bool) -> None:
    (tmp_path / "visits.csv").write_text("age\n" + "\n".join(str(20 + i) for i in range(30)) + "\n")
    (tmp_path / "node.toml").write_text(MANIFEST)
    store = Store.open(f"sqlite:///{tmp_path / 'gw.db'}")
    token = store.create_principal("holder", "h1", "CN-FJ")
    hub, methods = TaskHub(), set()
    loop = asyncio.new_event_loop()
    ready, stop = threading.Event(), None
    port: list[int] = []

    async def serve() -> None:
        nonlocal stop
        stop = asyncio.Event()
        cls = NodeService if channel else OlderNodeService
        server = build_server(cls(store, hub, 2.0, capture=lambda m, _: methods.add(m)), 1 << 24)
        port.append(server.add_insecure_port("127.0.0.1:0"))
        await server.start()
        ready.set()
        await stop.wait()
        await server.stop(None)
        rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in rest:
            t.cancel()
        await asyncio.gather(*rest, return_exceptions=True)

    th = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    th.start()
    assert ready.wait(10)
    agent = NodeAgent(f"127.0.0.1:{port[0]}", token, load_manifest(tmp_path / "node.toml"), pull_wait=1.0,
                      options=WorkerOptions(preload=False))
    runner = threading.Thread(target=agent.run, daemon=True)
    runner.start()
    try:
        deadline = time.monotonic() + 60
        while not hub.sessions and time.monotonic() < deadline:
            time.sleep(0.05)
        (node_id,) = hub.sessions
        reply: Any = asyncio.run_coroutine_threadsafe(hub.ask(node_id, "job-1", Validate(), 60), loop).result(90)
        assert isinstance(reply, Validated) and reply.ok
        if channel:
            assert "TaskChannel" in methods and "PullTask" not in methods, methods
        else:
            assert "PullTask" in methods and "TaskChannel" not in methods, methods
        assert "SubmitResult" in methods
    finally:
        agent.stop()
        runner.join(30)
        loop.call_soon_threadsafe(stop.set)  # type: ignore[union-attr]
        th.join(10)
        store.close()
