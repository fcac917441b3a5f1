"""Converters of ONNX normalisations over an activation's own statistics: LayerNormalization (opset 17),
GroupNormalization (opsets 18 and 21) and InstanceNormalization. They lower to a `Standardize` node (1/sqrt(eps)-Lipschitz,
see speccert.ir.ops.Standardize) and an Affine for the scale and bias."""

from __future__ import annotations

import numpy as np
import onnx
import torch

from speccert.importers.lowering import LoweringError, group_norm, layer_norm
from speccert.importers.onnx_ops import Act, BuildContext, NotConvertible, Value, act, attrs, const, converter
from speccert.importers.onnx_ops.examples import one_node, randn
from speccert.importers.onnx_ops.piecewise import _emitter


def _opt(inputs: list[Value | None], i: int, what: str) -> torch.Tensor | None:
    if len(inputs) <= i or inputs[i] is None:
        return None
    return torch.from_numpy(np.asarray(const(inputs[i], what), dtype=np.float32).copy())


def _ln_examples() -> list:
    return [
        lambda: one_node(
            "LayerNormalization", (4, 6), ["x", "g", "b"], {"g": randn(6, seed=1), "b": randn(6, seed=2)}, 17
        ),
        lambda: one_node(
            "LayerNormalization", (3, 2, 5), ["x", "g"], {"g": randn(2, 5, seed=3)}, 17, axis=-2, epsilon=1e-3
        ),
    ]


@converter("LayerNormalization", opsets=(17, 21), examples=_ln_examples())
def convert_layernorm(
    ctx: BuildContext, node: onnx.NodeProto, inputs: list[Value | None]
) -> list[Value | None]:
    """Normalisation over axes [axis, rank) with scale and bias: Standardize, Affine (Mean and
    InvStdDev outputs are not kept)."""
    x = act(inputs[0], "X")
    a = attrs(node)
    r = len(x.shape) + 1
    ax = int(a.get("axis", -1))
    ax = ax + r if ax < 0 else ax
    if ax == 0:
        raise NotConvertible("LayerNormalization over the batch axis")
    try:
        y = layer_norm(
            _emitter(ctx),
            x,
            x.shape,
            r - ax,
            float(a.get("epsilon", 1e-5)),
            _opt(inputs, 1, "Scale"),
            _opt(inputs, 2, "B"),
        )
    except (LoweringError, RuntimeError) as exc:
        raise NotConvertible(str(exc).splitlines()[0]) from None
    return [y] + [None] * (len(node.output) - 1)


def _gn_examples() -> list:
    return [
        lambda: one_node(
            "GroupNormalization",
            (4, 3, 3),
            ["x", "g", "b"],
            {"g": randn(4, seed=1), "b": randn(4, seed=2)},
            21,
            num_groups=2,
        ),
    ]


@converter("GroupNormalization", opsets=(21, 21), examples=_gn_examples())
def convert_groupnorm(
    ctx: BuildContext, node: onnx.NodeProto, inputs: list[Value | None]
) -> list[Value | None]:
    """Group norm with per-channel scale and bias (opset 21): Reshape, Standardize, Reshape, Affine."""
    x = act(inputs[0], "X")
    return [_group_norm(ctx, node, inputs, x, int(attrs(node).get("num_groups", 0)), ("scale", "bias"))]


def _group_norm(
    ctx: BuildContext,
    node: onnx.NodeProto,
    inputs: list[Value | None],
    x: Act,
    groups: int,
    names: tuple[str, str],
) -> Value:
    """speccert.importers.lowering.group_norm with the node's epsilon and its optional scale and bias
    (inputs 1 and 2, named as the operator's spec names them)."""
    eps = float(attrs(node).get("epsilon", 1e-5))
    scale, bias = _opt(inputs, 1, names[0]), _opt(inputs, 2, names[1])
    try:
        return group_norm(_emitter(ctx), x, x.shape, groups, eps, scale, bias)
    except LoweringError as exc:
        raise NotConvertible(str(exc)) from None


def _in_examples() -> list:
    return [
        lambda: one_node(
            "InstanceNormalization",
            (3, 4, 4),
            ["x", "s", "b"],
            {"s": randn(3, seed=1), "b": randn(3, seed=2)},
            13,
        ),
        lambda: one_node(
            "InstanceNormalization",
            (2, 5),
            ["x", "s", "b"],
            {"s": randn(2, seed=3), "b": randn(2, seed=4)},
            8,
            epsilon=1e-3,
        ),
    ]


@converter("InstanceNormalization", opsets=(8, 21), examples=_in_examples())
def convert_instancenorm(
    ctx: BuildContext, node: onnx.NodeProto, inputs: list[Value | None]
) -> list[Value | None]:
    """Per-channel normalisation over the spatial axes with per-channel scale and bias (torch's exporter
    writes GroupNorm as Reshape, InstanceNormalization, Reshape, Mul, Add): group norm with one group per
    channel (Reshape, Standardize, Reshape, Affine)."""
    x = act(inputs[0], "input")
    if len(x.shape) < 2:
        raise NotConvertible("InstanceNormalization of a tensor without spatial axes")
    return [_group_norm(ctx, node, inputs, x, x.shape[0], ("scale", "B"))]
