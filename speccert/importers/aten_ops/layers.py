"""Layers with weights: convolution (1-d/2-d, transposed), matrix products with a constant weight,
inference-mode batch norm."""

from __future__ import annotations

from typing import Any

import torch

from speccert.importers.aten_ops.base import (
    ConvertContext,
    NotAvailable,
    PendingCircularPad,
    TensorValue,
    Unsupported,
    aten_op,
    const_tensor,
    ints,
    tensor_arg,
)
from speccert.importers.problems import ATTENTION
from speccert.ir.ops import BatchNorm, Conv, ConvTranspose, Linear


@aten_op("aten.convolution.default")
def convolution(ctx: ConvertContext, args: list[Any]) -> TensorValue:
    """convolution(input, weight, bias, stride, padding, dilation, transposed, output_padding, groups) -> Conv or ConvTranspose."""
    if not bool(args[6]):
        return _conv(ctx, args[0], args[1], args[2], args[3], args[4], args[5], int(args[8]))
    x = tensor_arg(args[0], "transposed convolution input")
    w = const_tensor(args[1], "transposed convolution weight")
    nd = w.dim() - 2
    if nd not in (1, 2):
        raise Unsupported(f"{nd}-d transposed convolution (only 1-d and 2-d are supported)")
    b = None if args[2] is None else ctx.const(const_tensor(args[2], "transposed convolution bias"))
    op = ConvTranspose(
        ctx.const(w),
        b,
        ints(args[3], nd),
        ints(args[4], nd),
        ints(args[7], nd),
        ints(args[5], nd),
        int(args[8]),
    )
    return ctx.emit(op, [x], like=args[1])


def _conv(
    ctx: ConvertContext, x_: Any, w_: Any, b_: Any, stride: Any, padding: Any, dilation: Any, groups: int
) -> TensorValue:
    mode = "zeros"
    if isinstance(x_, PendingCircularPad):
        own = (
            [0]
            if padding == "valid"
            else [1]
            if isinstance(padding, str)
            else list(ints(padding, len(x_.pads)))
        )
        if any(p != 0 for p in own):
            raise Unsupported("circular padding followed by a convolution with zero padding of its own")
        if any(b != e for b, e in x_.pads):
            raise Unsupported(f"asymmetric circular padding {list(x_.pads)}")
        mode, padding, x_ = "circular", [b for b, _ in x_.pads], x_.value
    x = tensor_arg(x_, "convolution input")
    w = const_tensor(w_, "convolution weight")
    b = None if b_ is None else ctx.const(const_tensor(b_, "convolution bias"))
    nd = w.dim() - 2
    if nd not in (1, 2):
        raise Unsupported(f"{nd}-d convolution (only 1-d and 2-d are supported)")
    dil = ints(dilation, nd)
    if isinstance(padding, str):
        if padding == "valid":
            pads = tuple((0, 0) for _ in range(nd))
        else:  # 'same': total d*(k-1), the odd one out at the end (as torch does)
            total = [d * (k - 1) for d, k in zip(dil, w.shape[2:], strict=True)]
            pads = tuple((t // 2, t - t // 2) for t in total)
    else:
        pads = tuple((p, p) for p in ints(padding, nd))
    return ctx.emit(Conv(ctx.const(w), b, ints(stride, nd), pads, dil, int(groups), mode), [x], like=w_)


@aten_op("aten.conv1d.default", "aten.conv2d.default", "aten.conv1d.padding", "aten.conv2d.padding")
def conv(ctx: ConvertContext, args: list[Any]) -> TensorValue:
    """conv1d/conv2d(input, weight, bias, stride, padding (ints, 'same' or 'valid'), dilation, groups) -> Conv."""
    return _conv(ctx, args[0], args[1], args[2], args[3], args[4], args[5], args[6])


@aten_op("aten.conv_transpose1d.default", "aten.conv_transpose2d.input")
def conv_transpose(ctx: ConvertContext, args: list[Any]) -> TensorValue:
    """conv_transpose1d/2d(input, weight, bias, stride, padding, output_padding, groups, dilation) -> ConvTranspose."""
    x = tensor_arg(args[0], "transposed convolution input")
    w = const_tensor(args[1], "transposed convolution weight")
    nd = w.dim() - 2
    b = None if args[2] is None else ctx.const(const_tensor(args[2], "transposed convolution bias"))
    op = ConvTranspose(
        ctx.const(w),
        b,
        ints(args[3], nd),
        ints(args[4], nd),
        ints(args[5], nd),
        ints(args[7], nd),
        int(args[6]),
    )
    return ctx.emit(op, [x], like=args[1])


@aten_op("aten.linear.default")
def linear(ctx: ConvertContext, args: list[Any]) -> TensorValue:
    """linear(input, weight, bias) -> Linear: y = x W^T + b over the last axis (constant weight)."""
    x = tensor_arg(args[0], "linear input")
    w = const_tensor(args[1], "linear weight")
    b = None if args[2] is None else ctx.const(const_tensor(args[2], "linear bias"))
    if x.ndim < 2:
        raise Unsupported("linear on a tensor without a feature axis")
    return ctx.emit(Linear(ctx.const(w), b), [x], like=args[1])


def _weight_of(ctx: ConvertContext, mat: Any, what: str) -> torch.Tensor:
    """The [out, in] weight of `x @ mat`: mat is a constant [in, out] (usually `permute(W, [1, 0])`)."""
    m = const_tensor(mat, what)
    if m.dim() != 2:
        raise Unsupported(f"{what} must be a 2-d constant matrix")
    return m.t()


@aten_op("aten.mm.default", "aten.matmul.default")
def mm(ctx: ConvertContext, args: list[Any]) -> TensorValue:
    """mm(x, M) / matmul(x, M) with constant 2-d M: Linear with weight M^T and no bias."""
    if isinstance(args[0], TensorValue) and isinstance(args[1], TensorValue):
        raise Unsupported(ATTENTION)
    x = tensor_arg(args[0], "mm left operand (x @ W with W constant is the supported form)")
    w = _weight_of(ctx, args[1], "mm right operand")
    return ctx.emit(Linear(ctx.const(w), None), [x], like=args[1])


@aten_op("aten.addmm.default")
def addmm(ctx: ConvertContext, args: list[Any]) -> TensorValue:
    """addmm(bias, x, M, beta, alpha) = beta*bias + alpha*(x @ M): Linear(alpha*M^T, beta*bias)."""
    x = tensor_arg(args[1], "addmm left operand (x @ W with W constant is the supported form)")
    w = _weight_of(ctx, args[2], "addmm right operand")
    bias = const_tensor(args[0], "addmm bias")
    beta, alpha = float(args[3]), float(args[4])
    out = w.shape[0]
    bias = torch.broadcast_to(bias, (out,)) if bias.dim() <= 1 else None  # type: ignore[assignment]
    if bias is None:
        raise Unsupported("addmm with a 2-d bias (one bias per sample) is not a Linear layer")
    return ctx.emit(Linear(ctx.const(alpha * w), ctx.const(beta * bias)), [x], like=args[2])


@aten_op("aten._native_batch_norm_legit_no_training.default")
def batch_norm_no_training(ctx: ConvertContext, args: list[Any]) -> tuple[Any, ...]:
    """(input, weight, bias, running_mean, running_var, momentum, eps) -> BatchNorm (eval statistics)."""
    return _batch_norm(ctx, args[0], args[1], args[2], args[3], args[4], float(args[6]))


@aten_op("aten.native_batch_norm.default", "aten._native_batch_norm_legit.default")
def native_batch_norm(ctx: ConvertContext, args: list[Any]) -> tuple[Any, ...]:
    """(input, weight, bias, running_mean, running_var, training, momentum, eps) -> BatchNorm; eval mode only."""
    if bool(args[5]):
        raise Unsupported("batch norm in training mode (uses batch statistics); put the model in eval mode")
    return _batch_norm(ctx, args[0], args[1], args[2], args[3], args[4], float(args[7]))


@aten_op("aten.batch_norm.default")
def batch_norm(ctx: ConvertContext, args: list[Any]) -> TensorValue:
    """batch_norm(input, weight, bias, mean, var, training=False, momentum, eps, cudnn_enabled) -> BatchNorm."""
    if bool(args[5]):
        raise Unsupported("batch norm in training mode (uses batch statistics); put the model in eval mode")
    out = _batch_norm(ctx, args[0], args[1], args[2], args[3], args[4], float(args[7]))[0]
    assert isinstance(out, TensorValue)
    return out


def _batch_norm(
    ctx: ConvertContext, x_: Any, w_: Any, b_: Any, mean_: Any, var_: Any, eps: float
) -> tuple[Any, ...]:
    x = tensor_arg(x_, "batch norm input")
    if x.ndim < 2:
        raise Unsupported("batch norm needs a channel axis")
    if mean_ is None or var_ is None:
        raise Unsupported("batch norm without running statistics uses batch statistics")
    mean, var = const_tensor(mean_, "running_mean"), const_tensor(var_, "running_var")
    c = x.shape[1]
    w = torch.ones(c) if w_ is None else const_tensor(w_, "batch norm weight")
    b = torch.zeros(c) if b_ is None else const_tensor(b_, "batch norm bias")
    op = BatchNorm(ctx.const(mean), ctx.const(var), ctx.const(w), ctx.const(b), eps)
    y = ctx.emit(op, [x], like=mean_ if w_ is None else w_)
    gone = NotAvailable("batch statistics")
    return (y, gone, gone)
