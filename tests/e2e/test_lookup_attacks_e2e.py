"""Hidden lookups attacked over raw REST (issue #17), with a real gateway and the holder's node.

The analyst is the adversary here: it races many evaluations for the last calls of its
allowance, asks for the table of a product it has no subscription to, for parts that do not
exist and for versions that were never served, and sends points that are not group elements.
Every attempt is refused with a problem (4xx), counts nothing and writes no log entry.

It also probes the holder's source through failures (the observable rule, issue #17 follow-up):
a repeated key or more rows than the declared capacity, anywhere in the source, must not change
what a lookup of another key shows it. And a call past the allowance must not reach the node.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx
import pytest
from test_lookup_e2e import ABSENT, MANIFEST, PRESENT, credit_csv

from xdp_compute.cli.cluster import LocalCluster
from xdp_compute.crypto.pir import blind, lookup_key_bytes
from xdp_compute.errors import XdpError

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


def _left(s: Setup, who: str, product: str) -> tuple[float, float]:
    """The caller's subscription to ``product``: (used, held)."""
    with s.cluster.client(s.tokens[who]) as c:
        sub = next(x for x in c.subscriptions() if x.product_id == product)
    return sub.used, sub.held


def _node_evaluations(s: Setup, product: str) -> int:
    """How many evaluations the holder's node made for ``product`` (its own log, one line each)."""
    text = (s.cluster.root / "bureau-node.log").read_text(errors="replace")
    return text.count(f"product {product}, by ")


def test_parts_out_of_range_unknown_versions_and_bad_points_are_refused_and_count_nothing(setup: Setup) -> None:
    before = _lookup_entries(setup)
    counted = _left(setup, "analyst", setup.product)
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
    # The stale version was counted before the node was asked, and given back when it refused.
    assert _left(setup, "analyst", setup.product) == counted


def test_a_repeated_key_or_too_many_rows_elsewhere_changes_nothing_the_analyst_sees(setup: Setup) -> None:
    """The attack: an analyst looks up one key while the holder's source has (a) no defect, (b) another
    key twice, (c) more rows than the declared capacity. Before the fix (b) and (c) made the lookup fail
    ("could not build the lookup table"): a failure that told the analyst about rows it did not ask for.
    Now the table is built from the rows that fit, the same for all three; only the holder's node log
    and its validation report say what was left out."""
    path = setup.cluster.root / "bureau-node" / "credit.csv"
    clean = path.read_text()
    lines = clean.splitlines()
    repeated = lines[5].split(",")[0]  # another citizen's id, written twice below
    sources = {
        "clean": clean,
        "repeated key": clean + lines[5].replace(",3", ",4", 1) + "\n",
        # 150 more rows than the capacity of 300; their ids sort after every other key.
        "beyond capacity": clean + "".join(f"3502032099{i:08d},500,false,Xiamen,1\n" for i in range(150)),
    }
    setup.tokens["prober"] = setup.cluster.token("analyst", "prober")
    with setup.cluster.client(setup.tokens["holder"]) as holder, setup.cluster.client(setup.tokens["prober"]) as p:
        probe = holder.create_product("credit", "lookup", "Probe", 1.0, 20, columns=["score"]).id
        holder.approve_subscription(p.subscribe(probe).id)

    def outcome(key: str) -> object:
        with setup.cluster.client(setup.tokens["prober"]) as c:
            try:
                r = c.lookup(probe, key)
            except XdpError as e:  # what the analyst sees of a failure: status, type and words
                return ("failed", e.status, e.problem.get("type"), e.detail)
            with _http(setup, "prober") as h:
                info = h.post(f"/v1/lookups/{probe}/table-info").json()
            shape = {k: info[k] for k in ("capacity", "label_bytes", "table_bytes", "parts", "columns", "key_type")}
            return ("answered", r.found, r.record, shape)

    seen: dict[str, object] = {}
    try:
        for name, text in sources.items():
            path.write_text(text)
            seen[name] = (outcome(PRESENT), outcome(ABSENT))
            if name == "repeated key":
                # The repeated key itself reads as "not found", as a key the holder does not have.
                gone = outcome(repeated)
                assert gone[:3] == ("answered", False, None), gone
                with setup.cluster.client(setup.tokens["holder"]) as holder:
                    report = next(d for d in holder.validate_node("bureau-node").datasets if d["dataset"] == "credit")
                assert report["lookup"]["repeated_keys"] == 1 and report["lookup"]["repeated_rows"] == 2, report
            if name == "beyond capacity":
                with setup.cluster.client(setup.tokens["holder"]) as holder:
                    report = next(d for d in holder.validate_node("bureau-node").datasets if d["dataset"] == "credit")
                assert report["lookup"]["beyond_capacity"] == 50 and report["lookup"]["entries"] == 300, report
    finally:
        path.write_text(clean)
    assert seen["clean"][0][:3] == ("answered", True, {"score": 357}), seen["clean"]
    assert seen["repeated key"] == seen["clean"], seen
    assert seen["beyond capacity"] == seen["clean"], seen
    # The holder is told, in its node's own log: counts, never a key.
    log = (setup.cluster.root / "bureau-node.log").read_text(errors="replace")
    assert "1 key repeated (2 rows;" in log and "50 keys beyond the capacity" in log
    assert repeated not in log


def test_racing_evaluations_get_exactly_the_allowance(setup: Setup) -> None:
    """Last in the module: it uses up the allowance. Twelve evaluations at once for three calls."""
    before = _lookup_entries(setup)
    evaluated = _node_evaluations(setup, setup.product)
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
    # The call is counted before the node is asked: a call past the allowance never reaches it.
    assert _node_evaluations(setup, setup.product) == evaluated + ALLOWANCE, (evaluated, _node_evaluations(setup, setup.product))
