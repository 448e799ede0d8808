"""Homomorphic-encryption queries end to end with real processes."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_helpers import Hospitals, start_hospitals, truth

from xdp_compute import Client
from xdp_compute.errors import XdpError

SQL = "SELECT clinic, COUNT(*) AS n, SUM(cost) AS total, AVG(cost) AS mean FROM visits GROUP BY clinic"


@pytest.fixture(scope="module")
def hospitals(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hospitals]:
    capture = tmp_path_factory.mktemp("cap") / "capture.tsv"
    h = start_hospitals(tmp_path_factory.mktemp("he"), n=3, rows=300,
                        gateway_env={"XDP_GRPC_CAPTURE": str(capture)})
    h.files["__capture__"] = str(capture)
    try:
        yield h
    finally:
        h.cluster.close()


def test_encrypted_delivery_agrees_with_plain_path(hospitals: Hospitals, tmp_path: Path) -> None:
    a = Client(hospitals.cluster.url, hospitals.tokens["analyst"], key_dir=str(tmp_path / "keys"))
    enc = a.query(SQL, epsilon=2.0, encrypt=True)
    plain = a.query(SQL, epsilon=2.0)
    exact = truth({k: v for k, v in hospitals.files.items() if not k.startswith("__")})
    assert [r["clinic"] for r in enc.rows] == [r["clinic"] for r in plain.rows]
    for e_row, e_iv, p_row, p_iv in zip(enc.rows, enc.intervals, plain.rows, plain.intervals, strict=True):
        for key in ("n", "total", "mean"):
            # Both answers are noisy versions of the same truth: they agree within their intervals.
            half = (e_iv[key][1] - e_iv[key][0]) / 2 + (p_iv[key][1] - p_iv[key][0]) / 2
            assert abs(e_row[key] - p_row[key]) <= 3 * half
        t = exact[e_row["clinic"]]
        assert abs(e_row["n"] - t["n"]) <= 3 * (e_iv["n"][1] - e_iv["n"][0])
    assert a.verify_receipt(enc)
    # The key file is owner-only.
    key_files = list((tmp_path / "keys").glob("paillier-*.json"))
    assert key_files and oct(key_files[0].stat().st_mode & 0o777) == "0o600"


def test_gateway_keeps_and_logs_only_ciphertext_digests(hospitals: Hospitals, tmp_path: Path) -> None:
    a = Client(hospitals.cluster.url, hospitals.tokens["analyst"], key_dir=str(tmp_path / "keys"))
    r = a.query("SELECT COUNT(*) AS n FROM visits", epsilon=1.0, encrypt=True, idempotency_key="enc-1")
    ct = r.delivery["result"]["ciphertext"]
    db = hospitals.cluster.root / "gateway.db"
    with sqlite3.connect(db) as c:
        stored = " ".join(x[0] or "" for x in c.execute("SELECT result_json FROM jobs").fetchall())
        log = " ".join(x[0] for x in c.execute("SELECT entry_json FROM log_entries").fetchall())
    assert ct[:64] not in stored and ct[:64] not in log
    # What the nodes sent the gateway: only ciphertexts (no plain partial vectors) for this job.
    from xdp_compute.v1 import node_pb2 as pb

    capture = Path(hospitals.files["__capture__"])
    results = [pb.TaskResult.FromString(bytes.fromhex(x.split("\t")[2])) for x in capture.read_text().splitlines()
               if x.split("\t")[1] == "SubmitResult"]
    he = [x for x in results if "ciphertext" in x.blobs]
    # The header holds nothing but the contract version. Beside the ciphertext of its masked
    # input, a node sends only that input's COUNT(*) words (one per cell), masked: for this
    # module's GROUP BY clinic query 3 of its 9 words, for COUNT(*) alone its 1 word.
    from xdp_compute.crypto.secagg import MaskedInput

    assert len(he) >= 3
    for x in he:
        assert set(x.blobs) == {"ciphertext", "secagg"} and json.loads(x.header_json) == {"v": 1}
        ct = x.blobs["ciphertext"]
        length = json.loads(ct[8:8 + int.from_bytes(ct[4:8], "big")])["length"]
        shown = MaskedInput.decode(x.blobs["secagg"]).vector.shape[0]
        assert (length, shown) in ((9, 3), (1, 1)), (length, shown)
    # A retry with the same key returns the same job but the gateway no longer holds the ciphertext.
    with pytest.raises(XdpError, match="digest"):
        a.query("SELECT COUNT(*) AS n FROM visits", epsilon=1.0, encrypt=True, idempotency_key="enc-1")


def test_wrong_private_key_fails_clearly(hospitals: Hospitals, tmp_path: Path) -> None:
    from xdp_compute.crypto.paillier import generate_keypair
    from xdp_compute.errors import WrongKey
    from xdp_compute.sdk.he import decrypt_delivery

    a = Client(hospitals.cluster.url, hospitals.tokens["analyst"], key_dir=str(tmp_path / "keys"))
    r = a.query("SELECT COUNT(*) AS n FROM visits", epsilon=0.5, encrypt=True)
    _, other = generate_keypair(2048)
    with pytest.raises(WrongKey):
        decrypt_delivery(other, r.delivery)


@pytest.mark.parametrize("key, words", [
    ({"n": str((1 << 1023) + 1)}, "2048"),
    ({"n": "not a number"}, "modulus"),
    ({"n": str(2 ** 2048 + 2)}, ""),
    ({"scheme": "rsa", "n": "77"}, "scheme"),
    ({"n": "5", "extra": 1}, "unknown"),
])
def test_bad_public_keys_are_400_and_gateway_stays_up(hospitals: Hospitals, key: dict[str, str], words: str) -> None:
    a = hospitals.analyst()
    with pytest.raises(XdpError) as e:
        a._post("/v1/queries", json={"sql": "SELECT COUNT(*) FROM visits", "epsilon": 1.0, "public_key": key})
    assert e.value.status == 400 and words.lower() in e.value.detail.lower(), e.value.detail
    assert a.me()["role"] == "analyst"


def test_fifty_megabyte_payload_is_413(hospitals: Hospitals) -> None:
    a = hospitals.analyst()
    with pytest.raises(XdpError) as e:
        a._post("/v1/queries", json={"sql": "SELECT COUNT(*) FROM visits", "epsilon": 1.0,
                                     "public_key": {"n": "7" * (50 << 20)}})
    assert e.value.status == 413
    assert a.me()["role"] == "analyst"
