"""A job whose failure cannot be logged is still charged and failed, and logged at the next start."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from sqlalchemy import select

from xdp_compute.errors import XdpError
from xdp_compute.gateway import models as m
from xdp_compute.gateway.lifecycle import JobLifecycle
from xdp_compute.gateway.recovery import log_unlogged_failures
from xdp_compute.gateway.release import Outcome


def test_a_failure_the_log_cannot_take_leaves_no_job_running(services: Any, monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    store = services.store
    store.create_principal("analyst", "ana", "CN-FJ")
    with store.write() as s:
        who = s.scalar(select(m.Principal).where(m.Principal.name == "ana"))
        now = time.time()
        s.add(m.Job(id="j1", principal_id=who.id, kind="query", status="running",
                    spec_json=json.dumps({"digest": "d", "epsilon": 1.0}),
                    plan_json=json.dumps({"plan": {"dataset": "patients"}}),
                    cost_json=json.dumps({"epsilon": 1.0, "delta": 1e-8}), created_at=now, updated_at=now))
    lifecycle = JobLifecycle(services)
    refusal = Outcome(operation="query", payload={}, datasets=["patients"], nodes=[], spec_digest="d",
                      cost={"epsilon": 1.0, "delta": 1e-8})

    async def work() -> dict[str, Any]:
        raise XdpError("the release could not be appended")

    def broken_refuse(*a: Any, **k: Any) -> Any:
        raise OSError("disk full")

    monkeypatch.setattr(lifecycle.gate, "refuse", broken_refuse)
    with pytest.raises(XdpError):
        asyncio.run(lifecycle.guarded("j1", "ana", refusal, work()))
    with store.read() as s:
        job = s.get(m.Job, "j1")
        assert job.status == "failed" and json.loads(job.error_json)["unlogged"] is True
    monkeypatch.undo()
    log_unlogged_failures(services)  # what the next start does once the log works
    with store.read() as s:
        error = json.loads(s.get(m.Job, "j1").error_json)
    assert "log_index" in error and "unlogged" not in error
    entry = services.gate.log.receipt(error["log_index"])["entry"]
    assert entry["kind"] == "failed" and entry["job_id"] == "j1" and "could not be written" in entry["reason"]
