"""ONNX exporters of the activations (speccert.ir.Activation): one operator where the opset has it, else
the node pattern torch's exporter writes for it."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from speccert.errors import UnsupportedModelError
from speccert.exporters.onnx_patterns import Writer
from speccert.ir.ops import Activation


def export_activation(w: Writer, op: Activation, x: str, out: str) -> None:
    """The ONNX node(s) of an activation: its own operator, or before the opset that has it, the pattern
    torch's exporter writes (which the importer fuses back)."""
    simple: dict[str, Callable[[], str]] = {
        "identity": lambda: w.node("Identity", [x], out),
        "relu": lambda: w.node("Relu", [x], out),
        "sigmoid": lambda: w.node("Sigmoid", [x], out),
        "tanh": lambda: w.node("Tanh", [x], out),
        "softplus": lambda: w.node("Softplus", [x], out),
        "leaky_relu": lambda: w.node("LeakyRelu", [x], out, alpha=float(op.alpha)),
        "elu": lambda: w.node("Elu", [x], out, alpha=float(op.alpha)),
    }
    if op.fn in simple:
        simple[op.fn]()
    elif op.fn == "gelu" and w.opset >= 20:
        w.node("Gelu", [x], out)
    elif op.fn == "gelu":  # x * (1 + erf(x / sqrt 2)) * 0.5 before opset 20 (the importer fuses it back)
        d = w.node("Div", [x, w.const(f"{out}.sqrt2", np.array(math.sqrt(2.0)))], w.fresh(f"{out}/div"))
        e = w.node("Erf", [d], w.fresh(f"{out}/erf"))
        a = w.node("Add", [e, w.const(f"{out}.one", np.array(1.0))], w.fresh(f"{out}/add"))
        m = w.node("Mul", [x, a], w.fresh(f"{out}/mul"))
        w.node("Mul", [m, w.const(f"{out}.half", np.array(0.5))], out)
    elif op.fn == "clip":
        lo, hi = w.const(f"{out}.min", np.array(0.0)), w.const(f"{out}.max", np.array(op.alpha))
        w.node("Clip", [x, lo, hi], out)
    elif op.fn == "abs":
        w.node("Abs", [x], out)
    elif op.fn == "hardswish" and w.opset >= 14:
        w.node("HardSwish", [x], out)
    elif op.fn == "hardswish":  # x * HardSigmoid(x) before opset 14 (the importer fuses it back)
        h = w.node("HardSigmoid", [x], w.fresh(f"{out}/hardsigmoid"), alpha=1.0 / 6.0, beta=0.5)
        w.node("Mul", [x, h], out)
    elif op.fn == "gelu_tanh" and w.opset >= 20:
        w.node("Gelu", [x], out, approximate="tanh")
    elif op.fn == "silu":
        s = w.node("Sigmoid", [x], w.fresh(f"{out}/sigmoid"))
        w.node("Mul", [x, s], out)
    else:
        raise UnsupportedModelError(f"activation {op.fn} cannot be exported to ONNX")
