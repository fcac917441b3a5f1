"""Pooling: max and average pooling, adaptive average pooling to 1x1 (or to an exact divisor of the
input size), and mean over all spatial axes (what `torch.export` makes of adaptive pooling to 1x1)."""

from __future__ import annotations

import math
from typing import Any

import torch

from speccert.importers.aten_ops.base import (
    ConvertContext,
    NotAvailable,
    TensorValue,
    Unsupported,
    aten_op,
    ints,
    tensor_arg,
)
from speccert.importers.lowering import mean
from speccert.ir.ops import Affine, AvgPool, GlobalAvgPool, MaxPool, Op


def _spatial(x: TensorValue, nd: int, what: str) -> None:
    if x.ndim != nd + 2:
        raise Unsupported(f"{what} on a {x.ndim}-d tensor (expected [batch, channels, {nd} spatial axes])")


def _stride(v: Any, kernel: tuple[int, ...]) -> tuple[int, ...]:
    """An empty stride list means stride = kernel (torch's default)."""
    if v is None or (not isinstance(v, int) and len(v) == 0):
        return kernel
    return ints(v, len(kernel))


def _max_pool(ctx: ConvertContext, args: list[Any], nd: int) -> TensorValue:
    x = tensor_arg(args[0], "max pool input")
    _spatial(x, nd, "max pool")
    kernel = ints(args[1], nd)
    stride = _stride(args[2], kernel)
    padding = ints(args[3], nd)
    op = MaxPool(kernel, stride, tuple((p, p) for p in padding), ints(args[4], nd), bool(args[5]))
    return ctx.emit(op, [x])


@aten_op("aten.max_pool2d_with_indices.default")
def max_pool2d_with_indices(ctx: ConvertContext, args: list[Any]) -> tuple[Any, ...]:
    """(x, kernel, stride=[] (= kernel), padding, dilation, ceil_mode) -> MaxPool (indices not available)."""
    return (_max_pool(ctx, args, 2), NotAvailable("max pool indices"))


@aten_op("aten.max_pool2d.default")
def max_pool2d(ctx: ConvertContext, args: list[Any]) -> TensorValue:
    """max_pool2d(x, kernel, stride, padding, dilation, ceil_mode) -> MaxPool."""
    return _max_pool(ctx, args, 2)


@aten_op("aten.max_pool1d.default")
def max_pool1d(ctx: ConvertContext, args: list[Any]) -> TensorValue:
    """max_pool1d(x, kernel, stride, padding, dilation, ceil_mode) -> MaxPool."""
    return _max_pool(ctx, args, 1)


def _avg_pool(ctx: ConvertContext, args: list[Any], nd: int) -> TensorValue:
    x = tensor_arg(args[0], "average pool input")
    _spatial(x, nd, "average pool")
    if len(args) > 6 and args[6] is not None:
        raise Unsupported(f"average pool with divisor_override={args[6]}")
    kernel = ints(args[1], nd)
    stride = _stride(args[2], kernel)
    padding = ints(args[3], nd)
    op = AvgPool(kernel, stride, tuple((p, p) for p in padding), bool(args[4]), bool(args[5]))
    return ctx.emit(op, [x])


@aten_op("aten.avg_pool2d.default")
def avg_pool2d(ctx: ConvertContext, args: list[Any]) -> TensorValue:
    """(x, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override=None) -> AvgPool."""
    return _avg_pool(ctx, args, 2)


@aten_op("aten.avg_pool1d.default")
def avg_pool1d(ctx: ConvertContext, args: list[Any]) -> TensorValue:
    """(x, kernel, stride, padding, ceil_mode, count_include_pad) -> AvgPool."""
    return _avg_pool(ctx, args, 1)


def _adaptive(ctx: ConvertContext, args: list[Any], nd: int) -> TensorValue:
    x = tensor_arg(args[0], "adaptive average pool input")
    _spatial(x, nd, "adaptive average pool")
    out = ints(args[1], nd)
    size = x.shape[2:]
    if all(o == 1 for o in out):
        return ctx.emit(GlobalAvgPool(), [x])
    if any(s % o for s, o in zip(size, out, strict=True)):
        raise Unsupported(
            f"adaptive average pool from {list(size)} to {list(out)}: sizes do not divide "
            "(windows overlap unevenly)"
        )
    kernel = tuple(s // o for s, o in zip(size, out, strict=True))
    return ctx.emit(AvgPool(kernel, kernel, tuple((0, 0) for _ in kernel)), [x])


@aten_op("aten._adaptive_avg_pool2d.default", "aten.adaptive_avg_pool2d.default")
def adaptive_avg_pool2d(ctx: ConvertContext, args: list[Any]) -> TensorValue:
    """(x, output_size): 1x1 -> GlobalAvgPool; an exact divisor -> AvgPool with kernel = stride."""
    return _adaptive(ctx, args, 2)


@aten_op("aten.adaptive_avg_pool1d.default")
def adaptive_avg_pool1d(ctx: ConvertContext, args: list[Any]) -> TensorValue:
    """(x, output_size): 1 -> GlobalAvgPool; an exact divisor -> AvgPool with kernel = stride."""
    return _adaptive(ctx, args, 1)


def _spatial_reduce(ctx: ConvertContext, args: list[Any], what: str, scale: bool) -> TensorValue:
    x = tensor_arg(args[0], f"{what} input")
    if args[1] is None or len(args[1]) == 0:
        raise Unsupported(f"{what} over every axis including the batch")
    dims = sorted({d % x.ndim for d in args[1]})
    if 0 in dims:
        raise Unsupported(f"{what} over the batch axis")

    def emit(op: Op, v: TensorValue) -> TensorValue:
        return ctx.emit(op, [v])

    y = mean(emit, x, x.shape[1:], [d - 1 for d in dims], bool(args[2]))
    if scale:  # sum = mean * number of reduced entries
        y = ctx.emit(Affine(torch.tensor(float(math.prod(x.shape[d] for d in dims))), torch.tensor(0.0)), [y])
    return y


@aten_op("aten.mean.dim")
def mean_dim(ctx: ConvertContext, args: list[Any]) -> TensorValue:
    """mean(x, dims, keepdim, dtype) over non-batch axes: GlobalAvgPool over all spatial axes, else
    Transpose, Reshape, GlobalAvgPool, Reshape."""
    return _spatial_reduce(ctx, args, "mean", scale=False)


@aten_op("aten.sum.dim_IntList")
def sum_dim(ctx: ConvertContext, args: list[Any]) -> TensorValue:
    """sum(x, dims, keepdim, dtype) over non-batch axes: the mean's chain, then Affine(#reduced)."""
    return _spatial_reduce(ctx, args, "sum", scale=True)
