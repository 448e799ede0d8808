"""What a task run hands back to the agent: a reply's wire form, or an error for the gateway."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class TaskOutcome:
    """``ok``: ``header`` and ``blobs`` hold the contract-encoded reply; otherwise ``error`` says why."""

    ok: bool
    header: dict[str, Any] = field(default_factory=dict)
    blobs: dict[str, bytes] = field(default_factory=dict)
    error: str = ""
