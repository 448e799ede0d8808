"""CKKS encrypted scoring end to end, and the HE borders of the gateway."""

from __future__ import annotations

import base64
import csv
from collections.abc import Iterator

import numpy as np
import pytest
from e2e_helpers import Hospitals, start_hospitals

from xdp_compute import Client
from xdp_compute.errors import XdpError

NO_NOISE = {"XDP_TEST_HE_NO_DP_NOISE": "1", "XDP_HE_FLOOD_SIGMA": "0"}


@pytest.fixture(scope="module")
def quiet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hospitals]:
    h = start_hospitals(tmp_path_factory.mktemp("ckks"), n=3, rows=150, env=NO_NOISE, min_group=0)
    try:
        yield h
    finally:
        h.cluster.close()


def plain_scores(h: Hospitals, w: list[float], b: float, where: object = None) -> dict[str, float]:
    rows = [r for n in h.nodes for r in csv.DictReader((h.cluster.root / n / "visits.csv").open())]
    out = {}
    for c in ("north", "south", "east"):
        s = [w[0] * float(r["age"]) + w[1] * float(r["cost"]) + b for r in rows
             if r["clinic"] == c and (where is None or where(r))]
        out[c] = float(np.mean(s))
    return out


def test_scores_match_plaintext_with_noise_turned_down(quiet: Hospitals) -> None:
    a = quiet.analyst()
    w, b = [0.013, -0.0021], 0.5
    r = a.score("visits", features=["age", "cost"], weights=w, bias=b, group_by=["clinic"], epsilon=1.0,
                where="age >= 18")
    exact = plain_scores(quiet, w, b, where=lambda row: int(row["age"]) >= 18)
    assert [row["clinic"] for row in r.rows] == ["north", "south", "east"]
    for row in r.rows:
        assert row["score"] == pytest.approx(exact[row["clinic"]], abs=1e-3)
    assert a.verify_receipt(r)


def test_transcript_shows_gateway_never_sees_weights_or_answer(quiet: Hospitals) -> None:
    import sqlite3

    a = quiet.analyst()
    r = a.score("visits", features=["age"], weights=[0.25], epsilon=0.5)
    db = quiet.cluster.root / "gateway.db"
    with sqlite3.connect(db) as c:
        stored = " ".join(x[0] or "" for x in c.execute("SELECT result_json FROM jobs").fetchall())
    assert r.delivery["result"]["ciphertext"][:64] not in stored
    assert "0.25" not in stored  # the weight never reached the gateway in plaintext


@pytest.fixture(scope="module")
def borders(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hospitals]:
    h = start_hospitals(tmp_path_factory.mktemp("borders"), n=2, rows=50)
    try:
        yield h
    finally:
        h.cluster.close()


def _body(**over: object) -> dict[str, object]:
    from xdp_compute.crypto import ckks

    sctx = ckks.make_scoring_context(3, 2)
    body: dict[str, object] = {
        "dataset": "visits", "features": ["age"], "epsilon": 1.0, "score_bound": 100.0,
        "context": base64.b64encode(sctx.public_bytes).decode(),
        "weights": base64.b64encode(ckks.encrypt_weights(sctx, [1.0, 0.0, 1.0])).decode()}
    body.update(over)
    return body


def _secret_context() -> str:
    import tenseal as ts

    ctx = ts.context(ts.SCHEME_TYPE.CKKS, poly_modulus_degree=8192, coeff_mod_bit_sizes=[60, 40, 60])
    ctx.global_scale = 2**40
    return base64.b64encode(ctx.serialize(save_secret_key=True)).decode()


def _weak_context() -> str:
    import tenseal as ts

    ctx = ts.context(ts.SCHEME_TYPE.CKKS, poly_modulus_degree=4096, coeff_mod_bit_sizes=[40, 20, 40])
    ctx.global_scale = 2**20
    return base64.b64encode(ctx.serialize(save_secret_key=False)).decode()


@pytest.mark.parametrize("case, status, words", [
    ("secret", 400, "secret"),
    ("weak", 400, "4096"),
    ("garbage", 400, ""),
    ("truncated_weights", 400, ""),
    ("not_base64", 400, "base64"),
    ("fifty_mb", 413, ""),
])
def test_bad_he_input_is_4xx_and_gateway_stays_up(borders: Hospitals, case: str, status: int, words: str) -> None:
    a = borders.analyst()
    body = _body()
    if case == "secret":
        body["context"] = _secret_context()
    elif case == "weak":
        body["context"] = _weak_context()
    elif case == "garbage":
        body["context"] = base64.b64encode(b"\x08\x01" + bytes(range(256)) * 40).decode()
    elif case == "truncated_weights":
        body["weights"] = str(body["weights"])[: len(str(body["weights"])) // 2 // 4 * 4]
    elif case == "not_base64":
        body["weights"] = "***"
    elif case == "fifty_mb":
        body["context"] = "A" * (50 << 20)
    with pytest.raises(XdpError) as e:
        a._post("/v1/scores", json=body)
    assert e.value.status == status, e.value.detail
    assert words.lower() in e.value.detail.lower(), e.value.detail
    assert a.me()["role"] == "analyst" and borders.cluster.procs["gateway"].alive()
