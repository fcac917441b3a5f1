"""Builders of the small example models each converter registers (its differential tests run them).

`one_node("Conv", (3, 8, 8), ["x", "w"], {"w": w}, opset=13, pads=[1, 1, 1, 1])` is a model whose only
node is a Conv reading the model input `x` (shape [N, 3, 8, 8], batch axis symbolic) and the
initializer `w`. Weights come from a seeded generator so examples are reproducible.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def randn(*shape: int, seed: int = 0) -> np.ndarray:
    return rng(seed).standard_normal(shape).astype(np.float32)


def model(
    nodes: Sequence[onnx.NodeProto],
    x_shape: Sequence[int | str],
    inits: Mapping[str, Any],
    opset: int,
    output: str = "y",
    batch: int | str = "N",
    x_name: str = "x",
) -> onnx.ModelProto:
    """A model over one float input [batch, *x_shape] with the given nodes, initializers and output."""
    x = helper.make_tensor_value_info(x_name, TensorProto.FLOAT, [batch, *x_shape])
    y = helper.make_tensor_value_info(output, TensorProto.FLOAT, None)
    init = [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()]
    g = helper.make_graph(list(nodes), "example", [x], [y], init)
    ir_version = 8 if opset <= 17 else 9 if opset <= 20 else 10
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir_version)


def one_node(
    op_type: str,
    x_shape: Sequence[int],
    inputs: Sequence[str] = ("x",),
    inits: Mapping[str, Any] | None = None,
    opset: int = 13,
    n_outputs: int = 1,
    **attributes: Any,
) -> onnx.ModelProto:
    """A model whose single node `op_type` reads `inputs` ('x' = the model input, '' = omitted)."""
    outputs = ["y"] + [f"y{i}" for i in range(1, n_outputs)]
    node = helper.make_node(op_type, list(inputs), outputs, name=f"{op_type.lower()}_0", **attributes)
    return model([node], x_shape, inits or {}, opset)


def unary(op_type: str, opset: int = 13, x_shape: Sequence[int] = (3, 4, 5), **attributes: Any):  # noqa: ANN201
    """An example factory for an elementwise op of the model input."""
    return lambda: one_node(op_type, x_shape, opset=opset, **attributes)
