"""Hidden-lookup routes at their border (issue #17): bad input is a 4xx problem, never a 500."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from xdp_compute.crypto.psi import random_point


@pytest.fixture
def analyst(api: Any, store: Any) -> dict[str, str]:
    return {"authorization": f"Bearer {store.create_principal('analyst', 'lender', 'CN-FJ')}"}


@pytest.mark.parametrize(("point", "words"), [
    ("not base64!" + "=" * 33, "not base64"),
    (base64.b64encode(b"\x02" * 31 + b"").decode().ljust(44, "="), "32 bytes"),
    (base64.b64encode(bytes(32)).decode(), "prime-order subgroup"),            # the identity
    (base64.b64encode(b"\x01" + bytes(31)).decode(), "prime-order subgroup"),  # small order
    (base64.b64encode(b"\xff" * 32).decode(), "prime-order subgroup"),         # not canonical
])
def test_bad_points_are_400(api: Any, analyst: dict[str, str], point: str, words: str) -> None:
    r = api.post("/v1/lookups/some-product/evaluate", headers=analyst, json={"version": "0" * 32, "point": point})
    assert r.status_code == 400, r.text
    assert r.headers["content-type"].startswith("application/problem+json") and words in r.json()["detail"]


def test_bad_versions_and_bodies_are_422(api: Any, analyst: dict[str, str]) -> None:
    point = base64.b64encode(random_point()).decode()
    for body in ({"version": "XYZ", "point": point}, {"version": "0" * 32}, {"version": "0" * 32, "point": point,
                                                                              "key": "secret"}):
        r = api.post("/v1/lookups/p/evaluate", headers=analyst, json=body)
        assert r.status_code == 422, r.text
    assert api.get("/v1/lookups/p/tables/nothex/parts/0", headers=analyst).status_code == 422
    assert api.get(f"/v1/lookups/p/tables/{'0' * 32}/parts/-1", headers=analyst).status_code == 422


def test_unknown_product_is_404(api: Any, analyst: dict[str, str]) -> None:
    point = base64.b64encode(random_point()).decode()
    for r in (api.post("/v1/lookups/nope/table-info", headers=analyst),
              api.post("/v1/lookups/nope/evaluate", headers=analyst, json={"version": "0" * 32, "point": point}),
              api.get(f"/v1/lookups/nope/tables/{'0' * 32}/parts/0", headers=analyst)):
        assert r.status_code == 404 and "nope" in r.json()["detail"], r.text
