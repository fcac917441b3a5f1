"""Coordinate selections along a non-batch axis: split / split_with_sizes / chunk (channel splits),
slice, narrow, select and unbind. Each piece is an IR `Slice` (1-Lipschitz), plus a Reshape that
drops the axis for select / unbind."""

from __future__ import annotations

from typing import Any

from speccert.importers.aten_ops.base import (
    ConvertContext,
    TensorValue,
    Unsupported,
    aten_op,
    axis,
    tensor_arg,
)
from speccert.ir.ops import Reshape, Slice


def _slice(ctx: ConvertContext, x: TensorValue, d: int, start: int, stop: int, step: int = 1) -> TensorValue:
    if (start, stop, step) == (0, x.shape[d], 1):
        return x
    return ctx.emit(Slice(axis=d - 1, start=start, stop=max(start, stop), step=step), [x])


def _pieces(ctx: ConvertContext, x: TensorValue, d: int, sizes: list[int]) -> list[TensorValue]:
    if sum(sizes) != x.shape[d] or any(s < 0 for s in sizes):
        raise Unsupported(f"split sizes {sizes} do not cover the axis of length {x.shape[d]}")
    out, start = [], 0
    for s in sizes:
        out.append(_slice(ctx, x, d, start, start + s))
        start += s
    return out


@aten_op("aten.split.Tensor")
def split(ctx: ConvertContext, args: list[Any]) -> list[TensorValue]:
    """split(x, size, dim): pieces of `size` along a non-batch axis -> one Slice each."""
    x = tensor_arg(args[0], "split input")
    d = axis(int(args[2]), x.ndim, "split axis")
    n, size = x.shape[d], int(args[1])
    if size <= 0:
        raise Unsupported(f"split size {size}")
    return _pieces(ctx, x, d, [min(size, n - i) for i in range(0, n, size)])


@aten_op("aten.split_with_sizes.default")
def split_with_sizes(ctx: ConvertContext, args: list[Any]) -> list[TensorValue]:
    """split_with_sizes(x, sizes, dim) -> one Slice per piece."""
    x = tensor_arg(args[0], "split input")
    d = axis(int(args[2]), x.ndim, "split axis")
    return _pieces(ctx, x, d, [int(s) for s in args[1]])


@aten_op("aten.chunk.default")
def chunk(ctx: ConvertContext, args: list[Any]) -> list[TensorValue]:
    """chunk(x, chunks, dim): pieces of ceil(n / chunks) -> one Slice each."""
    x = tensor_arg(args[0], "chunk input")
    d = axis(int(args[2]), x.ndim, "chunk axis")
    n, k = x.shape[d], int(args[1])
    size = -(-n // k)
    return _pieces(ctx, x, d, [min(size, n - i) for i in range(0, n, size)])


@aten_op("aten.slice.Tensor")
def slice_(ctx: ConvertContext, args: list[Any]) -> TensorValue:
    """slice(x, dim, start, end, step) with step > 0 -> Slice (the whole axis: no node)."""
    x = tensor_arg(args[0], "slice input")
    d = int(args[1]) % x.ndim
    step = int(args[4])
    if step <= 0:
        raise Unsupported(f"slice with step {step}")
    lo, hi, _ = slice(args[2], args[3], step).indices(x.shape[d])
    if d == 0:
        if (lo, hi, step) == (0, x.shape[0], 1):
            return x
        raise Unsupported("slicing the batch axis")
    return _slice(ctx, x, d, lo, hi, step)


@aten_op("aten.narrow.default")
def narrow(ctx: ConvertContext, args: list[Any]) -> TensorValue:
    """narrow(x, dim, start, length) -> Slice."""
    x = tensor_arg(args[0], "narrow input")
    d = axis(int(args[1]), x.ndim, "narrow axis")
    start = int(args[2]) % x.shape[d]
    return _slice(ctx, x, d, start, start + int(args[3]))


def _select(ctx: ConvertContext, x: TensorValue, d: int, index: int) -> TensorValue:
    i = index % x.shape[d]
    y = ctx.emit(Slice(axis=d - 1, start=i, stop=i + 1), [x])
    return ctx.emit(Reshape(tuple(s for k, s in enumerate(x.shape[1:], 1) if k != d)), [y])


@aten_op("aten.select.int")
def select(ctx: ConvertContext, args: list[Any]) -> TensorValue:
    """select(x, dim, index) -> Slice of one entry, Reshape without the axis."""
    x = tensor_arg(args[0], "select input")
    return _select(ctx, x, axis(int(args[1]), x.ndim, "select axis"), int(args[2]))


@aten_op("aten.unbind.int")
def unbind(ctx: ConvertContext, args: list[Any]) -> list[TensorValue]:
    """unbind(x, dim) -> one select per entry of a non-batch axis."""
    x = tensor_arg(args[0], "unbind input")
    d = axis(int(args[1]), x.ndim, "unbind axis")
    return [_select(ctx, x, d, i) for i in range(x.shape[d])]
