"""Training specs over REST: each bad spec is a 400 naming the reason (no node is contacted)."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import example_manifest

from xdp_compute.domain.manifest import parse_manifest_text


@pytest.fixture
def analyst(api: Any, store: Any) -> dict[str, str]:
    h = store.authenticate(store.create_principal("holder", "h1", "CN-FJ"))
    text = example_manifest(budget=10.0).replace(
        'name     = { type = "text",     uses = [] }',
        'name     = { type = "text",     uses = [] }\nsick     = { type = "bool", uses = ["aggregate"] }')
    ds = parse_manifest_text(text, check_files=False).datasets[0]
    store.register_node(h, "siming-hospital", "CN-FJ", [ds.to_dict()])
    return {"authorization": "Bearer " + store.create_principal("analyst", "ml", "CN-FJ")}


GOOD = {"dataset": "patients", "model": "logreg", "features": ["age", "income"], "label": "sick"}


@pytest.mark.parametrize("change, status, words", [
    ({"model": "transformer"}, 400, "model"),
    ({"features": ["age", "nosuch"]}, 400, "nosuch"),
    ({"features": ["age", "name"]}, 400, "name"),
    ({"label": "undeclared"}, 400, "undeclared"),
    ({"target_epsilon": 0}, 400, "epsilon"),
    ({"target_epsilon": -2}, 400, "epsilon"),
    ({"rounds": 10**9}, 400, "rounds"),
    ({"batch_size": 0}, 400, "batch"),
    ({"target_epsilon": 50}, 403, "epsilon_cap"),
    ({"colour": "red"}, 422, "colour"),
])
def test_bad_training_specs(api: Any, analyst: dict[str, str], change: dict[str, Any], status: int,
                            words: str) -> None:
    r = api.post("/v1/trainings", json={**GOOD, **change}, headers=analyst)
    assert r.status_code == status, r.text
    assert words.lower() in r.text.lower()
