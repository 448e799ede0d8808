"""Hidden lookups attacked over raw REST (issue #17), with a real gateway and the holder's node.

The analyst is the adversary here: it races many evaluations for the last calls of its
allowance, asks for the table of a product it has no subscription to, for parts that do not
exist and for versions that were never served, and sends points that are not group elements.
Every attempt is refused with a problem (4xx), counts nothing and writes no log entry.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx
import pytest
from test_lookup_e2e import MANIFEST, PRESENT, credit_csv

from xdp_compute.cli.cluster import LocalCluster
from xdp_compute.crypto.pir import blind, lookup_key_bytes

pytestmark = pytest.mark.slow

ALLOWANCE = 3
RACERS = 12


@dataclass
class Setup:
    cluster: LocalCluster
    tokens: dict[str, str]
    product: str


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    cluster = LocalCluster(root=tmp_path_factory.mktemp("lookup-attacks"), env={"XDP_HEARTBEAT_SECONDS": "0.5"})
    try:
        cluster.start_gateway()
        tokens = {"admin": cluster.token("admin", "admin"), "analyst": cluster.token("analyst", "lender"),
                  "other": cluster.token("analyst", "lender-2"), "auditor": cluster.token("auditor", "auditor"),
                  "holder": cluster.token("holder", "bureau")}
        m = cluster.write_node_files("bureau-node", MANIFEST, {"credit.csv": credit_csv()})
        cluster.start_node("bureau-node", tokens["holder"], m)
        cluster.wait_online(tokens["admin"], ["bureau-node"])
        with cluster.client(tokens["holder"]) as holder, cluster.client(tokens["analyst"]) as analyst:
            product = holder.create_product("credit", "lookup", "Three lookups", 1.0, ALLOWANCE,
                                            columns=["score"]).id
            holder.approve_subscription(analyst.subscribe(product).id)
        yield Setup(cluster, tokens, product)
    finally:
        cluster.close()


def _http(s: Setup, who: str) -> httpx.Client:
    return httpx.Client(base_url=s.cluster.url, headers={"Authorization": f"Bearer {s.tokens[who]}"},
                        verify=s.cluster.verify, timeout=120)


def _lookup_entries(s: Setup) -> int:
    with _http(s, "auditor") as a:
        r = a.get("/v1/audit/entries", params={"kind": "lookup"})
        assert r.status_code == 200, r.text
        body = r.json()
        return len(body if isinstance(body, list) else body.get("entries", body.get("items", [])))


def test_another_analyst_gets_no_table_info_and_no_table_part(setup: Setup) -> None:
    with _http(setup, "analyst") as mine:
        info = mine.post(f"/v1/lookups/{setup.product}/table-info")
        assert info.status_code == 200, info.text
        version = info.json()["version"]
    with _http(setup, "other") as other:
        r = other.post(f"/v1/lookups/{setup.product}/table-info")
        assert r.status_code == 403 and r.headers["content-type"].startswith("application/problem+json")
        r = other.get(f"/v1/lookups/{setup.product}/tables/{version}/parts/0")
        assert r.status_code == 403 and "no subscription" in r.json()["detail"]


def test_parts_out_of_range_unknown_versions_and_bad_points_are_refused_and_count_nothing(setup: Setup) -> None:
    before = _lookup_entries(setup)
    with _http(setup, "analyst") as c:
        info = c.post(f"/v1/lookups/{setup.product}/table-info").json()
        base = f"/v1/lookups/{setup.product}"
        for part in (info["parts"], 100_000):  # past the last part: refused by the node, not a 500
            r = c.get(f"{base}/tables/{info['version']}/parts/{part}")
            assert r.status_code == 404 and "no part" in r.json()["detail"], (part, r.status_code, r.text)
        for path in (f"{base}/tables/{info['version']}/parts/-1", f"{base}/tables/{info['version']}/parts/x"):
            assert c.get(path).status_code == 422
        never = "0" * 32  # a version the node never served
        r = c.get(f"{base}/tables/{never}/parts/0")
        assert r.status_code == 409 and r.json()["type"].endswith("/lookup-version-stale")
        point = base64.b64encode(blind(lookup_key_bytes("text", PRESENT)).blinded).decode()  # type: ignore[arg-type]
        r = c.post(f"{base}/evaluate", json={"version": never, "point": point})
        assert r.status_code == 409 and r.json()["type"].endswith("/lookup-version-stale")
        for bad in (bytes(32), b"\x01" + bytes(31), b"\xff" * 32):  # identity, small order, non-canonical
            r = c.post(f"{base}/evaluate", json={"version": info["version"], "point": base64.b64encode(bad).decode()})
            assert r.status_code == 400 and "prime-order subgroup" in r.json()["detail"], r.text
    assert _lookup_entries(setup) == before


def test_racing_evaluations_get_exactly_the_allowance(setup: Setup) -> None:
    """Last in the module: it uses up the allowance. Twelve evaluations at once for three calls."""
    before = _lookup_entries(setup)
    with _http(setup, "analyst") as c:
        version = c.post(f"/v1/lookups/{setup.product}/table-info").json()["version"]

    def one(_: int) -> int:
        point = base64.b64encode(blind(lookup_key_bytes("text", PRESENT)).blinded).decode()  # type: ignore[arg-type]
        with _http(setup, "analyst") as h:
            return h.post(f"/v1/lookups/{setup.product}/evaluate",
                          json={"version": version, "point": point}).status_code

    with ThreadPoolExecutor(RACERS) as pool:
        codes = list(pool.map(one, range(RACERS)))
    assert sorted(codes) == [200] * ALLOWANCE + [409] * (RACERS - ALLOWANCE), codes
    assert _lookup_entries(setup) == before + ALLOWANCE
