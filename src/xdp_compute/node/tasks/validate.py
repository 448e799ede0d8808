"""``validate``: check each of this node's sources against its manifest; counts only, never values."""

from __future__ import annotations

from xdp_compute.contract import Validate, Validated
from xdp_compute.node.tasks.context import NodeContext
from xdp_compute.node.validate import validate_source


def validate(node: NodeContext, job_id: str, request: Validate) -> Validated:
    """One ``validate_source`` report per declared dataset; ``ok`` when every one is clean."""
    reports = [validate_source(node.manifest, ds) for ds in node.manifest.datasets]
    return Validated(datasets=reports, ok=all(bool(r.get("ok")) for r in reports))
