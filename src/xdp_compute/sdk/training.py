"""ML teams' side of DP federated training: submit, follow progress, fetch the released model."""

from __future__ import annotations

import sys
import time
from typing import Any

from xdp_compute import errors as E


class TrainingJob:
    """A training job at the gateway. Only the final, released model can be downloaded."""

    def __init__(self, client: Any, job_id: str) -> None:
        self.client, self.job_id = client, job_id
        self._delivery: dict[str, Any] | None = None

    def status(self) -> dict[str, Any]:
        """Status, progress (round, epsilon spent, loss) and, when done, cost."""
        out = self.client.job(self.job_id)
        if out.get("status") == "released":
            self._delivery = out
        return out  # type: ignore[no-any-return]

    def wait(self, progress: bool = True, timeout: float = 3600.0, poll: float = 0.5) -> TrainingJob:
        """Block until the model is released (or the job is denied/fails: a typed error)."""
        deadline = time.time() + timeout
        bar = None
        if progress:
            from rich.progress import BarColumn, Progress, TextColumn

            bar = Progress(TextColumn("training"), BarColumn(), TextColumn("round {task.completed}/{task.total}"),
                           TextColumn("eps {task.fields[eps]}"), TextColumn("loss {task.fields[loss]}"),
                           transient=False, redirect_stdout=False)
            bar.start()
            tid = bar.add_task("train", total=None, eps="-", loss="-")
        try:
            while True:
                st = self.status()
                p = st.get("progress") or {}
                if bar is not None and p:
                    loss = p.get("loss")
                    bar.update(tid, total=p.get("rounds"), completed=p.get("round", 0),
                               eps=f"{p.get('epsilon', 0):.3f}", loss="-" if loss is None else f"{loss:.4f}")
                if st["status"] == "released":
                    if bar is not None:
                        card = st["result"]["card"]
                        bar.update(tid, completed=card["rounds_done"])
                    return self
                if st["status"] in ("denied", "failed"):
                    err = (st.get("error") or {}).get("detail", "")
                    cls = E.PolicyDenied if st["status"] == "denied" else E.ProtocolAborted
                    raise cls(f"training job {self.job_id} {st['status']}: {err}", job_id=self.job_id)
                if time.time() > deadline:
                    raise E.Conflict(f"training job {self.job_id} still {st['status']} after {timeout:g}s")
                time.sleep(poll)
        finally:
            if bar is not None:
                bar.stop()

    def _released(self) -> dict[str, Any]:
        if self._delivery is None:
            st = self.status()
            if st.get("status") != "released":
                raise E.Conflict(f"the model of job {self.job_id} is not released ({st.get('status')})")
        assert self._delivery is not None
        return self._delivery

    def model(self) -> Any:
        """The released model as a ``torch.nn.Module`` (eval mode)."""
        from xdp_compute.training.zoo import model_from_state

        m = self._released()["result"]["model"]
        return model_from_state(m["spec"], int(m["n_features"]), int(m["n_classes"]), m["params"])

    def predictor(self) -> Any:
        """The released model as a ``Predictor`` that takes raw values (``training/predictor.py``).

        ``predict(rows)`` / ``predict_proba(rows)`` on a list of dicts or a pandas DataFrame of raw
        values: it applies the dataset's declared encoding itself (numeric rescaled by the declared
        [min, max] and clipped to it, as training clipped; bool 0/1; category one-hot), refuses a
        row with a missing feature or an undeclared category (``InvalidRow``, a ``ValueError``
        naming the feature), and carries ``feature_names``, ``label``, ``classes`` and
        ``encoding``. ``export("model.onnx")`` writes it to run with onnxruntime alone.
        """
        from xdp_compute.training.predictor import Predictor

        return Predictor.from_release(self._released()["result"]["model"])

    def metrics(self) -> dict[str, Any]:
        """DP-noised held-out metrics released with the model (overall and per node)."""
        r = self._released()["result"]
        return {"overall": r["metrics"], "per_node": r["card"]["metrics_per_node"]}

    def model_card(self) -> dict[str, Any]:
        """Architecture, dataset, nodes, rounds (and which lacked whom), epsilon per node, delta, metrics."""
        return self._released()["result"]["card"]  # type: ignore[no-any-return]

    @property
    def delivery(self) -> dict[str, Any]:
        return self._released()


def _metric(m: dict[str, Any], name: str) -> str:
    v, iv = m.get(name), m.get(f"{name}_interval")
    if v is None:
        return f"{name} -"
    return f"{name} {v:.4f}" + (f" [{iv[0]:.4f}, {iv[1]:.4f}]" if iv else "")


def print_card(card: dict[str, Any], out: Any = sys.stdout) -> None:
    """The model card in a few lines: model, features and label, nodes and rounds, privacy, metrics."""
    arch = card["architecture"]
    print(f"model card: {arch.get('model', '')} {arch.get('layers', '')} on {card['dataset']!r}", file=out)
    if card.get("features") is not None:
        classes = f" (classes {', '.join(card['classes'])})" if card.get("classes") else ""
        print(f"  features: {', '.join(card['features'])}; label {card['label']!r}{classes}", file=out)
    parties = f", {card['parties']} parties" if card.get("parties") is not None else ""
    print(f"  nodes ({len(card['nodes'])}{parties}): {', '.join(card['nodes'])}; "
          f"rounds {card['rounds_done']}/{card['rounds_planned']}"
          + (f" (stopped: {card['stopped_early']})" if card.get("stopped_early") else ""), file=out)
    for r in card["rounds_missing_nodes"]:
        print(f"  round {r['round']} lacked {', '.join(r['missing'])}", file=out)
    if card.get("max_rows"):
        rows = ", ".join(f"{k}={v}" for k, v in card["max_rows"].items())
        print(f"  privacy plan from the declared max_rows ({rows}), not from the rows", file=out)
    if card.get("sampling_rate"):
        rates = ", ".join(f"{k}={v:.4g}" for k, v in card["sampling_rate"].items())
        print(f"  DP-SGD Poisson sampling rate per node: {rates}", file=out)
    eps = ", ".join(f"{k}={v:.4f}" for k, v in card["epsilon_per_node"].items())
    print(f"  epsilon per node: {eps}; delta {card['delta']:.2g}", file=out)
    m = card["metrics"]
    level = m.get("confidence_level")
    names = ["accuracy", "loss"] if "mse" not in m else ["mse", "loss"]
    print("  held-out (DP-noised, clamped to the valid range"
          + (f", {level:.0%} intervals" if level else "") + "): "
          + ", ".join(_metric(m, n) for n in names), file=out)
