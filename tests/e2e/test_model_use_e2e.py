"""A released model used as an ML team uses it (issue #15 item 3): trained through the gateway on three
real node processes with ``xdp train --out model.onnx``, applied with ``predict`` to raw rows of held-out
data, and run from the exported file by onnxruntime alone.

Before: the released logistic regression scored 0.412 on raw feature values (0.798 on values rescaled
by the declared bounds, which the user had to rebuild from the manifest); the card said
``feature_names: None, label: None`` and showed ``accuracy 1.2916``.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rich.console import Console

from xdp_compute import Client
from xdp_compute.cli.cluster import LocalCluster
from xdp_compute.cli.demo import MANIFEST, start_demo_cluster, synthetic_patients

pytestmark = pytest.mark.slow
XDP = str(Path(sys.executable).with_name("xdp"))
FEATURES = ["age", "stay_days", "chronic", "cost"]

_ORT = """
import json, sys
sys.modules["xdp_compute"] = None  # the exported model must run without this package
import numpy as np, onnxruntime as ort
s = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
x = np.array(json.loads(sys.stdin.read()), dtype=np.float32)
p, k = s.run(None, {"input": x})
print(json.dumps({"p": p.tolist(), "k": k.tolist(), "meta": s.get_modelmeta().custom_metadata_map}))
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalCluster, dict[str, str], Any, Path]]:
    out = tmp_path_factory.mktemp("model") / "readmission.onnx"
    cluster, tokens = start_demo_cluster(Console(quiet=True), rows=600, preload=True)
    try:
        clean = {k: v for k, v in os.environ.items() if not k.startswith("XDP_")}
        r = subprocess.run([XDP, "train", "patients", "--features", ",".join(FEATURES), "--label", "readmitted",
                            "--rounds", "6", "--target-epsilon", "3", "--out", str(out), "--json"],
                           capture_output=True, text=True, timeout=900, check=False,
                           env={**clean, "XDP_URL": cluster.url, "XDP_TOKEN": tokens["ml"]})
        assert r.returncode == 0, r.stderr
        doc = json.loads(r.stdout)  # --json stays one document
        assert doc["exported"] == str(out) and out.is_file()
        with Client(cluster.url, tokens["ml"]) as ml:
            from xdp_compute.sdk.training import TrainingJob

            job = TrainingJob(ml, doc["job_id"])
            job.wait(progress=False, timeout=60)
            yield cluster, tokens, job, out
    finally:
        cluster.close()
        shutil.rmtree(cluster.root, ignore_errors=True)


def held_out(rows: int = 1500) -> list[dict[str, str]]:
    """Fresh patients from the demo's generator with a seed no node holds: raw CSV values (strings)."""
    return list(csv.DictReader(io.StringIO(synthetic_patients("Jimei", rows, seed=4242))))


def test_predict_on_raw_rows_matches_the_model_on_encoded_features(trained: Any) -> None:
    import torch

    from xdp_compute.domain.manifest import parse_manifest_text
    from xdp_compute.training.features import encode

    _, _, job, _ = trained
    model = job.predictor()
    assert model.feature_names == FEATURES and model.label == "readmitted" and model.classes == ["no", "yes"]
    rows = held_out()
    raw = [{f: r[f] for f in FEATURES} for r in rows]
    truth = np.array([r["readmitted"] for r in rows], dtype=object)
    acc_raw = float((model.predict(raw) == truth).mean())

    # The same model on features encoded by hand with the nodes' own encoder and the declared columns.
    ds = parse_manifest_text(MANIFEST.format(node="x", approval="false"), check_files=False).datasets[0]
    spec = {"dataset": "patients", "model": "logreg", "features": FEATURES, "label": "readmitted"}
    data = {c: np.array([r[c] for r in rows], dtype=object) for c in [*FEATURES, "readmitted"]}
    enc = encode(spec, [c.to_dict() for c in ds.columns], data)
    with torch.no_grad():
        p = torch.sigmoid(job.model()(torch.tensor(enc.X))).squeeze(-1).numpy()
    acc_encoded = float(((p > 0.5) == (enc.y == 1)).mean())
    print(f"\nheld-out accuracy: predict() on raw rows {acc_raw:.3f}, model on encoded features {acc_encoded:.3f}")
    assert abs(acc_raw - acc_encoded) <= 0.05
    np.testing.assert_allclose(model.predict_proba(raw)[:, 1], p, atol=1e-5)
    # Raw values straight into the network (what users did before) are not what it was trained on.
    X_raw = np.array([[float(r["age"]), float(r["stay_days"]), r["chronic"] == "yes", float(r["cost"])]
                      for r in rows], dtype=np.float32)
    X_raw_onehot = np.concatenate([X_raw[:, :2], 1 - X_raw[:, 2:3], X_raw[:, 2:3], X_raw[:, 3:]], axis=1)
    with torch.no_grad():
        naive = torch.sigmoid(job.model()(torch.tensor(X_raw_onehot))).squeeze(-1).numpy()
    assert not np.allclose(naive, p, atol=1e-3)

    pd = pytest.importorskip("pandas")
    frame = pd.read_csv(io.StringIO(synthetic_patients("Jimei", 1500, seed=4242))).head(50)
    np.testing.assert_allclose(model.predict_proba(frame), model.predict_proba(raw[:50]), atol=1e-12)
    with pytest.raises(ValueError, match="'rare' is not a declared value of feature 'chronic'"):
        model.predict([{**raw[0], "chronic": "rare"}])


def test_the_exported_file_runs_with_onnxruntime_alone(trained: Any) -> None:
    pytest.importorskip("onnxruntime")
    _, _, job, out = trained
    model = job.predictor()
    raw = [{f: r[f] for f in FEATURES} for r in held_out(200)]
    x = model.onnx_inputs(raw)
    r = subprocess.run([sys.executable, "-c", _ORT, str(out)], input=json.dumps(x.tolist()), capture_output=True,
                       text=True, timeout=120, check=True)
    got = json.loads(r.stdout)
    np.testing.assert_allclose(got["p"], model.predict_proba(raw), atol=1e-5)
    assert [model.classes[k] for k in got["k"]] == list(model.predict(raw))
    assert json.loads(got["meta"]["feature_names"]) == FEATURES and got["meta"]["label"] == "readmitted"
    assert json.loads(got["meta"]["encoding"])[0] == {"name": "age", "type": "int", "min": 0.0, "max": 110.0}


def test_the_card_states_features_label_privacy_and_clamped_metrics(trained: Any) -> None:
    _, _, job, _ = trained
    card = job.model_card()
    assert card["features"] == FEATURES and card["label"] == "readmitted" and card["classes"] == ["no", "yes"]
    assert card["architecture"]["feature_names"] == ["age", "stay_days", "chronic=no", "chronic=yes", "cost"]
    assert card["architecture"]["label"]["classes"] == ["no", "yes"]
    assert [c["name"] for c in card["encoding"]] == ["age", "cost", "stay_days", "chronic", "readmitted"]
    assert card["n_nodes"] == 3 and card["parties"] == 3 and card["rounds_done"] == 6
    assert set(card["epsilon_per_node"].values()) == {3.0} and 0 < card["delta"] < 1e-3
    assert set(card["sampling_rate"].values()) == {64 / 5000}
    for m in [card["metrics"], *card["metrics_per_node"].values()]:
        assert m["accuracy"] is not None and 0.0 <= m["accuracy"] <= 1.0
        assert m["loss"] is not None and m["loss"] >= 0.0
        lo, hi = m["accuracy_interval"]
        assert 0.0 <= lo <= m["accuracy"] <= hi <= 1.0
        lo, hi = m["loss_interval"]
        assert 0.0 <= lo <= m["loss"] <= hi


def test_xdp_train_out_must_be_onnx_and_says_so_in_one_line(tmp_path: Path) -> None:
    # Refused before anything is sent (the gateway address is never dialled).
    r = subprocess.run([XDP, "train", "patients", "--features", "age", "--label", "readmitted",
                        "--out", str(tmp_path / "model.pt"), "--url", "http://127.0.0.1:9", "--token", "t"],
                       capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 8, (r.stdout, r.stderr)  # ExitCode.INVALID
    assert r.stderr.strip() == "error: --out writes ONNX: give a path ending in .onnx, not 'model.pt'"
    assert not (tmp_path / "model.pt").exists()
