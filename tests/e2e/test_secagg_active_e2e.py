"""A gateway that deviates in secure aggregation aborts the round (issue #12 item 2), with real
gateway and node processes over mutual TLS.

The deviations are the attacks of ``tests/crypto/test_secagg_active.py``, played by a real
gateway through its test-only switches: it substitutes every peer's keys in the roster it routes
(the attack that recovered a node's input ``[111, 222, 333, 444]``), or counts one holder's two
nodes as two parties (which lowers the threshold and the noise). Each node verifies its peers'
signed keys against the deployment CA and refuses, in its own log; nothing is released.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from e2e_helpers import MANIFEST, invite, start_hospitals, visits_csv

from xdp_compute.cli.cluster import LocalCluster
from xdp_compute.errors import XdpError

COUNTS = "SELECT clinic, COUNT(*) AS n FROM visits GROUP BY clinic"


def _kinds(cluster: LocalCluster, token: str) -> list[str]:
    r = httpx.get(cluster.url + "/v1/audit/entries", params={"limit": 1000},
                  headers={"authorization": f"Bearer {token}"}, timeout=30, verify=cluster.verify)
    r.raise_for_status()
    return [e["kind"] for e in r.json()]


def test_a_gateway_that_substitutes_keys_aborts_the_round(tmp_path: Path) -> None:
    h = start_hospitals(tmp_path, n=3, rows=120, tls=True, gateway_env={"XDP_TEST_GATEWAY_SWAP_KEYS": "1"})
    try:
        with h.analyst() as a, pytest.raises(XdpError, match="aborted"):
            a.query(COUNTS, epsilon=0.5)
        assert "released" not in _kinds(h.cluster, h.tokens["auditor"])
        for name in h.nodes:
            log = (h.cluster.root / f"{name}.log").read_text()
            assert "not signed by its certified identity" in log, log[-3000:]
    finally:
        h.cluster.close()


def test_an_honest_tls_gateway_completes_the_authenticated_rounds(tmp_path: Path) -> None:
    h = start_hospitals(tmp_path, n=3, rows=120, tls=True)
    try:
        with h.analyst() as a:
            r = a.query(COUNTS, epsilon=1.0)
        assert r.rows
        assert "released" in _kinds(h.cluster, h.tokens["auditor"])
        for name in h.nodes:
            log = (h.cluster.root / f"{name}.log").read_text()
            assert "refused" not in log, log[-3000:]
    finally:
        h.cluster.close()


def test_one_holders_two_nodes_counted_as_two_parties_are_refused(tmp_path: Path) -> None:
    """clinic-0's holder runs two nodes; the gateway declares them two parties (threshold 2 of 3
    nodes instead of all 3, and noise for two honest shares). The certificates name one holder."""
    cluster = LocalCluster(root=tmp_path, env={"XDP_HEARTBEAT_SECONDS": "0.5"}, tls=True)
    try:
        cluster.start_gateway(env={"XDP_TEST_GATEWAY_SPLIT_PARTIES": "1"})
        admin, analyst = cluster.token("admin", "admin"), cluster.token("analyst", "analyst")
        auditor = cluster.token("auditor", "auditor")
        owner, other = cluster.token("holder", "clinic-0-holder"), cluster.token("holder", "clinic-1-holder")
        nodes = [("clinic-0", owner, 0), ("clinic-0b", owner, 1), ("clinic-1", other, 2)]
        for i, (name, token, seed) in enumerate(nodes):
            m = cluster.write_node_files(name, MANIFEST.format(node=name, region="CN-FJ", budget=1000.0, min_group=5,
                                                               categories='["transport"]', approval="false"),
                                         {"visits.csv": visits_csv(seed, 120)})
            if token is other:
                invite(cluster, owner, "clinic-1-holder")
            cluster.start_node(name, token, m)
            if i == 0:
                cluster.wait_online(admin, [name])
        cluster.wait_online(admin, [n for n, _, _ in nodes])
        with cluster.client(analyst) as a, pytest.raises(XdpError, match="aborted"):
            a.query(COUNTS, epsilon=0.5)
        assert "released" not in _kinds(cluster, auditor)
        refusals = [(cluster.root / f"{n}.log").read_text() for n, _, _ in nodes]
        assert any("do not match the parties" in log and "counted as 2 parties" in log for log in refusals), \
            [log[-2000:] for log in refusals]
    finally:
        cluster.close()
