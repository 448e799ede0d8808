"""Catalog and mock preview over REST, and the bad-input answers of the REST layer."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import example_manifest

from xdp_compute.domain.manifest import parse_manifest_text
from xdp_compute.errors import SchemaConflict


@pytest.fixture
def analyst(api: Any, store: Any) -> dict[str, str]:
    h1 = store.authenticate(store.create_principal("holder", "h1", "CN-FJ"))
    h2 = store.authenticate(store.create_principal("holder", "h2", "CN-FJ"))
    ds = parse_manifest_text(example_manifest(), check_files=False).datasets[0]
    store.register_node(h1, "siming-hospital", "CN-FJ", [ds.to_dict()])
    store.invite_member(h1, "patients", "h2")  # h1 registered first: it owns `patients`
    store.register_node(h2, "huli-hospital", "CN-FJ", [ds.to_dict()])
    return {"authorization": "Bearer " + store.create_principal("analyst", "a", "CN-FJ")}


def test_catalog_shows_partitioned_dataset_without_data_figures(api: Any, analyst: dict[str, str]) -> None:
    r = api.get("/v1/datasets/patients", headers=analyst)
    assert r.status_code == 200
    d = r.json()
    assert {n["name"] for n in d["nodes"]} == {"siming-hospital", "huli-hospital"}
    assert d["owner"] == "h1" and d["members"] == ["h2"]
    assert d["classification"] == "sensitive" and d["categories"] == ["health"]
    text = r.text.lower()
    for word in ("rows", "row_count", "count", "mean", "source", ".csv"):
        assert f'"{word}"' not in text and "patients.csv" not in text


def test_mock_rows_respect_bounds_and_values(api: Any, analyst: dict[str, str]) -> None:
    rows = api.get("/v1/datasets/patients/mock?rows=200", headers=analyst).json()["rows"]
    assert len(rows) == 200
    assert all(0 <= r["age"] <= 120 and isinstance(r["age"], int) for r in rows)
    assert all(0 <= r["income"] <= 500000 for r in rows)
    assert {r["district"] for r in rows} <= {"Siming", "Huli", "Jimei"}
    assert len({r["district"] for r in rows}) == 3


@pytest.mark.parametrize("rows", [0, -1, 100000, "many"])
def test_mock_bad_rows_is_422(api: Any, analyst: dict[str, str], rows: object) -> None:
    r = api.get(f"/v1/datasets/patients/mock?rows={rows}", headers=analyst)
    assert r.status_code == 422 and r.headers["content-type"].startswith("application/problem+json")


def test_unknown_dataset_is_404(api: Any, analyst: dict[str, str]) -> None:
    assert api.get("/v1/datasets/nope", headers=analyst).status_code == 404


def test_oversized_body_is_413(api: Any, analyst: dict[str, str]) -> None:
    r = api.post("/v1/nodes/x/validate", headers=analyst, content=b"x" * (2 << 20))
    assert r.status_code == 413 and r.json()["type"].endswith("payload-too-large")


def test_schema_clash_refused_and_nothing_persisted(store: Any) -> None:
    h = store.authenticate(store.create_principal("holder", "h1", "CN-FJ"))
    h3 = store.authenticate(store.create_principal("holder", "h3", "CN-FJ"))
    ds = parse_manifest_text(example_manifest(), check_files=False).datasets[0]
    store.register_node(h, "siming-hospital", "CN-FJ", [ds.to_dict()])
    store.invite_member(h, "patients", "h3")
    bad = parse_manifest_text(example_manifest().replace('"Huli", ', ''), check_files=False).datasets[0]
    with pytest.raises(SchemaConflict, match="district.*values"):
        store.register_node(h3, "jimei-hospital", "CN-FJ", [bad.to_dict()])
    assert [n["name"] for n in store.list_nodes()] == ["siming-hospital"]
    assert [p["node"] for p in store.dataset_parts("patients")] == ["siming-hospital"]


def test_openapi_and_healthz(api: Any) -> None:
    assert api.get("/healthz").json()["status"] == "ok"
    spec = api.get("/openapi.json").json()
    assert "/v1/datasets" in spec["paths"]
