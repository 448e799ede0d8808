"""Issue #11, item 7: Paillier encrypted delivery attacked with real gateway and node processes.

(a) A gateway that forwards one node's ciphertext to the analyst (simulated by decrypting, with
    the analyst's key, every ciphertext the gateway received — the test-only gRPC capture) must
    give the analyst uniform ring values, not that node's partial (which carries only 1/t of
    the noise).
(b) A raw REST client (httpx, no SDK) decrypting the released ciphertext itself must never see
    a group count below the holders' ``min_group_size``: small cells are blanked before release.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from e2e_helpers import Hospitals, start_hospitals, truth

from xdp_compute import Client
from xdp_compute.crypto.paillier import EncryptedVector, PaillierPrivate, decrypt_aggregate, generate_keypair
from xdp_compute.errors import InvalidCiphertext
from xdp_compute.query import QueryPlan
from xdp_compute.query.plan import from_ring

pytest.importorskip("phe")

SQL = "SELECT clinic, COUNT(*) AS n FROM visits GROUP BY clinic"
# Per-clinic totals over 3 x 300 rows are north 450, south 350, east 100: with a minimum group
# size of 200, east is far below it and the other two far above it (>= 15 noise sds at eps = 1).
MIN_GROUP = 200


@pytest.fixture(scope="module")
def hospitals(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hospitals]:
    capture = tmp_path_factory.mktemp("cap") / "capture.tsv"
    h = start_hospitals(tmp_path_factory.mktemp("he-attack"), n=3, rows=300, min_group=MIN_GROUP,
                        gateway_env={"XDP_GRPC_CAPTURE": str(capture)})
    h.files["__capture__"] = str(capture)
    try:
        yield h
    finally:
        h.cluster.close()


def _node_files(h: Hospitals) -> dict[str, str]:
    return {k: v for k, v in h.files.items() if not k.startswith("__")}


def _captured_blobs(h: Hospitals) -> list[bytes]:
    """Every binary field of every task result the gateway received from a node."""
    from xdp_compute.v1 import node_pb2 as pb

    out = []
    for line in Path(h.files["__capture__"]).read_text().splitlines():
        parts = line.split("\t")
        if len(parts) > 2 and parts[1] == "SubmitResult":
            out.extend(pb.TaskResult.FromString(bytes.fromhex(parts[2])).blobs.values())
    return out


def _count_sigma(res: dict[str, Any], n_shares: int) -> float:
    count = next(m for m in res["noise"]["measurements"] if m["name"].startswith("count"))
    num, _, den = str(count["sigma_node2"]).partition("/")
    return math.sqrt(float(num) / float(den or 1) * n_shares)


def _decrypt_counts(priv: PaillierPrivate, vec: EncryptedVector, plan: QueryPlan) -> list[int]:
    """The COUNT(*) slot of every cell, read as a Z_2^64 ring value (signed)."""
    values = decrypt_aggregate(priv, vec)
    j = plan.measurement_index("count", None)
    return [from_ring(values[plan.index(c, j)] % (1 << 64)) for c in range(len(plan.cells))]


def test_a_single_nodes_ciphertext_forwarded_by_the_gateway_decrypts_to_noise(hospitals: Hospitals,
                                                                              tmp_path: Path) -> None:
    from xdp_compute.crypto.paillier import load_private_key

    a = Client(hospitals.cluster.url, hospitals.tokens["analyst"], key_dir=str(tmp_path / "keys"))
    before = len(_captured_blobs(hospitals))
    r = a.query(SQL, epsilon=1.0, encrypt=True)
    priv = load_private_key(next((tmp_path / "keys").glob("paillier-*.json")))
    res = r.delivery["result"]
    plan = QueryPlan.from_dict(res["plan"])
    clinics = [cell[0] for cell in plan.cells]
    per_node = {node: truth({node: text}) for node, text in _node_files(hospitals).items()}
    # One node's share of the noise: sigma_node (the released total carries n_shares of them).
    sigma_node = _count_sigma(res, 1)
    recovered, forwarded = [], 0
    for blob in _captured_blobs(hospitals)[before:]:
        try:
            vec = EncryptedVector.from_bytes(blob, priv.public, max_bytes=64 << 20)
        except InvalidCiphertext:
            continue  # not a ciphertext under the analyst's key (keys, shares, masked counts)
        forwarded += 1
        counts = _decrypt_counts(priv, vec, plan)
        # The node whose true counts the decrypted ones are closest to; within 6 of one node's
        # noise sds in every cell, that is the node's noisy partial.
        dist = {node: max(abs(counts[c] - t[clinic]["n"]) for c, clinic in enumerate(clinics))
                for node, t in per_node.items()}
        node = min(dist, key=lambda k: dist[k])
        if dist[node] <= 6 * sigma_node + 1:
            recovered.append(node)
    assert forwarded >= 3, "the gateway received no per-node ciphertext under the analyst's key"
    assert recovered == [], f"a single forwarded ciphertext gave the analyst the partial of {recovered}"


def test_a_raw_rest_client_never_decrypts_a_small_group_count(hospitals: Hospitals) -> None:
    public, priv = generate_keypair(2048)
    body = {"sql": SQL, "epsilon": 1.0, "public_key": public.to_dict()}
    with httpx.Client(base_url=hospitals.cluster.url, timeout=300,
                      headers={"authorization": f"Bearer {hospitals.tokens['analyst']}"}) as http:
        resp = http.post("/v1/queries", json=body)
    assert resp.status_code == 200, resp.text
    res = resp.json()["result"]
    plan = QueryPlan.from_dict(res["plan"])
    vec = EncryptedVector.from_bytes(base64.b64decode(res["ciphertext"]), public, max_bytes=64 << 20)
    counts = _decrypt_counts(priv, vec, plan)
    exact = truth(_node_files(hospitals))
    suppressed = set(res.get("suppressed_cells", []))
    sd = _count_sigma(res, int(res["n_shares"]))
    for c, cell in enumerate(plan.cells):
        true_n = exact[cell[0]]["n"]
        if c in suppressed:
            # A blanked cell decrypts to a uniform ring value, not to its count.
            assert abs(counts[c]) > 1 << 32, f"suppressed cell {cell} still decrypts to {counts[c]}"
        else:
            assert counts[c] >= MIN_GROUP, f"cell {cell} released a small count {counts[c]} (true {true_n})"
        # Far from the threshold the decision is certain (6 sds: fails < 1e-8 of the time).
        if true_n <= MIN_GROUP - 6 * sd:
            assert c in suppressed, f"small cell {cell} (true {true_n}) was not suppressed"
        if true_n >= MIN_GROUP + 6 * sd:
            assert c not in suppressed, f"large cell {cell} (true {true_n}) was suppressed"
    assert suppressed, "the small group (east) was released"
