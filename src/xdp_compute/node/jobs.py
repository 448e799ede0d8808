"""Node-side handlers of job tasks (queries, secure aggregation, HE, training)."""

from __future__ import annotations

from typing import Any


def install(executor: Any) -> None:
    """Register this module's handlers on a TaskExecutor."""
