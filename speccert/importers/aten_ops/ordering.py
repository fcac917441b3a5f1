"""Order statistics of one non-batch axis: sort and topk (deel-torchlip's GroupSort / FullSort are
view, sort, view), max / min over a dim and amax / amin (GroupSort-2: view, min.dim, max.dim, cat).
Each becomes an IR `Sort` (1-Lipschitz), a Slice of one, or an `Extremum` of two Slices (see
speccert.importers.lowering.reduce_extremum); indices are not available."""

from __future__ import annotations

from typing import Any

from speccert.importers.aten_ops.base import (
    ConvertContext,
    NotAvailable,
    TensorValue,
    Unsupported,
    aten_op,
    axis,
    emitter,
    tensor_arg,
)
from speccert.importers.lowering import reduce_extremum
from speccert.ir.ops import Op, Slice, Sort


def _sort(
    ctx: ConvertContext, x: TensorValue, dim: int, descending: bool, k: int | None = None
) -> TensorValue:
    d = axis(dim, x.ndim, "sort axis")
    y = ctx.emit(Sort(axis=d - 1, descending=descending), [x])
    if k is not None and k < x.shape[d]:
        y = ctx.emit(Slice(axis=d - 1, start=0, stop=k), [y])
    return y


@aten_op("aten.sort.default")
def sort(ctx: ConvertContext, args: list[Any]) -> tuple[TensorValue, NotAvailable]:
    """sort(x, dim, descending) -> Sort (1-Lipschitz; indices not available)."""
    x = tensor_arg(args[0], "sort input")
    return _sort(ctx, x, int(args[1]), bool(args[2])), NotAvailable("sort indices")


@aten_op("aten.sort.stable")
def sort_stable(ctx: ConvertContext, args: list[Any]) -> tuple[TensorValue, NotAvailable]:
    """sort(x, stable=, dim, descending) -> Sort (ties do not change the values)."""
    x = tensor_arg(args[0], "sort input")
    return _sort(ctx, x, int(args[2]), bool(args[3])), NotAvailable("sort indices")


@aten_op("aten.topk.default")
def topk(ctx: ConvertContext, args: list[Any]) -> tuple[TensorValue, NotAvailable]:
    """topk(x, k, dim, largest, sorted) -> Sort, Slice of the first k."""
    x = tensor_arg(args[0], "topk input")
    k = int(args[1])
    d = axis(int(args[2]), x.ndim, "topk axis")
    if not 0 < k <= x.shape[d]:
        raise Unsupported(f"topk with k={k} on an axis of length {x.shape[d]}")
    return _sort(ctx, x, d, bool(args[3]), k), NotAvailable("topk indices")


def _reduce(ctx: ConvertContext, x: TensorValue, dims: list[int], keepdim: bool, is_max: bool) -> TensorValue:
    if len(dims) != 1:
        raise Unsupported(f"max/min over {len(dims) or 'all'} axes (one non-batch axis is supported)")
    d = axis(dims[0], x.ndim, "max/min axis")

    def emit2(op: Op, a: TensorValue, b: TensorValue) -> TensorValue:
        return ctx.emit(op, [a, b])

    return reduce_extremum(emitter(ctx), emit2, x, x.shape[1:], d - 1, is_max, keepdim)


@aten_op("aten.max.dim")
def max_dim(ctx: ConvertContext, args: list[Any]) -> tuple[TensorValue, NotAvailable]:
    """max(x, dim, keepdim): a pair -> Extremum of two Slices; longer -> Sort, Slice (indices: none)."""
    x = tensor_arg(args[0], "max input")
    return _reduce(ctx, x, [int(args[1])], bool(args[2]), True), NotAvailable("max indices")


@aten_op("aten.min.dim")
def min_dim(ctx: ConvertContext, args: list[Any]) -> tuple[TensorValue, NotAvailable]:
    """min(x, dim, keepdim): as max.dim, ascending."""
    x = tensor_arg(args[0], "min input")
    return _reduce(ctx, x, [int(args[1])], bool(args[2]), False), NotAvailable("min indices")


@aten_op("aten.amax.default")
def amax(ctx: ConvertContext, args: list[Any]) -> TensorValue:
    """amax(x, dim, keepdim) over one axis: as max.dim."""
    x = tensor_arg(args[0], "amax input")
    return _reduce(ctx, x, [int(v) for v in args[1]], bool(args[2]), True)


@aten_op("aten.amin.default")
def amin(ctx: ConvertContext, args: list[Any]) -> TensorValue:
    """amin(x, dim, keepdim) over one axis: as min.dim."""
    x = tensor_arg(args[0], "amin input")
    return _reduce(ctx, x, [int(v) for v in args[1]], bool(args[2]), False)
