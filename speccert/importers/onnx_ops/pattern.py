"""What the ONNX pattern fusions (fusions.py, householder.py) share: their private domain and the small
constants of a graph, read before conversion."""

from __future__ import annotations

import math

import numpy as np
import onnx

DOMAIN = "speccert"
SMALL = 1 << 16  # entries: the constants a pattern reads (exponents, angles), never a layer's weights


def constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    """Initializers and Constant nodes of at most SMALL entries, as numpy arrays (weights are skipped:
    copying them would double the import's memory)."""
    out = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer if math.prod(t.dims) <= SMALL}
    for n in graph.node:
        if n.op_type == "Constant" and n.output:
            for a in n.attribute:
                if a.name == "value" and math.prod(a.t.dims) <= SMALL:
                    out[n.output[0]] = onnx.numpy_helper.to_array(a.t)
                elif a.name == "value_float":
                    out[n.output[0]] = np.asarray(a.f)
    return out


def is_const(consts: dict[str, np.ndarray], name: str, value: float) -> bool:
    """`name` is a one-entry constant equal to `value` (up to 1e-5 relative)."""
    c = consts.get(name)
    return (
        c is not None and c.size == 1 and abs(float(c.reshape(-1)[0]) - value) <= 1e-5 * max(1.0, abs(value))
    )
