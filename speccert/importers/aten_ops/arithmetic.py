"""Elementwise arithmetic: Add of two tensors (residual connections); add/sub/mul/div by constants
(normalisation layers inside a model, scaling) as Affine y = x * scale + shift."""

from __future__ import annotations

from typing import Any

import torch

from speccert.importers.aten_ops.base import ConvertContext, TensorValue, Unsupported, aten_op, const_tensor
from speccert.importers.lowering import centering_axes
from speccert.importers.problems import product_reason
from speccert.ir.ops import Add, Affine, Center


def scale_shift(ctx: ConvertContext, x: TensorValue, scale: torch.Tensor, shift: torch.Tensor) -> TensorValue:
    """Emit y = x * scale + shift; the constants must broadcast to x's shape without the batch axis
    (a constant with a leading size-1 batch axis is accepted) and must not enlarge x."""
    feat = x.shape[1:]

    def drop_batch(t: torch.Tensor) -> torch.Tensor:
        if t.dim() <= len(feat):
            return t
        if t.dim() > len(feat) + 1 or t.shape[0] != 1:
            raise Unsupported(f"a constant of shape {list(t.shape)} varies along the batch axis")
        return t.reshape(t.shape[1:])

    scale, shift = drop_batch(scale.detach()), drop_batch(shift.detach())
    try:
        full = tuple(torch.broadcast_shapes(scale.shape, shift.shape, feat))
    except RuntimeError as exc:
        raise Unsupported(f"constant does not broadcast to the input: {exc}") from None
    if full != tuple(feat):
        raise Unsupported(
            f"a constant of shape {list(scale.shape)} would broadcast the tensor {list(feat)} to {list(full)}"
        )
    shape = torch.broadcast_shapes(scale.shape, shift.shape)
    # float64 like the ONNX importer's: 1/std is not a float32 number (see ir.ops.Affine)
    scale64, shift64 = (
        torch.broadcast_to(t, shape).to(torch.float64).clone().contiguous() for t in (scale, shift)
    )
    op = Affine(scale64, shift64)
    return ctx.emit(op, [x])


def _add(ctx: ConvertContext, a: Any, b: Any, alpha: float) -> TensorValue:
    """a + alpha * b, with at least one of a, b input-dependent; a - mean(a, dims, keepdim) is one
    Center (speccert.importers.lowering.centering_axes)."""
    if isinstance(a, TensorValue) and isinstance(b, TensorValue):
        axes = centering_axes(ctx.nodes, a.name, b.name, a.shape[1:], b.shape[1:]) if alpha == -1.0 else None
        if axes is not None:
            return ctx.emit(Center(axes), [a])
        if a.shape != b.shape:
            raise Unsupported(f"adding tensors of shapes {list(a.shape)} and {list(b.shape)} (broadcasting)")
        if alpha != 1.0:
            b = scale_shift(ctx, b, torch.tensor(alpha), torch.tensor(0.0))
        return ctx.emit(Add(), [a, b])
    if isinstance(a, TensorValue):
        return scale_shift(ctx, a, torch.tensor(1.0), alpha * const_tensor(b, "added constant"))
    if isinstance(b, TensorValue):
        return scale_shift(ctx, b, torch.tensor(alpha), const_tensor(a, "added constant"))
    raise Unsupported("no operand depends on the input")


@aten_op("aten.add.Tensor", "aten.add.Scalar")
def add(ctx: ConvertContext, args: list[Any]) -> TensorValue:
    """add(a, b, alpha) = a + alpha*b: Add for two tensors, Affine for a tensor and a constant."""
    return _add(ctx, args[0], args[1], float(args[2]))


@aten_op("aten.sub.Tensor", "aten.sub.Scalar")
def sub(ctx: ConvertContext, args: list[Any]) -> TensorValue:
    """sub(a, b, alpha) = a - alpha*b: Add (+ Affine) for two tensors, Affine with a constant."""
    return _add(ctx, args[0], args[1], -float(args[2]))


@aten_op("aten.rsub.Scalar", "aten.rsub.Tensor")
def rsub(ctx: ConvertContext, args: list[Any]) -> TensorValue:
    """rsub(a, b, alpha) = b - alpha*a -> Affine (or Add)."""
    return _add(ctx, args[1], args[0], -float(args[2]))


@aten_op("aten.neg.default")
def neg(ctx: ConvertContext, args: list[Any]) -> TensorValue:
    """-x -> Affine(scale=-1)."""
    return _add(ctx, torch.tensor(0.0), args[0], -1.0)


@aten_op("aten.mul.Tensor", "aten.mul.Scalar")
def mul(ctx: ConvertContext, args: list[Any]) -> TensorValue:
    """x * c with c constant: Affine(scale=c). The product of two input-dependent tensors is not linear."""
    a, b = args[0], args[1]
    if isinstance(a, TensorValue) and isinstance(b, TensorValue):
        raise Unsupported(product_reason(a.shape[1:], b.shape[1:]))
    x, c = (a, b) if isinstance(a, TensorValue) else (b, a)
    if not isinstance(x, TensorValue):
        raise Unsupported("no operand depends on the input")
    return scale_shift(ctx, x, const_tensor(c, "multiplier"), torch.tensor(0.0))


@aten_op("aten.addcmul.default")
def addcmul(ctx: ConvertContext, args: list[Any]) -> TensorValue:
    """addcmul(s, t1, t2, value) = s + value * t1 * t2 with at most one of t1, t2 input-dependent
    (ResMLP's affine layer: beta + alpha * x): Affine, plus Add when s depends on the input too."""
    s, t1, t2, value = args[0], args[1], args[2], float(args[3])
    if isinstance(t1, TensorValue) and isinstance(t2, TensorValue):
        raise Unsupported(product_reason(t1.shape[1:], t2.shape[1:]))
    if isinstance(t1, TensorValue) or isinstance(t2, TensorValue):
        x, c = (t1, t2) if isinstance(t1, TensorValue) else (t2, t1)
        scale = value * const_tensor(c, "addcmul factor")
        if isinstance(s, TensorValue):
            return _add(ctx, s, scale_shift(ctx, x, scale, torch.tensor(0.0)), 1.0)
        return scale_shift(ctx, x, scale, const_tensor(s, "addcmul input"))
    prod = value * const_tensor(t1, "addcmul factor") * const_tensor(t2, "addcmul factor")
    return _add(ctx, s, prod, 1.0)


@aten_op("aten.div.Tensor", "aten.div.Scalar")
def div(ctx: ConvertContext, args: list[Any]) -> TensorValue:
    """x / c with c constant (e.g. a normalisation std): Affine(scale=1/c)."""
    if not isinstance(args[0], TensorValue) or isinstance(args[1], TensorValue):
        raise Unsupported("division by an input-dependent tensor (only x / constant is supported)")
    c = const_tensor(args[1], "divisor")
    if not bool((c != 0).all()):
        raise Unsupported("division by a constant that contains zeros")
    return scale_shift(ctx, args[0], 1.0 / c.to(torch.float64), torch.tensor(0.0))


@aten_op("aten.div.Tensor_mode")
def div_mode(ctx: ConvertContext, args: list[Any]) -> TensorValue:
    """div with a rounding mode: only the plain (None) mode is linear."""
    if args[2] is not None:
        raise Unsupported(f"division with rounding_mode={args[2]!r} is piecewise constant")
    return div(ctx, args[:2])
