"""Softmax and log-softmax over the last axis (the IR accepts them only as the graph's output)."""

from __future__ import annotations

from typing import Any

from speccert.importers.aten_ops.base import ConvertContext, TensorValue, Unsupported, aten_op, tensor_arg
from speccert.ir.ops import Softmax


def _softmax(ctx: ConvertContext, x_: Any, dim: int, log: bool) -> TensorValue:
    x = tensor_arg(x_, "softmax input")
    if dim % x.ndim != x.ndim - 1 or x.ndim < 2:
        raise Unsupported(f"softmax over axis {dim} of a {x.ndim}-d tensor (only over the last axis)")
    return ctx.emit(Softmax(log=log), [x])


@aten_op("aten._softmax.default", "aten.softmax.int")
def softmax(ctx: ConvertContext, args: list[Any]) -> TensorValue:
    """softmax(x, dim, ...) over the last axis -> Softmax."""
    return _softmax(ctx, args[0], int(args[1]), log=False)


@aten_op("aten._log_softmax.default", "aten.log_softmax.int")
def log_softmax(ctx: ConvertContext, args: list[Any]) -> TensorValue:
    """log_softmax(x, dim, ...) over the last axis -> Softmax(log)."""
    return _softmax(ctx, args[0], int(args[1]), log=True)
