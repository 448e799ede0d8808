"""The node sizes its compute threads by the CPUs it may use, not by the machine's (issue #13 goal 7)."""

from __future__ import annotations

import os

import pytest

from xdp_compute.node import worker


def test_affinity_caps_the_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0})
    monkeypatch.setattr(worker, "_cgroup_cpu_quota", lambda: None)
    assert worker.usable_cpus() == 1


def test_a_cgroup_quota_caps_the_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(32)))
    monkeypatch.setattr(worker, "_cgroup_cpu_quota", lambda: 2.0)
    assert worker.usable_cpus() == 2
    monkeypatch.setattr(worker, "_cgroup_cpu_quota", lambda: 0.25)
    assert worker.usable_cpus() == 1  # never zero


def test_this_machine() -> None:
    assert 1 <= worker.usable_cpus() <= (os.cpu_count() or 1)
