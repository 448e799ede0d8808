"""Shared fixtures: an in-process gateway app over a temp SQLite store, and the manifest of the docs."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")

EXAMPLE_MANIFEST = """
[node]
name = "{node}"
region = "{region}"

[[datasets]]
name = "patients"
source = "patients.csv"
classification = "sensitive"
categories = ["health"]
epsilon_budget = {budget}
delta = 1e-6
min_group_size = {min_group}
require_approval = {approval}

[datasets.columns]
age      = {{ type = "int",      min = 0, max = 120,       uses = ["aggregate", "filter"] }}
income   = {{ type = "float",    min = 0, max = 500000,    uses = ["aggregate"] }}
district = {{ type = "category", values = ["Siming", "Huli", "Jimei"], uses = ["group", "filter"] }}
name     = {{ type = "text",     uses = [] }}
"""


def example_manifest(node: str = "siming-hospital", region: str = "CN-FJ", budget: float = 10.0,
                     min_group: int = 10, approval: bool = False) -> str:
    return EXAMPLE_MANIFEST.format(node=node, region=region, budget=budget, min_group=min_group,
                                   approval="true" if approval else "false")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[object]:
    from xdp_compute.gateway.store import Store

    s = Store.open(f"sqlite:///{tmp_path / 'gw.db'}")
    yield s
    s.close()


@pytest.fixture
def services(store: object) -> object:
    from xdp_compute.config import Settings
    from xdp_compute.gateway.app import Services

    return Services(settings=Settings(db_url="sqlite://", max_body_bytes=1 << 20), store=store)  # type: ignore[arg-type]


@pytest.fixture
def api(services: object) -> Iterator[object]:
    from fastapi.testclient import TestClient

    from xdp_compute.gateway.app import create_app

    app = create_app(services.settings, services)  # type: ignore[attr-defined]
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c
