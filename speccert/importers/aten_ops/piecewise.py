"""Piecewise-linear ATen ops: hardtanh / ReLU6 / clamp with any scalar bounds, hardswish, hardsigmoid,
abs, maximum / minimum (with a constant, or of two input-dependent tensors: Extremum). They lower to relu / clip / hardswish / abs activations
between Affine shifts (speccert.importers.lowering)."""

from __future__ import annotations

from typing import Any

import torch

from speccert.importers.aten_ops.base import (
    ConvertContext,
    TensorValue,
    Unsupported,
    aten_op,
    const_tensor,
    emitter,
    tensor_arg,
)
from speccert.importers.lowering import LoweringError, clip, hardsigmoid, max_const, min_const
from speccert.ir.ops import Activation, Extremum


def _clamp(ctx: ConvertContext, x: Any, low: Any, high: Any) -> TensorValue:
    tv = tensor_arg(x, "clamp input")
    for v in (low, high):
        if v is not None and not isinstance(v, (int, float)):
            raise Unsupported("clamp to tensor bounds (only scalar bounds are supported)")
    try:
        return clip(
            emitter(ctx), tv, None if low is None else float(low), None if high is None else float(high)
        )
    except LoweringError as exc:
        raise Unsupported(str(exc)) from None


@aten_op("aten.hardtanh.default")
def hardtanh(ctx: ConvertContext, args: list[Any]) -> TensorValue:
    """hardtanh(x, min_val, max_val) (ReLU6 = hardtanh(0, 6)): Affine, Activation clip, Affine."""
    return _clamp(ctx, args[0], args[1], args[2])


@aten_op("aten.relu6.default")
def relu6(ctx: ConvertContext, args: list[Any]) -> TensorValue:
    """relu6(x) = clamp(x, 0, 6) -> Activation clip(6)."""
    return _clamp(ctx, args[0], 0.0, 6.0)


@aten_op("aten.clamp.default")
def clamp(ctx: ConvertContext, args: list[Any]) -> TensorValue:
    """clamp(x, min, max) with scalar bounds (either may be None): relu (min 0) or a clip chain."""
    if args[2] is None and args[1] is not None and float(args[1]) == 0.0:
        return ctx.emit(Activation("relu"), [tensor_arg(args[0], "clamp input")])
    return _clamp(ctx, args[0], args[1], args[2])


@aten_op("aten.clamp_min.default")
def clamp_min(ctx: ConvertContext, args: list[Any]) -> TensorValue:
    """clamp_min(x, c) = max(x, c): relu for c = 0, else c + relu(x - c)."""
    y: TensorValue = clamp(ctx, [args[0], args[1], None])
    return y


@aten_op("aten.clamp_max.default")
def clamp_max(ctx: ConvertContext, args: list[Any]) -> TensorValue:
    """clamp_max(x, c) = min(x, c) = c - relu(c - x)."""
    return _clamp(ctx, args[0], None, args[1])


@aten_op("aten.hardswish.default")
def hardswish(ctx: ConvertContext, args: list[Any]) -> TensorValue:
    """x * relu6(x + 3) / 6 -> Activation hardswish (3/2-Lipschitz)."""
    return ctx.emit(Activation("hardswish"), [tensor_arg(args[0], "hardswish input")])


@aten_op("aten.hardsigmoid.default")
def hardsigmoid_(ctx: ConvertContext, args: list[Any]) -> TensorValue:
    """relu6(x + 3) / 6 -> Affine(1/6, 1/2), Activation clip(1)."""
    return hardsigmoid(emitter(ctx), tensor_arg(args[0], "hardsigmoid input"), 1.0 / 6.0, 0.5)


@aten_op("aten.abs.default")
def abs_(ctx: ConvertContext, args: list[Any]) -> TensorValue:
    """|x| -> Activation abs (1-Lipschitz)."""
    return ctx.emit(Activation("abs"), [tensor_arg(args[0], "abs input")])


def _extremum(ctx: ConvertContext, args: list[Any], is_max: bool) -> TensorValue:
    a, b = args[0], args[1]
    if isinstance(a, TensorValue) and isinstance(b, TensorValue):
        if a.shape != b.shape:
            raise Unsupported(
                f"maximum/minimum of input-dependent tensors of shapes {list(a.shape)} and {list(b.shape)} "
                "(broadcasting between them is not supported)"
            )
        return ctx.emit(Extremum(is_max=is_max), [a, b])
    x, c = (a, b) if isinstance(a, TensorValue) else (b, a)
    x = tensor_arg(x, "maximum/minimum input")
    t = const_tensor(c, "maximum/minimum constant").detach().float()
    if t.dim() == x.ndim and t.shape[0] == 1:
        t = t[0]  # a leading size-1 batch axis
    try:
        full = tuple(torch.broadcast_shapes(t.shape, x.shape[1:])) if t.dim() < x.ndim else None
    except RuntimeError:
        full = None
    if full != tuple(x.shape[1:]):
        raise Unsupported(f"a constant of shape {list(t.shape)} does not broadcast to {list(x.shape[1:])}")
    return (max_const if is_max else min_const)(emitter(ctx), x, t)


@aten_op("aten.maximum.default")
def maximum(ctx: ConvertContext, args: list[Any]) -> TensorValue:
    """maximum(x, c) with c constant: c + relu(x - c); of two input tensors: Extremum."""
    return _extremum(ctx, args, is_max=True)


@aten_op("aten.minimum.default")
def minimum(ctx: ConvertContext, args: list[Any]) -> TensorValue:
    """minimum(x, c) with c constant: c - relu(c - x); of two input tensors: Extremum."""
    return _extremum(ctx, args, is_max=False)
