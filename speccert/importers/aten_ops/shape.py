"""Pure index maps that keep the batch at axis 0: view/reshape/flatten/squeeze/unsqueeze (Reshape),
permute/transpose (Transpose), cat (Concat), zero padding (Pad), and no-ops (clone, dropout in eval)."""

from __future__ import annotations

import math
from typing import Any

import torch

from speccert.importers.aten_ops.base import (
    ConvertContext,
    NotAvailable,
    PendingCircularPad,
    TensorValue,
    Unsupported,
    aten_op,
    axis,
    const_tensor,
    tensor_arg,
)
from speccert.ir.ops import Affine, Concat, Pad, Reshape, Transpose


def reshape_to(ctx: ConvertContext, x: TensorValue, target: tuple[int, ...]) -> TensorValue:
    """Reshape to `target` (full shape, batch first); a no-op when the shape does not change."""
    if target == x.shape:
        return x
    return ctx.emit(Reshape(tuple(target[1:])), [x])


@aten_op("aten.view.default", "aten._unsafe_view.default", "aten.reshape.default", "aten.view_copy.default")
def view(ctx: ConvertContext, args: list[Any]) -> TensorValue:
    """view/reshape(x, size) -> Reshape: the first entry must be the batch (or -1 standing for it)."""
    x = tensor_arg(args[0], "reshape input")
    size = [int(s) for s in args[1]]
    total = math.prod(x.shape)
    if size.count(-1) > 1:
        raise Unsupported(f"reshape to {size}: more than one -1")
    if -1 in size:
        rest = math.prod(s for s in size if s != -1)
        if rest == 0 or total % rest:
            raise Unsupported(f"reshape of {list(x.shape)} to {size} is inconsistent")
        size[size.index(-1)] = total // rest
    if not size or size[0] != ctx.batch or math.prod(size[1:]) != math.prod(x.shape[1:]):
        raise Unsupported(f"reshape of {list(x.shape)} to {size} mixes the batch axis with other axes")
    return reshape_to(ctx, x, tuple(size))


@aten_op("aten.flatten.using_ints")
def flatten(ctx: ConvertContext, args: list[Any]) -> TensorValue:
    """flatten(x, start, end) -> Reshape: start must be >= 1 (the batch stays)."""
    x = tensor_arg(args[0], "flatten input")
    start = axis(int(args[1]), x.ndim, "flatten start axis")
    end = int(args[2]) % x.ndim
    shape = (*x.shape[:start], math.prod(x.shape[start : end + 1]), *x.shape[end + 1 :])
    return reshape_to(ctx, x, shape)


@aten_op("aten.squeeze.dims", "aten.squeeze.dim", "aten.squeeze.default")
def squeeze(ctx: ConvertContext, args: list[Any]) -> TensorValue:
    """squeeze(x[, dims]) -> Reshape: drop size-1 non-batch axes."""
    x = tensor_arg(args[0], "squeeze input")
    if len(args) < 2:
        dims = set(range(1, x.ndim))
    else:
        raw = [args[1]] if isinstance(args[1], int) else list(args[1])
        dims = {d % x.ndim for d in raw}
        if 0 in dims and x.shape[0] != 1:
            dims.discard(0)
        elif 0 in dims:
            raise Unsupported("squeeze of the batch axis")
    shape = tuple(s for i, s in enumerate(x.shape) if not (i in dims and s == 1 and i > 0))
    return reshape_to(ctx, x, shape)


@aten_op("aten.unsqueeze.default")
def unsqueeze(ctx: ConvertContext, args: list[Any]) -> TensorValue:
    """unsqueeze(x, dim) with dim >= 1 -> Reshape."""
    x = tensor_arg(args[0], "unsqueeze input")
    d = axis(int(args[1]), x.ndim + 1, "unsqueeze axis")
    return reshape_to(ctx, x, (*x.shape[:d], 1, *x.shape[d:]))


@aten_op("aten.permute.default")
def permute(ctx: ConvertContext, args: list[Any]) -> TensorValue:
    """permute(x, dims) with dims[0] = 0 (the batch stays first) -> Transpose."""
    x = tensor_arg(args[0], "permute input")
    dims = [int(d) % x.ndim for d in args[1]]
    if dims[0] != 0:
        raise Unsupported(f"permute {list(args[1])} moves the batch axis")
    if dims == list(range(x.ndim)):
        return x
    return ctx.emit(Transpose(tuple(d - 1 for d in dims[1:])), [x])


@aten_op("aten.transpose.int")
def transpose(ctx: ConvertContext, args: list[Any]) -> TensorValue:
    """transpose(x, a, b) of two non-batch axes -> Transpose."""
    x = tensor_arg(args[0], "transpose input")
    a, b = axis(int(args[1]), x.ndim), axis(int(args[2]), x.ndim)
    dims = list(range(x.ndim))
    dims[a], dims[b] = dims[b], dims[a]
    return permute(ctx, [x, dims])


@aten_op("aten.cat.default")
def cat(ctx: ConvertContext, args: list[Any]) -> TensorValue:
    """cat(tensors, dim) of input-dependent tensors along a non-batch axis -> Concat."""
    xs = list(args[0])
    if not all(isinstance(v, TensorValue) for v in xs):
        return _cat_with_constants(ctx, xs, int(args[1]))
    d = axis(int(args[1]), xs[0].ndim, "concatenation axis")
    if len(xs) == 1:
        return xs[0]
    return ctx.emit(Concat(d - 1), xs)


def _cat_with_constants(ctx: ConvertContext, xs: list[Any], dim: int) -> TensorValue:
    """cat([c_before..., x..., c_after...]) with constants around one block of input-dependent tensors
    (a ViT's class token): Pad (zeros where the constants go, norm 1), then Affine adding them."""
    kinds = "".join("x" if isinstance(v, TensorValue) else "c" for v in xs)
    if "xcx" in kinds.replace("xx", "x") or "x" not in kinds:
        raise Unsupported("concatenation with constants between input-dependent tensors")
    tvs = [v for v in xs if isinstance(v, TensorValue)]
    d = axis(dim, tvs[0].ndim, "concatenation axis")
    x = tvs[0] if len(tvs) == 1 else ctx.emit(Concat(d - 1), tvs)
    consts = []
    for v in xs:
        if isinstance(v, TensorValue):
            continue
        c = const_tensor(v, "concatenated constant").detach()
        if c.dim() != x.ndim or not bool((c == c[:1]).all()):
            raise Unsupported("concatenation with a constant that varies along the batch axis")
        consts.append(c[0])
    first = kinds.index("x")
    before = sum(c.shape[d - 1] for c in consts[:first])
    after = sum(c.shape[d - 1] for c in consts[first:])
    pads = [(0, 0)] * (x.ndim - 1)
    pads[d - 1] = (before, after)
    y = ctx.emit(Pad(tuple(pads)), [x])
    zeros = torch.zeros(x.shape[1:], dtype=consts[0].dtype)
    shift = torch.cat([*consts[:first], zeros, *consts[first:]], dim=d - 1)
    return ctx.emit(Affine(ctx.const(torch.ones(())), ctx.const(shift)), [y])


def _pad(ctx: ConvertContext, x: TensorValue, pad: list[int], value: float | None) -> TensorValue:
    if value not in (None, 0, 0.0):
        raise Unsupported(f"padding with the constant {value} (only zero padding)")
    if len(pad) % 2 or len(pad) // 2 > x.ndim - 1:
        raise Unsupported(f"padding {pad} of a {x.ndim}-d tensor reaches the batch axis")
    if any(p < 0 for p in pad):
        raise Unsupported(f"negative padding {pad} (cropping)")
    pads = [(0, 0)] * (x.ndim - 1)
    for k in range(len(pad) // 2):
        pads[x.ndim - 2 - k] = (int(pad[2 * k]), int(pad[2 * k + 1]))
    if all(p == (0, 0) for p in pads):
        return x
    return ctx.emit(Pad(tuple(pads)), [x])


@aten_op("aten.constant_pad_nd.default")
def constant_pad_nd(ctx: ConvertContext, args: list[Any]) -> TensorValue:
    """constant_pad_nd(x, pad (last axis first, begin/end pairs), value = 0) -> Pad."""
    return _pad(ctx, tensor_arg(args[0], "pad input"), list(args[1]), float(args[2]))


@aten_op("aten.pad.default")
def pad(ctx: ConvertContext, args: list[Any]) -> TensorValue | PendingCircularPad:
    """pad(x, pad, mode, value) -> Pad for zeros; mode 'circular' only into a convolution (Conv circular)."""
    if args[2] == "circular":
        x = tensor_arg(args[0], "pad input")
        pad_list = [int(p) for p in args[1]]
        nd = len(pad_list) // 2
        if len(pad_list) % 2 or nd > x.ndim - 2:
            raise Unsupported(f"circular padding {pad_list} of a {x.ndim}-d tensor reaches the channel axis")
        pads = [(0, 0)] * (x.ndim - 2)
        for k in range(nd):
            pads[x.ndim - 3 - k] = (pad_list[2 * k], pad_list[2 * k + 1])
        return PendingCircularPad(x, tuple(pads))
    if args[2] != "constant":
        raise Unsupported(f"{args[2]} padding (only zero padding, and circular padding into a convolution)")
    return _pad(ctx, tensor_arg(args[0], "pad input"), list(args[1]), args[3])


@aten_op(
    "aten.clone.default",
    "aten.alias.default",
    "aten.detach.default",
    "aten.contiguous.default",
    "aten.lift_fresh_copy.default",
)
def identity(ctx: ConvertContext, args: list[Any]) -> Any:
    """Copies and views that change nothing: the value itself."""
    return args[0]


@aten_op("aten._to_copy.default")
def to_copy(ctx: ConvertContext, args: list[Any]) -> Any:
    """A copy to the same float dtype is a no-op; a cast to an integer type is not."""
    x = args[0]
    if args[1] is not None and not args[1].is_floating_point:
        raise Unsupported(f"cast to {args[1]} (rounds the values)")
    return x


@aten_op("aten.dropout.default")
def dropout(ctx: ConvertContext, args: list[Any]) -> Any:
    """dropout(x, p, train): the identity when not training."""
    if bool(args[2]):
        raise Unsupported("dropout in training mode; put the model in eval mode")
    return args[0]


@aten_op("aten.native_dropout.default")
def native_dropout(ctx: ConvertContext, args: list[Any]) -> tuple[Any, ...]:
    """native_dropout(x, p, train) -> (x, mask) when not training."""
    if args[2] is None or bool(args[2]):
        raise Unsupported("dropout in training mode; put the model in eval mode")
    return (args[0], NotAvailable("dropout mask"))
