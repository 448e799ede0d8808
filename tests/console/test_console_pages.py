"""Console page pieces that the browser tests do not reach: a released model's card, result tables."""

from __future__ import annotations

from typing import Any

from xdp_compute.gateway.console.analyst import model_card, result_table
from xdp_compute.gateway.console.render import environment


def _render(template: str, **ctx: Any) -> str:
    base = {"root": "/console", "user": None, "nav": [], "csrf": "", "flash": [], "path": "/analyst/jobs/j1"}
    return environment().get_template(template).render({**base, **ctx})


TRAINED = {"job_id": "j1", "status": "released", "operation": "training", "created_at": 1.7e9,
           "cost": {"epsilon": 3.0, "delta": 1e-5},
           "result": {"card": {"dataset": "visits", "features": ["age", "<b>cost</b>"], "label": "readmitted",
                               "classes": [0, 1], "nodes": ["clinic-0", "clinic-1"],
                               "epsilon_per_node": {"clinic-0": 2.99, "clinic-1": 2.98}, "delta": 1e-5,
                               "rounds_done": 8, "rounds_planned": 10,
                               "metrics": {"accuracy": 1.0, "accuracy_interval": [0.93, 1.0], "loss": 0.0,
                                           "loss_interval": [0.0, 0.41], "confidence_level": 0.95}},
                      "model": {"params": [0.1, 0.2]}}}


def test_a_released_models_card_shows_features_label_eps_per_node_rounds_and_clamped_metrics() -> None:
    card = model_card(TRAINED)
    assert card is not None
    assert [m["name"] for m in card["metrics"]] == ["accuracy", "loss"]
    assert card["metrics"][0] == {"name": "accuracy", "value": 1.0, "low": 0.93, "high": 1.0}
    html = _render("analyst_job.html", job=TRAINED, table=result_table(TRAINED), card=card, encrypted=False)
    assert "Model card" in html and "readmitted" in html and "clinic-0: 2.99" in html and "8 of 10" in html
    assert "[0.93, 1]" in html and "95% intervals" in html
    assert "&lt;b&gt;cost&lt;/b&gt;" in html and "<b>cost</b>" not in html
    assert "0.1, 0.2" not in html  # the parameters stay with the SDK


def test_a_query_result_shows_each_value_with_its_interval_and_suppressed_cells() -> None:
    job = {"job_id": "j2", "status": "released", "operation": "query", "created_at": 1.7e9, "cost": {"epsilon": 1.0},
           "result": {"columns": ["clinic", "n"], "level": 0.9,
                      "rows": [{"clinic": "north", "n": 12.0}, {"clinic": "<i>x</i>", "n": None}],
                      "intervals": [{"n": [10.0, 14.5]}, {"n": None}]}}
    table = result_table(job)
    assert table is not None and table["columns"] == ["clinic", "n"]
    html = _render("analyst_job.html", job=job, table=table, card=None, encrypted=False)
    assert "12 <span class=\"interval\">[10, 14.5]</span>" in html
    assert "suppressed" in html and "&lt;i&gt;x&lt;/i&gt;" in html and "90% intervals" in html
    assert result_table({"result": {"ciphertext": "..."}}) is None and model_card(job) is None
