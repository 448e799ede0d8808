"""Private joins end to end (issue #16): a gateway and two holders' nodes as real processes.

A hospital (district, age) and an insurer (claim, tier) hold overlapping synthetic populations:
partial overlap, keys in different orders, some keys repeated on both sides (every row of a
repeated key is dropped by its holder), some keys written with surrounding spaces (normalised).
The analyst joins them through the one query path (``Client.query``; the SDK sends its Paillier
key and decrypts); the answers must hold the plaintext join's truth inside their 95% intervals.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from join_data import HOSPITAL, INSURER, Populations, populations

from xdp_compute import Client
from xdp_compute.cli.cluster import LocalCluster

pytestmark = pytest.mark.slow

GROUPED = ("SELECT h.district, i.tier, COUNT(*) AS n, SUM(i.claim) AS total, AVG(i.claim) AS mean "
           "FROM hospital h JOIN insurer i ON h.citizen = i.citizen WHERE h.age > 20 GROUP BY h.district, i.tier")
COUNT = "SELECT COUNT(*) AS n FROM insurer i JOIN hospital h ON i.citizen = h.citizen"


@dataclass
class Joined:
    cluster: LocalCluster
    tokens: dict[str, str]
    pops: Populations
    capture: Path


@pytest.fixture(scope="module")
def joined(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Joined]:
    root = tmp_path_factory.mktemp("join")
    capture = root / "capture.tsv"
    pops = populations(7, 70, 60, 36)
    cluster = LocalCluster(root=root, env={"XDP_HEARTBEAT_SECONDS": "0.5"})
    try:
        cluster.start_gateway(env={"XDP_GRPC_CAPTURE": str(capture)})
        tokens = {"admin": cluster.token("admin", "admin"), "analyst": cluster.token("analyst", "analyst"),
                  "hospital": cluster.token("holder", "hospital-holder"),
                  "insurer": cluster.token("holder", "insurer-holder")}
        mh = cluster.write_node_files("hospital-node", HOSPITAL.format(node="hospital-node", budget=1000,
                                                                       max_rows=72, approval="false"),
                                      {"hospital.csv": pops.hospital_csv})
        mi = cluster.write_node_files("insurer-node", INSURER.format(node="insurer-node", budget=1000,
                                                                     max_rows=64, approval="false"),
                                      {"insurer.csv": pops.insurer_csv})
        cluster.start_node("hospital-node", tokens["hospital"], mh)
        cluster.start_node("insurer-node", tokens["insurer"], mi)
        cluster.wait_online(tokens["admin"], ["hospital-node", "insurer-node"])
        yield Joined(cluster, tokens, pops, capture)
    finally:
        cluster.close()


@pytest.fixture(scope="module")
def public_key() -> dict[str, Any]:
    from xdp_compute.crypto.paillier import generate_keypair

    return generate_keypair(2048)[0].to_dict()  # type: ignore[no-any-return]


def analyst(j: Joined, tmp: Path) -> Client:
    return Client(j.cluster.url, j.tokens["analyst"], key_dir=str(tmp.parent / "analyst-keys"), timeout=600)


def test_grouped_count_sum_avg_over_the_join_are_inside_their_intervals(joined: Joined, tmp_path: Path) -> None:
    a = analyst(joined, tmp_path)
    truth = joined.pops.truth(where_age_over=20)
    misses = checks = 0
    for _ in range(2):  # repeated runs: fresh keys, scalars, permutations, dummies and noise each time
        r = a.query(GROUPED, epsilon=30.0)
        assert r.columns == ["district", "tier", "n", "total", "mean"] and len(r.rows) == 4
        for row, iv in zip(r.rows, r.intervals, strict=True):
            t = truth[(row["district"], row["tier"])]
            for alias, value in (("n", t["count"]), ("total", t["sum"]), ("mean", t["sum"] / t["count"])):
                checks += 1
                misses += not iv[alias][0] <= value <= iv[alias][1]
                # 3 half-widths of a 95% interval: z = 5.9, a correct answer fails < 1e-8 per check
                assert abs(row[alias] - value) <= 1.5 * (iv[alias][1] - iv[alias][0]), (alias, row, iv, t)
            assert iv["n"][1] - iv["n"][0] < 10  # generous epsilon: tight enough that a wrong join fails
        assert r.delivery["operation"] == "join_aggregate"
        assert a.verify_receipt(r)
    # The documented rate: 95% coverage; more than 9 misses in 24 has probability < 1e-6.
    assert checks == 24 and misses <= 9, misses
    # Both ledgers were charged, the log entry names both datasets.
    entry = r.receipt["entry"]  # type: ignore[index]
    assert entry["datasets"] == ["hospital", "insurer"] and entry["operation"] == "join_aggregate"
    assert set(r.remaining) == {"hospital-node/hospital", "insurer-node/insurer"}


def test_count_alone_is_the_intersection_size_within_its_interval(joined: Joined, tmp_path: Path) -> None:
    a = analyst(joined, tmp_path)
    true = len(set(joined.pops.hospital) & set(joined.pops.insurer))
    assert true == 33  # 36 shared keys, 3 of them repeated on both sides: dropped
    r = a.query(COUNT, epsilon=30.0)
    low, high = r.intervals[0]["n"]
    assert abs(r.rows[0]["n"] - true) <= 1.5 * (high - low) and high - low < 10


def test_dry_run_shows_the_protocol_cost_and_what_each_party_learns(joined: Joined, tmp_path: Path) -> None:
    plan: Any = analyst(joined, tmp_path).query(GROUPED, epsilon=2.0, dry_run=True)
    assert plan["operation"] == "join_aggregate" and plan["datasets"] == ["hospital", "insurer"]
    assert plan["plan"]["indicator_side"]["dataset"] == "hospital" and plan["plan"]["value_side"]["dataset"] == "insurer"
    assert set(plan["learns"]) == {"gateway", "indicator_holder", "value_holder", "analyst"}
    assert "join_unpermute" in plan["protocol"] and plan["cost"]["epsilon"] <= 2.0 + 1e-9


def test_the_gateway_receives_no_raw_key_and_no_raw_value(joined: Joined, tmp_path: Path) -> None:
    analyst(joined, tmp_path).query(GROUPED, epsilon=30.0)
    from xdp_compute.v1 import node_pb2 as pb

    seen = b""
    for line in joined.capture.read_text().splitlines():
        _, method, data = line.split("\t")[:3]
        seen += bytes.fromhex(data)
        if method == "SubmitResult":
            r = pb.TaskResult.FromString(bytes.fromhex(data))
            seen += r.header_json.encode() + b"".join(r.blobs.values())
    assert b"join_double_blind" in seen or len(seen) > 10_000  # the join's replies were captured
    for k in joined.pops.raw_keys:
        assert k.encode() not in seen and k.encode("utf-16-le") not in seen, k
    for v in joined.pops.raw_values:
        if "." in v:  # the claims (ages are small numbers that occur anywhere by chance)
            assert v.encode() not in seen, v


@pytest.mark.parametrize("sql, status, words", [
    ("SELECT COUNT(*) FROM hospital h JOIN insurer i ON h.age = i.citizen", 400, "is not a join key"),
    ("SELECT COUNT(*) FROM hospital h JOIN insurer i ON h.citizen = i.phone", 400, "different domains"),
    ("SELECT COUNT(*) FROM hospital h LEFT JOIN insurer i ON h.citizen = i.citizen", 400, "only inner joins"),
    (("SELECT COUNT(*) FROM hospital h JOIN insurer i ON h.citizen = i.citizen JOIN insurer j "
      "ON h.citizen = j.citizen"), 400, "exactly two datasets"),
    ("SELECT SUM(h.age), SUM(i.claim) FROM hospital h JOIN insurer i ON h.citizen = i.citizen", 400,
     "columns of both datasets"),
    ("SELECT COUNT(*) FROM hospital h JOIN nowhere n ON h.citizen = n.citizen", 404, "nowhere"),
])
def test_refusals_reach_the_analyst_as_problem_details(joined: Joined, public_key: dict[str, Any], sql: str,
                                                      status: int, words: str) -> None:
    r = httpx.post(f"{joined.cluster.url}/v1/queries", json={"sql": sql, "epsilon": 1.0,
                                                              "public_key": public_key},
                   headers={"Authorization": f"Bearer {joined.tokens['analyst']}"}, timeout=120)
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert words in r.json()["detail"]


def test_a_join_without_the_analysts_key_is_refused_with_the_reason(joined: Joined) -> None:
    r = httpx.post(f"{joined.cluster.url}/v1/queries", json={"sql": COUNT, "epsilon": 1.0},
                   headers={"Authorization": f"Bearer {joined.tokens['analyst']}"}, timeout=120)
    assert r.status_code == 400 and "public_key" in r.json()["detail"]


def test_the_gateway_keeps_only_the_digest_of_the_ciphertexts(joined: Joined, tmp_path: Path) -> None:
    r = analyst(joined, tmp_path).query(COUNT, epsilon=5.0)
    ct = r.delivery["result"]["ciphertexts"]
    with sqlite3.connect(joined.cluster.root / "gateway.db") as c:
        stored = " ".join(x[0] or "" for x in c.execute("SELECT result_json FROM jobs").fetchall())
        log = " ".join(x[0] for x in c.execute("SELECT entry_json FROM log_entries").fetchall())
    assert ct[:64] not in stored and ct[:64] not in log
    assert '"ciphertexts": {"sha256"' in stored


@pytest.fixture(scope="module")
def approving(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Joined]:
    """The same two holders; the insurer's dataset requires approval."""
    root = tmp_path_factory.mktemp("join-approval")
    pops = populations(8, 30, 30, 15)
    cluster = LocalCluster(root=root, env={"XDP_HEARTBEAT_SECONDS": "0.5"})
    try:
        cluster.start_gateway()
        tokens = {"admin": cluster.token("admin", "admin"), "analyst": cluster.token("analyst", "analyst"),
                  "hospital": cluster.token("holder", "hospital-holder"),
                  "insurer": cluster.token("holder", "insurer-holder")}
        mh = cluster.write_node_files("hospital-node", HOSPITAL.format(node="hospital-node", budget=1000,
                                                                       max_rows=32, approval="false"),
                                      {"hospital.csv": pops.hospital_csv})
        mi = cluster.write_node_files("insurer-node", INSURER.format(node="insurer-node", budget=1000,
                                                                     max_rows=32, approval="true"),
                                      {"insurer.csv": pops.insurer_csv})
        cluster.start_node("hospital-node", tokens["hospital"], mh)
        cluster.start_node("insurer-node", tokens["insurer"], mi)
        cluster.wait_online(tokens["admin"], ["hospital-node", "insurer-node"])
        yield Joined(cluster, tokens, pops, root / "none")
    finally:
        cluster.close()


def test_a_join_waits_for_the_owner_whose_dataset_requires_approval(approving: Joined, tmp_path: Path) -> None:
    from xdp_compute.crypto.paillier import generate_keypair
    from xdp_compute.sdk.he import decrypt_delivery

    public, private = generate_keypair(2048)
    a = analyst(approving, tmp_path)
    job: Any = a._post("/v1/queries", json={"sql": COUNT, "epsilon": 30.0, "public_key": public.to_dict()})
    assert job["status"] == "awaiting_approval"
    insurer = Client(approving.cluster.url, approving.tokens["insurer"])
    hospital = Client(approving.cluster.url, approving.tokens["hospital"])
    pending = [x for x in insurer.approvals() if x["job_id"] == job["job_id"]]
    assert pending and pending[0]["operation"] == "join_aggregate"
    assert pending[0]["plan_summary"]["dataset"] == "insurer JOIN hospital"
    assert not [x for x in hospital.approvals() if x["job_id"] == job["job_id"]]  # it requires none
    insurer.approve(job["job_id"])
    done = a._wait(job, 300)
    r = decrypt_delivery(private, done)
    true = len(set(approving.pops.hospital) & set(approving.pops.insurer))
    low, high = r.intervals[0]["n"]
    assert abs(r.rows[0]["n"] - true) <= 1.5 * (high - low)
    assert r.receipt["entry"]["approvers"] == ["insurer-holder"]  # type: ignore[index]


def test_a_join_on_a_dataset_sold_under_subscription_is_refused(approving: Joined, tmp_path: Path) -> None:
    """The data exchange (issue #17): once an owner lists a query product on its dataset, every
    query on it is metered under a subscription; a join cannot run under one, so it is refused
    before anything is reserved (it used to run unmetered). Runs last on this cluster."""
    from xdp_compute.errors import BadRequest, Forbidden

    hospital = Client(approving.cluster.url, approving.tokens["hospital"])
    product = hospital.create_product("hospital", "query", "Patients per district", unit_price=10.0,
                                      allowance=5.0, shapes={"aggregates": ["count"], "group_by": ["district"]})
    a = analyst(approving, tmp_path)
    before = a.budget("insurer")
    with pytest.raises(Forbidden, match="under a subscription"):
        a.query(COUNT, epsilon=1.0)
    sub = a.subscribe(product.id)
    hospital.approve_subscription(sub.id)
    with pytest.raises(Forbidden, match="under a subscription"):  # the SDK sends a join without it
        a.query(COUNT, epsilon=1.0, subscription=sub.id)
    from xdp_compute.crypto.paillier import generate_keypair

    public, _ = generate_keypair(2048)
    with pytest.raises(BadRequest, match="does not run under a subscription"):  # raw REST, with it
        a._post("/v1/queries", json={"sql": COUNT, "epsilon": 1.0, "public_key": public.to_dict(),
                                     "subscription": sub.id})
    assert a.budget("insurer").model_dump() == before.model_dump()  # nothing reserved or spent


def xdp(j: Joined, keys: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("XDP_")}
    env.update({"XDP_URL": j.cluster.url, "XDP_TOKEN": j.tokens["analyst"], "XDP_KEY_DIR": str(keys)})
    return subprocess.run([sys.executable, "-m", "xdp_compute", *args], capture_output=True, text=True, check=False,
                          timeout=600, env=env)


def test_xdp_query_runs_a_join_and_prints_its_refusals_on_one_line(joined: Joined, tmp_path: Path) -> None:
    keys = tmp_path.parent / "analyst-keys"  # the key the other tests made (3072-bit keygen is slow)
    r = xdp(joined, keys, "query", COUNT, "--epsilon", "30", "--json")
    assert r.returncode == 0, r.stderr + r.stdout
    doc = json.loads(r.stdout[r.stdout.index("{"):])
    true = len(set(joined.pops.hospital) & set(joined.pops.insurer))
    (row,), (iv,) = doc["rows"], doc["intervals"]
    assert abs(row["n"] - true) <= 1.5 * (iv["n"][1] - iv["n"][0])
    bad = xdp(joined, keys, "query", "SELECT COUNT(*) FROM hospital h LEFT JOIN insurer i ON h.citizen = i.citizen",
              "--epsilon", "1")
    assert bad.returncode == 8 and "only inner joins" in bad.stderr and "Traceback" not in bad.stderr
