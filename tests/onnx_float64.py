"""An independent float64 evaluator of the zoo's ONNX graphs, straight from the file's initialisers.

It shares no code with speccert's importer or IR: each operator is written here in numpy float64 from the
ONNX operator spec, and every constant is used as the file stores it (a float32 initialiser is exactly
representable in float64; Div divides by it, BatchNormalization computes scale / sqrt(var + eps) in
float64). The result is the model's real-number function up to float64 rounding (~1e-15 relative per op),
the reference the reported radii must not exceed (tests/test_exact_constants.py).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

Array = np.ndarray


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _conv(x: Array, w: Array, b: Array | None, a: dict) -> Array:
    if a.get("group", 1) != 1 or any(d != 1 for d in a.get("dilations", [1, 1])):
        raise NotImplementedError("grouped/dilated Conv is not in the zoo")
    pads = a.get("pads", [0, 0, 0, 0])
    sh, sw = a.get("strides", [1, 1])
    x = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    kh, kw = w.shape[2:]
    ho, wo = (x.shape[2] - kh) // sh + 1, (x.shape[3] - kw) // sw + 1
    out = np.zeros((x.shape[0], w.shape[0], ho, wo))
    for i in range(kh):  # one matrix product per kernel tap keeps memory at the output's size
        for j in range(kw):
            patch = x[:, :, i : i + sh * (ho - 1) + 1 : sh, j : j + sw * (wo - 1) + 1 : sw]
            out += np.einsum("nchw,oc->nohw", patch, w[:, :, i, j], optimize=True)
    return out if b is None else out + b.reshape(1, -1, 1, 1)


def _gemm(x: Array, w: Array, b: Array | None, a: dict) -> Array:
    x = x.T if a.get("transA", 0) else x
    w = w.T if a.get("transB", 0) else w
    y = a.get("alpha", 1.0) * (x @ w)
    return y if b is None else y + a.get("beta", 1.0) * b


def _batchnorm(x: Array, s: Array, b: Array, m: Array, v: Array, a: dict) -> Array:
    view = (1, -1) + (1,) * (x.ndim - 2)
    scale = s / np.sqrt(v + np.float64(a.get("epsilon", 1e-5)))
    return (x - m.reshape(view)) * scale.reshape(view) + b.reshape(view)


def _softplus(x: Array) -> Array:
    return np.logaddexp(0.0, x)


def _topk(x: Array, k: int, a: dict) -> Array:
    """TopK's values (MaxMin/GroupSort exports): the k largest (or smallest) along the axis, sorted."""
    axis, largest = a.get("axis", -1), a.get("largest", 1)
    s = np.sort(x, axis=axis)
    s = np.flip(s, axis=axis) if largest else s
    return np.take(s, np.arange(k), axis=axis)


OPS: dict[str, Callable[..., Array]] = {
    "Sub": lambda a, x, y: x - y,
    "Add": lambda a, x, y: x + y,
    "Mul": lambda a, x, y: x * y,
    "Div": lambda a, x, y: x / y,
    "Relu": lambda a, x: np.maximum(x, 0.0),
    "Softplus": lambda a, x: _softplus(x),
    "Conv": lambda a, x, w, b=None: _conv(x, w, b, a),
    "Gemm": lambda a, x, w, b=None: _gemm(x, w, b, a),
    "BatchNormalization": lambda a, x, s, b, m, v: _batchnorm(x, s, b, m, v, a),
    "GlobalAveragePool": lambda a, x: x.mean(axis=tuple(range(2, x.ndim)), keepdims=True),
    "Flatten": lambda a, x: x.reshape(int(np.prod(x.shape[: a.get("axis", 1)])), -1),
    "TopK": lambda a, x, k: _topk(x, int(np.asarray(k).reshape(-1)[0]), a),
    "Reshape": lambda a, x, shape: x.reshape([x.shape[0], *[int(d) for d in shape[1:]]]),
}


class Float64Model:
    """`Float64Model(path)(x)`: the logits of an ONNX model computed in numpy float64."""

    def __init__(self, path: str | Path) -> None:
        self.model = onnx.load(str(path))
        self.consts = {
            t.name: numpy_helper.to_array(t).astype(np.float64)
            if numpy_helper.to_array(t).dtype.kind == "f"
            else numpy_helper.to_array(t)
            for t in self.model.graph.initializer
        }

    def __call__(self, x: Array) -> Array:
        g = self.model.graph
        values: dict[str, Array] = {**self.consts, g.input[0].name: np.asarray(x, dtype=np.float64)}
        for node in g.node:
            if node.op_type not in OPS:
                raise NotImplementedError(node.op_type)
            ins = [values[i] for i in node.input if i]
            values[node.output[0]] = OPS[node.op_type](_attrs(node), *ins)
        return values[g.output[0].name]
