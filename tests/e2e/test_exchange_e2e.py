"""The data exchange end to end (issue #17): a real gateway and two holders' nodes on loopback.

One deployment for the module (``clinic-0-holder`` owns ``visits``, ``clinic-1-holder`` adds its
rows as a member); the tests run in order: assets, then products and metered queries, then the
settlement of the period those queries fell in.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from e2e_helpers import Hospitals, start_hospitals

from xdp_compute.errors import BadRequest, Conflict, Forbidden, NotFound
from xdp_compute.gateway.exchange import period_of

pytestmark = pytest.mark.slow
COUNT_BY_CLINIC = "SELECT clinic, COUNT(*) AS n FROM visits GROUP BY clinic"


@pytest.fixture(scope="module")
def h(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hospitals]:
    hospitals = start_hospitals(tmp_path_factory.mktemp("exchange"), n=2, rows=200, budget=100.0, min_group=5)
    try:
        yield hospitals
    finally:
        hospitals.cluster.close()


def xdp(h: Hospitals, token: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("XDP_")}
    env.update({"XDP_URL": h.cluster.url, "XDP_TOKEN": token})
    return subprocess.run([sys.executable, "-m", "xdp_compute", *args], capture_output=True, text=True, check=False,
                          timeout=180, env=env)


def verify_log(h: Hospitals) -> dict[str, Any]:
    r = xdp(h, h.tokens["auditor"], "audit", "verify", "--json")
    assert r.returncode == 0, r.stderr + r.stdout
    return json.loads(r.stdout[r.stdout.index("{"):])


def owner(h: Hospitals) -> Any:
    return h.cluster.client(h.tokens["clinic-0"])


def test_asset_versions_commit_to_the_rows_and_the_log_verifies_them(h: Hospitals) -> None:
    with owner(h) as c:
        v1 = c.register_asset("visits", "Clinic visits, 2026", "DP aggregates only", grade="L2")
    assert v1.version == 1 and v1.previous_index is None and v1.kind == "asset_registered"
    assert v1.asset["classification"] == "internal" and v1.asset["grade"] == "L2"
    assert {c["name"]: c.get("max") for c in v1.asset["schema"]}["age"] == 100  # declared bounds
    assert set(v1.node_commitments) == {"clinic-0"}  # the owner's own nodes; a member's rows are its own
    # Nothing of the rows: no count, no value, only 64-hex commitments.
    assert "rows" not in json.dumps(v1.asset) and all(len(x) == 64 for x in v1.node_commitments.values())

    # A row changes at the owner's node: the next version commits to other content.
    csv_path = h.cluster.root / "clinic-0" / "visits.csv"
    lines = csv_path.read_text().splitlines()
    fields = lines[1].split(",")
    fields[1] = str((int(fields[1]) + 1) % 101)
    csv_path.write_text("\n".join([lines[0], ",".join(fields), *lines[2:]]) + "\n")
    with owner(h) as c:
        v2 = c.register_asset("visits", "Clinic visits, 2026 (corrected)", "DP aggregates only", grade="L2")
        history = c.asset_history("visits")
    assert v2.version == 2 and v2.previous_index == v1.index
    assert v2.content_commitment != v1.content_commitment
    assert v2.metadata_commitment != v1.metadata_commitment
    assert [(x.version, x.index) for x in history] == [(1, v1.index), (2, v2.index)]

    # Only the owner registers: a member holder is refused, an analyst too, an unknown dataset is 404.
    with h.cluster.client(h.tokens["clinic-1"]) as c, pytest.raises(Forbidden, match="only the owner"):
        c.register_asset("visits", "mine now", "none")
    with h.analyst() as c:
        with pytest.raises(Forbidden):
            c.register_asset("visits", "x", "y")
        with pytest.raises(NotFound):
            c.asset_history("nope")
        assert [a.version for a in c.assets()] == [2]

    # `xdp audit verify` recomputes every leaf, whatever its kind: it covers both asset entries
    # (and a changed asset entry is found at its index, like any other entry).
    report = verify_log(h)
    assert report["ok"] and report["tree_size"] > v2.index
    from xdp_compute.audit.verify import verify_log as offline_verify
    from xdp_compute.sdk.audit import download_log

    with h.cluster.client(h.tokens["auditor"]) as c:
        entries, heads, key = download_log(c)
    forged = [dict(e) for e in entries]
    forged[v1.index]["content_commitment"] = v2.content_commitment
    bad = offline_verify(forged, heads, key)
    assert not bad.ok and bad.first_bad_index == v1.index

    r = xdp(h, h.tokens["analyst"], "assets", "history", "visits", "--json")
    assert r.returncode == 0 and [x["version"] for x in json.loads(r.stdout)] == [1, 2]
    r = xdp(h, h.tokens["clinic-1"], "assets", "register", "visits", "--description", "d", "--licence", "l")
    assert r.returncode == 3 and r.stderr.startswith("error: ") and "Traceback" not in r.stderr


def budget_of(c: Any) -> tuple[float, float]:
    b = c.budget("visits")
    return b.analyst["epsilon_spent"], b.analyst["epsilon_reserved"]


def test_query_product_subscription_allowance_and_metering(h: Hospitals) -> None:
    with owner(h) as c:
        product = c.create_product("visits", "query", "Visits per clinic", unit_price=100.0, allowance=1.0,
                                   shapes={"aggregates": ["count"], "group_by": ["clinic"]})
    assert product.unit == "epsilon" and product.terms["shapes"]["group_by"] == ["clinic"]
    # A member is not the owner; and without the manifest's lookup opt-in a lookup product is refused.
    with h.cluster.client(h.tokens["clinic-1"]) as c, pytest.raises(Forbidden, match="only the owner"):
        c.create_product("visits", "query", "mine", unit_price=1.0, allowance=1.0)
    with owner(h) as c, pytest.raises(BadRequest, match="not open to hidden lookups"):
        c.create_product("visits", "lookup", "who", unit_price=1.0, allowance=10, columns=["age"])

    with h.analyst() as a:
        assert [p.id for p in a.products()] == [product.id]
        # Its owner sells queries on `visits` now: a query outside a subscription is refused (a dry run is free).
        with pytest.raises(Forbidden, match="under a subscription"):
            a.query(COUNT_BY_CLINIC, epsilon=0.4)
        assert a.query(COUNT_BY_CLINIC, epsilon=0.4, dry_run=True).allowed
        sub = a.subscribe(product.id)
        assert sub.status == "pending"
        with pytest.raises(Forbidden, match="not approved|pending"):
            a.query(COUNT_BY_CLINIC, epsilon=0.4, subscription=sub.id)
    with owner(h) as c:
        assert [s.id for s in c.subscriptions()] == [sub.id]
    r = xdp(h, h.tokens["clinic-0"], "products", "approve", sub.id, "--reason", "research", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["status"] == "approved", r.stderr
    r = xdp(h, h.tokens["analyst"], "products", "list", "--json")
    assert [(p["id"], p["subscription"]["status"]) for p in json.loads(r.stdout)] == [(product.id, "approved")]

    with h.analyst() as a:
        # A shape the product does not allow is refused before anything is held.
        with pytest.raises(BadRequest, match="aggregate sum"):
            a.query("SELECT clinic, SUM(cost) AS s FROM visits GROUP BY clinic", epsilon=0.4, subscription=sub.id)
        released = [a.query(COUNT_BY_CLINIC, epsilon=0.4, subscription=sub.id) for _ in range(2)]
        spent, reserved = budget_of(a)
        # Past the allowance (0.8 used of 1.0): refused before any budget is reserved.
        with pytest.raises(Conflict, match="epsilon 0.2 left of 1"):
            a.query(COUNT_BY_CLINIC, epsilon=0.4, subscription=sub.id)
        assert budget_of(a) == (spent, reserved)
        assert a.subscriptions()[0].used == pytest.approx(0.8) and a.subscriptions()[0].held == 0
        # The same refusal through the CLI: one line, the conflict exit code.
        r = xdp(h, h.tokens["analyst"], "query", COUNT_BY_CLINIC, "--epsilon", "0.4", "--subscription", sub.id)
        assert r.returncode == 9 and r.stderr.startswith("error: ") and "left of 1" in r.stderr
        assert budget_of(a) == (spent, reserved)
    # The same calls awaited (AsyncClient shares BaseClient's descriptions).
    from xdp_compute import AsyncClient

    async def browse() -> tuple[list[Any], list[Any]]:
        async with AsyncClient(h.cluster.url, h.tokens["analyst"]) as ac:
            return await ac.products(kind="query"), await ac.subscriptions()

    products, subs = asyncio.run(browse())
    assert [p.id for p in products] == [product.id] and [s.used for s in subs] == [pytest.approx(0.8)]
    for res in released:
        entry = res.delivery["receipt"]["entry"]
        assert entry["subscription"]["id"] == sub.id and entry["subscription"]["amount_micros"] == 40_000_000
        assert sorted(entry["nodes"]) == ["clinic-0", "clinic-1"]


def test_settlement_statements_equal_the_metered_usage(h: Hospitals) -> None:
    period = period_of(time.time())
    with h.cluster.client(h.tokens["auditor"]) as aud:
        released = [e for e in aud.audit_entries(kind="released") if e.get("subscription")]
        preview = aud.statements(period)
    metered = sum(e["subscription"]["amount_micros"] for e in released)
    assert metered == 80_000_000 and all(not s.issued for s in preview)

    with h.analyst() as a, pytest.raises(Forbidden):  # only the operator settles
        a.settle(period)
    r = xdp(h, h.tokens["admin"], "statements", period, "--settle", "--json")
    assert r.returncode == 0, r.stderr
    issued = json.loads(r.stdout)
    by = {(s["side"], s["party"]): s for s in issued}
    assert by[("subscriber", "analyst")]["total_micros"] == metered
    # Both holders' nodes took part in each job: each earns half of every use.
    assert by[("holder", "clinic-0-holder")]["total_micros"] == metered // 2
    assert by[("holder", "clinic-1-holder")]["total_micros"] == metered // 2
    for side in ("subscriber", "holder"):
        assert sum(s["total_micros"] for s in issued if s["side"] == side) == metered
    assert sorted(by[("subscriber", "analyst")]["lines"][0]["log_indexes"]) == sorted(e["index"] for e in released)

    # Each party sees its own statement, from the log; the auditor sees them all; a second settle is refused.
    with h.analyst() as a:
        mine = a.statements(period)
    assert [(s.side, s.party, s.issued) for s in mine] == [("subscriber", "analyst", True)]
    with h.cluster.client(h.tokens["clinic-1"]) as c:
        assert [(s.side, s.total_micros) for s in c.statements(period)] == [("holder", metered // 2)]
    with h.cluster.client(h.tokens["admin"]) as ad:
        with pytest.raises(Conflict, match="already settled"):
            ad.settle(period)
        with pytest.raises(BadRequest):
            ad.statements("2026-13")
    report = verify_log(h)
    assert report["ok"] and report["tree_size"] > max(s["index"] for s in issued)
    # The tables (no --json) print what a person reads.
    r = xdp(h, h.tokens["clinic-0"], "statements", period)
    assert r.returncode == 0 and f"{period} holder clinic-0-holder: total 40.00 (settled" in r.stdout, r.stderr
    for args in (("products", "list"), ("products", "subscriptions"), ("assets", "history", "visits"),
                 ("assets", "list")):
        r = xdp(h, h.tokens["analyst"], *args)
        assert r.returncode == 0 and r.stdout.strip() and "error" not in r.stderr, (args, r.stderr)
