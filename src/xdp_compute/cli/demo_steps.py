"""The demo's walkthrough steps after the catalog: joint statistics, HE, training, audit."""

from __future__ import annotations

from typing import Any

from rich.console import Console

from xdp_compute.cli.cluster import LocalCluster


def run_all(console: Console, cluster: LocalCluster, tokens: dict[str, str], analyst: Any) -> None:
    """Each later capability adds its step here."""
