"""A released model as an ONNX graph that applies the declared encoding itself (onnx, no torch).

Built with ``onnx.helper`` node by node rather than ``torch.onnx.export``: the zoo is a stack of
linear layers with ReLU, so the graph is short, needs no tracer (torch 2.13's exporter wants
onnxscript) and any ONNX runtime can run it. The graph is the nodes' ``encode_features`` followed
by the zoo's forward pass:

1. per feature column j of ``input`` (n, k): numeric ``Clip((x - min) / (max - min), 0, 1)`` by
   the declared bounds (0 when min == max); bool as given (0/1); category ``Equal(x, [0..m-1])``
   cast to float, the one-hot over the declared values (an index outside them gives zeros, as
   an unknown category does on the nodes);
2. ``Concat`` in ``feature_names`` order, then per layer ``MatMul(W^T) + b`` and ``Relu`` between;
3. the link: ``Sigmoid`` (logreg; probabilities [1 - p, p]), ``Softmax`` (softmax, mlp classes),
   or ``lo + y * (hi - lo)`` (regression, label units).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from xdp_compute.training.architecture import LOSS_BCE, LOSS_MSE
from xdp_compute.training.spec import NUMERIC_TYPES, category_values

if TYPE_CHECKING:
    from xdp_compute.training.predictor import Predictor

OPSET = 17
IR_VERSION = 8  # what opset 17 needs; old enough for any current onnxruntime

INPUT_DOC = ("one float tensor 'input' of shape (n, {k}); columns in feature_names order: numeric features as "
             "raw values (clipped to the declared [min, max] inside the model), bools as 0/1, categories as the "
             "index of the value in the declared values (see 'encoding'); no missing values")


def build_onnx(p: Predictor) -> Any:
    """The ``onnx.ModelProto`` for predictor ``p`` (see the module docstring)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes: list[Any] = []
    inits: list[Any] = []

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(kind: str, inputs: list[str], out: str, **attrs: Any) -> str:
        nodes.append(helper.make_node(kind, inputs, [out], **attrs))
        return out

    blocks = []
    for j, c in enumerate(p.encoding):
        col = op("Gather", ["input", const(f"idx{j}", np.array([j], dtype=np.int64))], f"col{j}", axis=1)
        if c["type"] in NUMERIC_TYPES:
            lo, hi = float(c["min"]), float(c["max"])
            if hi == lo:
                scaled = op("Mul", [col, const(f"zero{j}", np.array(0.0, dtype=np.float32))], f"scaled{j}")
            else:
                shifted = op("Sub", [col, const(f"lo{j}", np.array(lo, dtype=np.float32))], f"shift{j}")
                scaled = op("Div", [shifted, const(f"span{j}", np.array(hi - lo, dtype=np.float32))], f"div{j}")
            blocks.append(op("Clip", [scaled, const(f"c0_{j}", np.array(0.0, dtype=np.float32)),
                                      const(f"c1_{j}", np.array(1.0, dtype=np.float32))], f"enc{j}"))
        elif c["type"] == "bool":
            blocks.append(col)
        else:
            values = np.arange(len(category_values(c)), dtype=np.float32)[None, :]
            hot = op("Equal", [col, const(f"values{j}", values)], f"eq{j}")
            blocks.append(op("Cast", [hot], f"enc{j}", to=TensorProto.FLOAT))
    h = op("Concat", blocks, "encoded", axis=1) if len(blocks) > 1 else blocks[0]
    for i, (w, b) in enumerate(p.layers):
        h = op("MatMul", [h, const(f"W{i}", w.T.astype(np.float32))], f"mm{i}")
        h = op("Add", [h, const(f"b{i}", b.astype(np.float32))], f"layer{i}")
        if i < len(p.layers) - 1:
            h = op("Relu", [h], f"relu{i}")
    k = len(p.feature_names)
    if p.kind == LOSS_MSE:
        lo, hi = p.label_bounds or (0.0, 1.0)
        assert lo is not None and hi is not None
        y = op("Mul", [h, const("label_span", np.array(hi - lo, dtype=np.float32))], "scaled_out")
        op("Add", [y, const("label_lo", np.array(lo, dtype=np.float32))], "prediction")
        outputs = [helper.make_tensor_value_info("prediction", TensorProto.FLOAT, ["n", 1])]
    else:
        if p.kind == LOSS_BCE:
            pos = op("Sigmoid", [h], "p_positive")
            neg = op("Sub", [const("one", np.array(1.0, dtype=np.float32)), pos], "p_negative")
            op("Concat", [neg, pos], "probabilities", axis=1)
        else:
            op("Softmax", [h], "probabilities", axis=1)
        op("ArgMax", ["probabilities"], "class_index", axis=1, keepdims=0)
        outputs = [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["n", p.n_classes]),
                   helper.make_tensor_value_info("class_index", TensorProto.INT64, ["n"])]
    graph = helper.make_graph(nodes, f"xdp_{p.model}", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                                      ["n", k])],
                              outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="xdp-compute", doc_string=INPUT_DOC.format(k=k))
    model.ir_version = IR_VERSION
    helper.set_model_props(model, {
        "model": p.model, "task": p.task, "input": INPUT_DOC.format(k=k),
        "feature_names": json.dumps(p.feature_names), "encoded_feature_names": json.dumps(p.encoded_feature_names),
        "label": p.label, "classes": json.dumps(p.classes), "label_bounds": json.dumps(p.label_bounds),
        "encoding": json.dumps(p.encoding)})
    onnx.checker.check_model(model)
    return model


def save_onnx(p: Predictor, path: Path) -> Path:
    """Write ``build_onnx(p)`` to ``path``; returns the path."""
    import onnx

    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(build_onnx(p), str(path))
    return path


__all__ = ["INPUT_DOC", "build_onnx", "save_onnx"]
