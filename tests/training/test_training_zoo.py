"""Model zoo: architectures, flat parameter round trips, rebuilding a released model."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from xdp_compute.errors import InvalidSpec
from xdp_compute.training.spec import TrainingSpec, count_params
from xdp_compute.training.zoo import (
    build_model,
    describe_model,
    flatten_params,
    init_params,
    load_flat_params,
    loss_kind,
    model_from_state,
    per_sample_loss,
    predict,
)

torch.set_num_threads(1)


def spec(model: str, **kw: Any) -> TrainingSpec:
    return TrainingSpec.from_dict({"dataset": "d", "model": model, "features": ["a"], "label": "y", **kw})


@pytest.mark.parametrize(
    ("model", "n_classes", "kw", "shapes", "kind"),
    [
        ("logreg", 2, {}, [(1, 7), (1,)], "bce"),
        ("softmax", 4, {}, [(4, 7), (4,)], "ce"),
        ("linreg", 0, {}, [(1, 7), (1,)], "mse"),
        ("mlp", 2, {"hidden": [5, 3]}, [(5, 7), (5,), (3, 5), (3,), (2, 3), (2,)], "ce"),
        ("mlp", 0, {"hidden": [4]}, [(4, 7), (4,), (1, 4), (1,)], "mse"),
    ],
)
def test_architectures(
    model: str, n_classes: int, kw: dict[str, Any], shapes: list[tuple[int, ...]], kind: str
) -> None:
    s = spec(model, **kw)
    m = build_model(s, 7, n_classes)
    assert [tuple(p.shape) for p in m.parameters()] == shapes
    assert loss_kind(s, n_classes) == kind
    assert sum(p.numel() for p in m.parameters()) == count_params(s, 7, n_classes)
    relus = [x for x in m if isinstance(x, nn.ReLU)]
    assert len(relus) == len(s.hidden_sizes())
    out = m(torch.zeros(3, 7))
    assert out.shape == (3, shapes[-1][0])


def test_flatten_and_load_round_trip_in_parameter_order() -> None:
    s = spec("mlp", hidden=[3])
    m = build_model(s, 2, 2)
    vec = np.arange(count_params(s, 2, 2), dtype=np.float64)
    load_flat_params(m, vec)
    np.testing.assert_array_equal(flatten_params(m), vec)
    w0 = m[0].weight.detach().numpy()
    np.testing.assert_array_equal(w0, np.arange(6, dtype=np.float32).reshape(3, 2))  # row-major W0 first
    np.testing.assert_array_equal(m[0].bias.detach().numpy(), [6, 7, 8])
    assert flatten_params(m).dtype == np.float64


def test_load_refuses_wrong_length_and_non_finite() -> None:
    m = build_model(spec("logreg"), 3, 2)
    with pytest.raises(InvalidSpec, match="needs 4"):
        load_flat_params(m, np.zeros(5))
    with pytest.raises(InvalidSpec, match="NaN"):
        load_flat_params(m, np.array([0.0, np.nan, 0.0, 0.0]))


def test_init_params_linear_zero_mlp_seeded() -> None:
    assert not init_params(spec("logreg"), 5, 2).any()
    a = init_params(spec("mlp", hidden=[8]), 5, 3, seed=1)
    b = init_params(spec("mlp", hidden=[8]), 5, 3, seed=1)
    c = init_params(spec("mlp", hidden=[8]), 5, 3)  # OS-seeded
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert np.abs(a[: 8 * 5]).max() <= 1 / np.sqrt(5)


def test_model_from_state_rebuilds_the_released_model() -> None:
    s = spec("mlp", hidden=[4])
    flat = init_params(s, 3, 2, seed=7)
    m = model_from_state(json.loads(json.dumps(s.to_dict())), 3, 2, flat)
    assert isinstance(m, nn.Module) and not m.training
    np.testing.assert_allclose(flatten_params(m), flat, rtol=0, atol=1e-7)
    x = np.random.default_rng(0).uniform(size=(5, 3)).astype(np.float32)
    p = predict(m, x, loss_kind(s, 2))
    assert p.shape == (5, 2)
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-6)


def test_predict_links() -> None:
    lg = build_model(spec("logreg"), 1, 2)
    load_flat_params(lg, [2.0, -1.0])
    np.testing.assert_allclose(predict(lg, np.array([[0.5]]), "bce"), [0.5], atol=1e-7)
    lr = build_model(spec("linreg"), 1, 0)
    load_flat_params(lr, [1.0, 0.0])
    np.testing.assert_allclose(predict(lr, np.array([[0.25]]), "mse", label_lo=10, label_hi=20), [12.5])


def test_per_sample_loss_matches_torch_reductions() -> None:
    out = torch.tensor([[0.3], [-1.2]])
    y = torch.tensor([1.0, 0.0])
    assert torch.allclose(
        per_sample_loss(out, y, "bce").mean(),
        nn.functional.binary_cross_entropy_with_logits(out.squeeze(1), y),
    )
    logits = torch.tensor([[0.1, 2.0, -1.0], [1.0, 0.0, 0.0]])
    cls = torch.tensor([1, 2])
    assert torch.allclose(per_sample_loss(logits, cls, "ce").mean(), nn.functional.cross_entropy(logits, cls))
    assert torch.allclose(per_sample_loss(out, y, "mse"), 0.5 * (out.squeeze(1) - y) ** 2)


def test_describe_model_is_json_and_complete() -> None:
    s = spec("mlp", hidden=[4])
    card = describe_model(s, 3, 2, feature_names=["a", "b", "c"], label={"name": "y", "classes": ["n", "y"]})
    json.dumps(card)
    assert card["n_params"] == count_params(s, 3, 2)
    assert [layer["type"] for layer in card["layers"]] == ["linear", "relu", "linear"]
    assert card["output"] == "softmax" and card["feature_names"] == ["a", "b", "c"]
    assert describe_model(spec("logreg"), 3, 2)["output"] == "sigmoid"


def test_dimension_errors() -> None:
    with pytest.raises(InvalidSpec):
        build_model(spec("softmax"), 3, 1)
    with pytest.raises(InvalidSpec):
        build_model(spec("logreg"), 0, 2)
