"""Normalisations over an activation's own statistics: layer_norm and group_norm (and their native_
forms). They lower to a `Standardize` node (1/sqrt(eps)-Lipschitz, see speccert.ir.ops.Standardize)
and an Affine for the weight and bias (speccert.importers.lowering)."""

from __future__ import annotations

from typing import Any

import torch

from speccert.importers.aten_ops.base import (
    ConvertContext,
    NotAvailable,
    TensorValue,
    Unsupported,
    aten_op,
    const_tensor,
    emitter,
    tensor_arg,
)
from speccert.importers.lowering import LoweringError, group_norm, layer_norm


def _param(ctx: ConvertContext, v: Any, what: str) -> torch.Tensor | None:
    return None if v is None else ctx.const(const_tensor(v, what))


def _layer_norm(ctx: ConvertContext, args: list[Any]) -> TensorValue:
    x = tensor_arg(args[0], "layer norm input")
    shape = [int(s) for s in args[1]]
    if len(shape) >= x.ndim or list(x.shape[x.ndim - len(shape) :]) != shape:
        raise Unsupported(f"layer norm over {shape} of a tensor of shape {list(x.shape)}")
    try:
        return layer_norm(
            emitter(ctx),
            x,
            x.shape[1:],
            len(shape),
            float(args[4]),
            _param(ctx, args[2], "layer norm weight"),
            _param(ctx, args[3], "layer norm bias"),
        )
    except LoweringError as exc:
        raise Unsupported(str(exc)) from None


@aten_op("aten.layer_norm.default")
def layer_norm_op(ctx: ConvertContext, args: list[Any]) -> TensorValue:
    """layer_norm(x, normalized_shape, weight, bias, eps) -> Standardize(last axes), Affine."""
    return _layer_norm(ctx, args)


@aten_op("aten.native_layer_norm.default")
def native_layer_norm(ctx: ConvertContext, args: list[Any]) -> tuple[Any, ...]:
    """native_layer_norm(x, normalized_shape, weight, bias, eps) -> (layer norm, -, -)."""
    y = _layer_norm(ctx, args)
    return (y, NotAvailable("layer norm mean"), NotAvailable("layer norm rstd"))


def _group_norm(ctx: ConvertContext, x: Any, groups: int, w: Any, b: Any, eps: float) -> TensorValue:
    tv = tensor_arg(x, "group norm input")
    try:
        return group_norm(
            emitter(ctx),
            tv,
            tv.shape[1:],
            int(groups),
            float(eps),
            _param(ctx, w, "group norm weight"),
            _param(ctx, b, "group norm bias"),
        )
    except LoweringError as exc:
        raise Unsupported(str(exc)) from None


@aten_op("aten.group_norm.default")
def group_norm_op(ctx: ConvertContext, args: list[Any]) -> TensorValue:
    """group_norm(x, groups, weight, bias, eps) -> Reshape, Standardize, Reshape, Affine."""
    return _group_norm(ctx, args[0], args[1], args[2], args[3], args[4])


@aten_op("aten.native_group_norm.default")
def native_group_norm(ctx: ConvertContext, args: list[Any]) -> tuple[Any, ...]:
    """native_group_norm(x, weight, bias, N, C, HxW, groups, eps) -> (group norm, -, -)."""
    y = _group_norm(ctx, args[0], args[6], args[1], args[2], args[7])
    return (y, NotAvailable("group norm mean"), NotAvailable("group norm rstd"))
