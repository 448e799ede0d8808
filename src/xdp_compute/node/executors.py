"""What a node does with each task kind. Everything returned is counts, masked or encrypted."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from xdp_compute.domain.manifest import Manifest
from xdp_compute.errors import BadRequest


@dataclass
class TaskOutcome:
    ok: bool
    header: dict[str, Any] = field(default_factory=dict)
    blobs: dict[str, bytes] = field(default_factory=dict)
    error: str = ""


Handler = Callable[[str, dict[str, Any], dict[str, bytes]], TaskOutcome]


class TaskExecutor:
    """Dispatches tasks by kind; job-scoped state (e.g. secure aggregation) lives in ``self.state``."""

    def __init__(self, manifest: Manifest) -> None:
        self.manifest = manifest
        self.node_id = ""  # set by the agent once the gateway has registered this node
        self.state: dict[str, Any] = {}
        self.handlers: dict[str, Handler] = {"validate": self._validate}
        from xdp_compute.node import jobs as node_jobs
        from xdp_compute.node import query_task, train_task  # noqa: F401 - register round-0 providers

        node_jobs.install(self)
        from xdp_compute.node import he_task

        he_task.install(self)
        train_task.install(self)

    def handle(self, kind: str, job_id: str, header: dict[str, Any], blobs: dict[str, bytes]) -> TaskOutcome:
        handler = self.handlers.get(kind)
        if handler is None:
            raise BadRequest(f"this node does not know task kind {kind!r}")
        return handler(job_id, header, blobs)

    def _validate(self, job_id: str, header: dict[str, Any], blobs: dict[str, bytes]) -> TaskOutcome:
        from xdp_compute.node.validate import validate_source

        reports = [validate_source(self.manifest, ds) for ds in self.manifest.datasets]
        return TaskOutcome(ok=True, header={"datasets": reports, "ok": all(r.get("ok") for r in reports)})
