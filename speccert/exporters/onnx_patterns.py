"""ONNX exporters of the IR ops that ONNX has no single operator for (Center, L2Pool, Householder): each
writes the node pattern torch's exporter writes for the layer, which the importer fuses back into the
same IR op (speccert.importers.lowering, onnx_ops.fusions, onnx_ops.householder)."""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import onnx
import torch
from onnx import helper

from speccert.ir.graph import Node
from speccert.ir.ops import Center, Householder, L2Pool


class Writer(Protocol):
    """What these exporters use of onnx_export's writer (which imports this module)."""

    opset: int
    nodes: list[onnx.NodeProto]

    def const(self, name: str, value: torch.Tensor | np.ndarray, dtype: type = np.float32) -> str: ...
    def fresh(self, name: str) -> str: ...
    def node(self, op_type: str, inputs: list[str], output: str, **kw: Any) -> str: ...


def export_center(
    w: Writer, node: Node, op: Center, xs: list[str], in_shape: tuple[int, ...], out: str
) -> None:
    """Center = x - ReduceMean(x, axes, keepdims=1), the pattern the importers read back as one Center."""
    axes = [a + 1 for a in op.axes]
    mean = w.fresh(f"{out}/mean")
    if w.opset >= 18:  # axes became an input
        w.node(
            "ReduceMean", [xs[0], w.const(f"{node.name}.axes", np.array(axes), np.int64)], mean, keepdims=1
        )
    else:
        w.node("ReduceMean", [xs[0]], mean, axes=axes, keepdims=1)
    w.node("Sub", [xs[0], mean], out)


def export_l2pool(
    w: Writer, node: Node, op: L2Pool, xs: list[str], in_shape: tuple[int, ...], out: str
) -> None:
    """L2Pool as torch.onnx writes LPPool(2): Pow(Mul(Mul(Sign(m), Relu(Abs(m))), K), 0.5) with
    m = AveragePool(Pow(x, 2)), the pattern the importer fuses back into one L2Pool."""
    name = node.name
    sq = w.node("Pow", [xs[0], w.const(f"{name}.two", np.array(2.0))], w.fresh(f"{out}/sq"))
    pool = {"kernel_shape": list(op.kernel), "strides": list(op.stride), "ceil_mode": int(op.ceil_mode)}
    m = w.node("AveragePool", [sq], w.fresh(f"{out}/mean"), **pool)
    sign = w.node("Sign", [m], w.fresh(f"{out}/sign"))
    mag = w.node("Relu", [w.node("Abs", [m], w.fresh(f"{out}/abs"))], w.fresh(f"{out}/relu"))
    prod = w.node("Mul", [sign, mag], w.fresh(f"{out}/m"))
    scaled = w.node("Mul", [prod, w.const(f"{name}.k", np.array(op.multiplier))], w.fresh(f"{out}/km"))
    w.node("Pow", [scaled, w.const(f"{name}.half", np.array(0.5))], out)


def export_householder(
    w: Writer, node: Node, op: Householder, xs: list[str], in_shape: tuple[int, ...], out: str
) -> None:
    """Householder as torch's legacy exporter writes deel-torchlip's HouseHolder (Split, Sin/Cos of the
    stored theta/2 and theta, selector, masks, Concat): the pattern the importer fuses back."""
    half = in_shape[0] // 2
    view = (1, half) + (1,) * (len(in_shape) - 1)
    theta = op.theta.detach().float().reshape(view)

    def f(tag: str) -> str:
        return w.fresh(f"{out}/{tag}")

    sizes = np.array([half, half])
    if w.opset >= 13:
        split_in = [xs[0], w.const(f"{node.name}.split", sizes, np.int64)]
        w.nodes.append(helper.make_node("Split", split_in, [x := f("x"), y := f("y")], axis=1))
    else:
        w.nodes.append(
            helper.make_node("Split", [xs[0]], [x := f("x"), y := f("y")], axis=1, split=[half, half])
        )
    t_half, t_full = w.const(f"{node.name}.half", theta / 2), w.const(f"{node.name}.theta", theta)
    sh, ch = w.node("Sin", [t_half], f("sh")), w.node("Cos", [t_half], f("ch"))
    c, sn = w.node("Cos", [t_full], f("c")), w.node("Sin", [t_full], f("s"))
    sel = w.node("Sub", [w.node("Mul", [x, sh], f("m0")), w.node("Mul", [y, ch], f("m1"))], f("sel"))
    a2 = w.node("Add", [w.node("Mul", [x, c], f("m2")), w.node("Mul", [y, sn], f("m3"))], f("a2"))
    b2 = w.node("Sub", [w.node("Mul", [x, sn], f("m4")), w.node("Mul", [y, c], f("m5"))], f("b2"))
    zero = w.const(f"{node.name}.zero", np.array(0.0))
    keep = w.node("Cast", [w.node("LessOrEqual", [sel, zero], f("le"))], f("keep"), to=1)
    flip = w.node("Cast", [w.node("Greater", [sel, zero], f("gt"))], f("flip"), to=1)
    a = w.node("Add", [w.node("Mul", [x, keep], f("ak")), w.node("Mul", [a2, flip], f("af"))], f("a"))
    b = w.node("Add", [w.node("Mul", [y, keep], f("bk")), w.node("Mul", [b2, flip], f("bf"))], f("b"))
    w.node("Concat", [a, b], out, axis=1)
