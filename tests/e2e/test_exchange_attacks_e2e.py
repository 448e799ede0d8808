"""Attacks on the data exchange (issue #17) with real processes: a gateway and two holders' nodes.

What an adversary would try that needs the real thing: reading or deriving a node's commitment
key (it stays in the node's state folder; nothing the gateway stores, logs or answers holds it),
testing a guess of the rows against a published commitment, racing queries against an allowance,
and editing exchange entries (listings, decisions, assets, statements) in the gateway's database
behind the auditors' back. The in-process attacks are tests/gateway/test_exchange_attacks.py.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e_helpers import Hospitals, start_hospitals

from xdp_compute.errors import Conflict
from xdp_compute.gateway.exchange import period_of

pytestmark = pytest.mark.slow
COUNT_BY_CLINIC = "SELECT clinic, COUNT(*) AS n FROM visits GROUP BY clinic"


@pytest.fixture(scope="module")
def h(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hospitals]:
    hospitals = start_hospitals(tmp_path_factory.mktemp("xattack"), n=2, rows=120, budget=100.0, min_group=5)
    try:
        yield hospitals
    finally:
        hospitals.cluster.close()


def test_the_commitment_key_stays_on_the_node_and_no_guess_can_be_tested(h: Hospitals) -> None:
    from xdp_compute.audit import canonical_json
    from xdp_compute.domain.manifest import load_manifest
    from xdp_compute.node.sources import open_source
    from xdp_compute.node.tasks.commit import _text_rows, content_commitment

    with h.cluster.client(h.tokens["clinic-0"]) as c:
        v = c.register_asset("visits", "Clinic visits", "DP aggregates only")
    [key_file] = list((h.cluster.root / "clinic-0").rglob("commitment-visits.key"))
    key = key_file.read_bytes()
    assert len(key) == 32 and stat.S_IMODE(key_file.stat().st_mode) == 0o600
    # Nothing outside the node's own folder holds the key, raw or hex: not the gateway's database,
    # not its log files, not the other node's folder; nor any answer an auditor can fetch.
    with h.cluster.client(h.tokens["auditor"]) as aud:
        served = json.dumps(aud._get("/v1/audit/entries")) + json.dumps([x.model_dump() for x in aud.assets()])
    assert key.hex() not in served
    for f in h.cluster.root.rglob("*"):
        if f.is_file() and (h.cluster.root / "clinic-0") not in f.parents:
            data = f.read_bytes()
            assert key not in data and key.hex().encode() not in data, f

    # Binding: whoever is handed the key and the rows recomputes the node's commitment; the asset's
    # commitment is the hash of the nodes' ones.
    manifest = load_manifest(h.cluster.root / "clinic-0" / "node.toml")
    ds = manifest.datasets[0]
    src = open_source(manifest, ds)
    try:
        rows = _text_rows(ds, src)
    finally:
        src.close()
    assert content_commitment(key, rows) == v.node_commitments["clinic-0"]
    assert hashlib.sha256(canonical_json(v.node_commitments)).hexdigest() == v.content_commitment
    # Hiding: someone who knows every row (the strongest guess) but not the key cannot test it: the
    # unkeyed hash of the same encoding, or the HMAC under any other key, is another value.
    encoded = b"".join(len(r).to_bytes(8, "big") + r for r in
                       sorted(json.dumps(list(x), ensure_ascii=False, separators=(",", ":")).encode() for x in rows))
    assert hashlib.sha256(encoded).hexdigest() != v.node_commitments["clinic-0"]
    assert hmac.new(bytes(32), encoded, hashlib.sha256).hexdigest() != v.node_commitments["clinic-0"]
    assert content_commitment(key, rows[1:]) != v.node_commitments["clinic-0"]  # a row removed
    # And no count of rows anywhere in the entry.
    assert str(len(rows)) not in json.dumps({k: x for k, x in v.model_dump().items()
                                             if k not in ("index", "time", "version", "previous_index")})


def test_racing_queries_never_use_more_than_the_allowance(h: Hospitals) -> None:
    with h.cluster.client(h.tokens["clinic-0"]) as c:
        product = c.create_product("visits", "query", "counts", unit_price=10.0, allowance=1.0,
                                   shapes={"aggregates": ["count"], "group_by": ["clinic"]})
    with h.analyst() as a:
        sub = a.subscribe(product.id)
    with h.cluster.client(h.tokens["clinic-0"]) as c:
        c.approve_subscription(sub.id)
    outcomes: list[Any] = []
    barrier = threading.Barrier(4)

    def ask() -> None:
        with h.analyst() as a:
            barrier.wait()
            try:
                outcomes.append(a.query(COUNT_BY_CLINIC, epsilon=0.3, subscription=sub.id))
            except Conflict as e:
                outcomes.append(e)

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    released = [o for o in outcomes if not isinstance(o, Exception)]
    assert len(released) == 3 and len(outcomes) == 4, outcomes
    with h.analyst() as a:
        [mine] = [s for s in a.subscriptions() if s.id == sub.id]
    assert mine.used == pytest.approx(0.9) and mine.held == 0
    assert sum(r.delivery["receipt"]["entry"]["subscription"]["amount_micros"] for r in released) == 9_000_000


def audit_verify(h: Hospitals, checkpoint: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "xdp_compute", "audit", "verify", "--url", h.cluster.url,
                           "--token", h.tokens["auditor"], "--checkpoint", str(checkpoint)],
                          capture_output=True, text=True, timeout=120, check=False)


def test_an_edited_exchange_entry_fails_verification_at_its_index(h: Hospitals, tmp_path: Path) -> None:
    with h.cluster.client(h.tokens["admin"]) as ad:
        ad.settle(period_of(time.time()))
    cp = tmp_path / "checkpoint.json"
    ok = audit_verify(h, cp)
    assert ok.returncode == 0, ok.stderr
    db = h.cluster.root / "gateway.db"
    with sqlite3.connect(db) as conn:
        rows = dict(conn.execute("SELECT idx, entry_json FROM log_entries").fetchall())
    first = {}
    for idx in sorted(rows):
        first.setdefault(json.loads(rows[idx])["kind"], idx)
    edits = {"asset_registered": ("content_commitment", "0" * 64), "product_listed": ("unit_price", 0.01),
             "subscription_decided": ("decision", "rejected"), "statement_issued": ("total_micros", 1)}
    assert set(edits) <= set(first), first
    for kind, (field, value) in edits.items():
        idx = first[kind]
        forged = {**json.loads(rows[idx]), field: value}
        with sqlite3.connect(db) as conn:
            conn.execute("UPDATE log_entries SET entry_json = ? WHERE idx = ?", (json.dumps(forged), idx))
        try:
            bad = audit_verify(h, cp)
            assert bad.returncode != 0 and f"first bad index: {idx}" in bad.stderr, (kind, bad.stderr)
        finally:
            with sqlite3.connect(db) as conn:
                conn.execute("UPDATE log_entries SET entry_json = ? WHERE idx = ?", (rows[idx], idx))
    assert audit_verify(h, cp).returncode == 0
