"""Converters of pooling and padding: MaxPool, AveragePool, GlobalAveragePool, Pad (constant 0)."""

from __future__ import annotations

import numpy as np
import onnx
import torch

from speccert.importers.lowering import mean
from speccert.importers.onnx_ops import (
    Act,
    BuildContext,
    NotConvertible,
    Value,
    act,
    attrs,
    const,
    converter,
)
from speccert.importers.onnx_ops.examples import one_node, unary
from speccert.importers.onnx_ops.linear import spatial_padding
from speccert.ir.ops import Affine, AvgPool, Concat, GlobalAvgPool, MaxPool, Pad, Slice


def _onnx_pool_size(n: int, k: int, s: int, d: int, pads: tuple[int, int], ceil_mode: bool) -> int:
    """ONNX output length: floor/ceil((n + p_b + p_e - ((k-1) d + 1)) / s) + 1, dropping a last window
    that would start in the end padding (as onnxruntime does)."""
    span = n + pads[0] + pads[1] - ((k - 1) * d + 1)
    out = (-(-span // s) if ceil_mode else span // s) + 1
    if ceil_mode and (out - 1) * s >= n + pads[0]:
        out -= 1
    return out


def _pool_geometry(
    node: onnx.NodeProto, shape: tuple[int, ...]
) -> tuple[dict, tuple[int, ...], tuple[int, ...], tuple[int, ...], tuple[tuple[int, int], ...]]:
    a = attrs(node)
    if "kernel_shape" not in a:
        raise NotConvertible("kernel_shape is required")
    kernel = tuple(int(k) for k in a["kernel_shape"])
    nd = len(kernel)
    if nd not in (1, 2) or len(shape) != nd + 1:
        raise NotConvertible(f"{nd}-d pooling on a rank-{len(shape) + 1} input is not supported")
    strides = tuple(int(s) for s in a.get("strides", [1] * nd))
    dil = tuple(int(d) for d in a.get("dilations", [1] * nd))
    pads = spatial_padding(a, shape[1:], kernel, strides, dil)
    return a, kernel, strides, dil, pads


def _check_size(
    ctx_shape: tuple[int, ...],
    x_shape: tuple[int, ...],
    kernel: tuple[int, ...],
    strides: tuple[int, ...],
    dil: tuple[int, ...],
    pads: tuple[tuple[int, int], ...],
    ceil_mode: bool,
) -> None:
    want = tuple(
        _onnx_pool_size(n, k, s, d, p, ceil_mode)
        for n, k, s, d, p in zip(x_shape[1:], kernel, strides, dil, pads, strict=True)
    )
    if tuple(ctx_shape[1:]) != want:
        raise NotConvertible(
            f"ceil_mode output size {list(want)} differs from the IR's {list(ctx_shape[1:])}"
        )


def _maxpool_examples() -> list:
    return [
        unary("MaxPool", 8, (2, 6, 6), kernel_shape=[2, 2], strides=[2, 2]),
        unary("MaxPool", 12, (2, 7, 7), kernel_shape=[3, 3], strides=[2, 2], pads=[1, 0, 1, 2]),
        unary("MaxPool", 10, (2, 7, 8), kernel_shape=[3, 2], strides=[2, 2], ceil_mode=1),
        unary("MaxPool", 12, (2, 9, 9), kernel_shape=[2, 2], dilations=[2, 2], ceil_mode=1, strides=[2, 2]),
        unary("MaxPool", 11, (2, 7, 7), kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER"),
        unary("MaxPool", 13, (2, 10), kernel_shape=[3], strides=[2], pads=[1, 1]),
    ]


@converter("MaxPool", examples=_maxpool_examples())
def convert_maxpool(
    ctx: BuildContext, node: onnx.NodeProto, inputs: list[Value | None]
) -> list[Value | None]:
    """Max pooling (1-d/2-d) with per-side pads, dilations and ceil_mode; the Indices output is not kept."""
    x = act(inputs[0], "X")
    a, kernel, strides, dil, pads = _pool_geometry(node, x.shape)
    if a.get("storage_order", 0) and len(node.output) > 1:
        raise NotConvertible("storage_order only matters for the Indices output, which is not supported")
    ceil = bool(a.get("ceil_mode", 0))
    y = ctx.add(MaxPool(kernel=kernel, stride=strides, padding=pads, dilation=dil, ceil_mode=ceil), [x])
    _check_size(y.shape, x.shape, kernel, strides, dil, pads, ceil)
    return [y] + [None] * (len(node.output) - 1)


def _avgpool_examples() -> list:
    return [
        unary("AveragePool", 8, (2, 6, 6), kernel_shape=[2, 2], strides=[2, 2]),
        unary(
            "AveragePool",
            11,
            (2, 7, 7),
            kernel_shape=[3, 3],
            strides=[2, 2],
            pads=[1, 1, 1, 1],
            count_include_pad=1,
        ),
        unary("AveragePool", 11, (2, 7, 7), kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
        unary(
            "AveragePool",
            13,
            (2, 7, 6),
            kernel_shape=[3, 3],
            strides=[2, 2],
            pads=[0, 1, 2, 1],
            count_include_pad=1,
        ),
        unary("AveragePool", 10, (2, 8, 8), kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1),
        unary(
            "AveragePool", 13, (2, 8, 7), kernel_shape=[3, 2], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1
        ),
        unary(
            "AveragePool",
            19,
            (2, 6, 6),
            kernel_shape=[3, 3],
            strides=[3, 3],
            pads=[1, 1, 1, 1],
            ceil_mode=1,
            count_include_pad=1,
        ),
        unary(
            "AveragePool",
            19,
            (3, 9),
            kernel_shape=[2],
            strides=[2],
            auto_pad="SAME_UPPER",
            count_include_pad=1,
        ),
    ]


@converter("AveragePool", examples=_avgpool_examples())
def convert_avgpool(
    ctx: BuildContext, node: onnx.NodeProto, inputs: list[Value | None]
) -> list[Value | None]:
    """Average pooling: y = (1/|window|) sum over the window, |window| counting padding iff
    count_include_pad (ONNX default 0, unlike torch)."""
    x = act(inputs[0], "X")
    a, kernel, strides, dil, pads = _pool_geometry(node, x.shape)
    if any(d != 1 for d in dil):
        raise NotConvertible("dilated AveragePool is not in the IR")
    include = bool(a.get("count_include_pad", 0))
    ceil = bool(a.get("ceil_mode", 0))
    asym = any(b != e or 2 * b > k for (b, e), k in zip(pads, kernel, strict=True))
    if asym and not include and any(b or e for b, e in pads):
        raise NotConvertible("asymmetric or wide padding with count_include_pad=0 is not supported")
    y = ctx.add(
        AvgPool(kernel=kernel, stride=strides, padding=pads, ceil_mode=ceil, count_include_pad=include), [x]
    )
    _check_size(y.shape, x.shape, kernel, strides, dil, pads, ceil)
    return [y]


@converter(
    "GlobalAveragePool",
    examples=[unary("GlobalAveragePool", 8, (3, 5, 4)), unary("GlobalAveragePool", 13, (3, 6))],
)
def convert_global_avgpool(
    ctx: BuildContext, node: onnx.NodeProto, inputs: list[Value | None]
) -> list[Value | None]:
    """Mean over the spatial axes, which stay as size 1."""
    x = act(inputs[0], "X")
    if len(x.shape) < 2:
        raise NotConvertible("GlobalAveragePool needs spatial axes")
    return [ctx.add(GlobalAvgPool(), [x])]


def _pad_examples() -> list:
    pads = np.array([0, 0, 1, 2, 0, 0, 3, 0], dtype=np.int64)
    return [
        unary("Pad", 8, (2, 4, 4), pads=[0, 0, 1, 2, 0, 0, 3, 0]),
        lambda: one_node("Pad", (2, 4, 4), ["x", "p"], {"p": pads}, opset=13),
        lambda: one_node(
            "Pad", (2, 4, 4), ["x", "p", "v"], {"p": pads, "v": np.float32(0)}, opset=11, mode="constant"
        ),
        lambda: one_node(
            "Pad",
            (2, 4, 4),
            ["x", "p", "", "ax"],
            {"p": np.array([1, 1, 2, 0], dtype=np.int64), "ax": np.array([2, -1], dtype=np.int64)},
            opset=18,
        ),
        lambda: one_node(
            "Pad", (2, 4, 5), ["x", "p"], {"p": np.array([0, 0, 1, 2, 0, 0, 1, 2], np.int64)}, 19, mode="wrap"
        ),
    ]


@converter("Pad", examples=_pad_examples())
def convert_pad(ctx: BuildContext, node: onnx.NodeProto, inputs: list[Value | None]) -> list[Value | None]:
    """Constant-zero padding of non-batch axes (pads laid out [b_0..b_{r-1}, e_0..e_{r-1}]); wrap
    (circular) padding as Concat of Slices, a circular Conv when a Conv follows."""
    a = attrs(node)
    x = act(inputs[0], "data")
    r = len(x.shape) + 1
    mode = a.get("mode", "constant")
    if mode not in ("constant", "wrap"):
        raise NotConvertible(f"Pad mode {mode!r} is not supported (only constant 0 and wrap)")
    if ctx.opset < 11:
        pads = np.asarray(a.get("pads", []), dtype=np.int64)
        value = float(a.get("value", 0.0))
        axes = list(range(r))
    else:
        pads = const(inputs[1], "pads").astype(np.int64).reshape(-1)
        value = (
            float(const(inputs[2], "constant_value").reshape(-1)[0])
            if len(inputs) > 2 and inputs[2] is not None
            else 0.0
        )
        if len(inputs) > 3 and inputs[3] is not None:
            axes = [int(v) % r for v in const(inputs[3], "axes").reshape(-1)]
        else:
            axes = list(range(r))
    if value != 0.0 and mode == "constant":
        raise NotConvertible(f"Pad with constant {value:g} is affine only with 0")
    if len(pads) != 2 * len(axes):
        raise NotConvertible(f"pads has {len(pads)} entries for {len(axes)} axes")
    per_axis = {ax: (int(pads[i]), int(pads[i + len(axes)])) for i, ax in enumerate(axes)}
    if any(v < 0 for pe in per_axis.values() for v in pe):
        raise NotConvertible("negative pads (cropping) are not supported")
    if per_axis.get(0, (0, 0)) != (0, 0):
        raise NotConvertible("padding the batch axis")
    if mode == "wrap":
        return [_wrap(ctx, x, per_axis)]
    return [ctx.add(Pad(tuple(per_axis.get(i, (0, 0)) for i in range(1, r))), [x])]


def _wrap(ctx: BuildContext, x: Act, per_axis: dict[int, tuple[int, int]]) -> Act:
    """Circular padding, one axis at a time: Concat(x[n-b:], x, x[:e]) (how the legacy exporter writes
    it); before a Conv, speccert.importers.circular makes the pair one circular Conv."""
    y = x
    for ax in sorted(per_axis):
        b, e = per_axis[ax]
        n = y.shape[ax - 1]
        if b > n or e > n:
            raise NotConvertible(f"wrap padding ({b}, {e}) wider than the axis of length {n}")
        parts = [ctx.add(Slice(axis=ax - 1, start=n - b, stop=n), [y])] if b else []
        parts += [y] + ([ctx.add(Slice(axis=ax - 1, start=0, stop=e), [y])] if e else [])
        if len(parts) > 1:
            y = ctx.add(Concat(axis=ax - 1), parts)
    return y


def _reduce_examples(op: str) -> list:
    return [
        unary(op, 13, (3, 4, 5), axes=[2, 3], keepdims=1),
        unary(op, 11, (3, 4, 5), axes=[-1, -2], keepdims=0),
        unary(op, 13, (6, 5), axes=[1], keepdims=0),
        lambda: one_node(op, (3, 4, 5), ["x", "a"], {"a": np.array([1, 3], np.int64)}, opset=18, keepdims=0),
    ]


def _reduce(ctx: BuildContext, node: onnx.NodeProto, inputs: list[Value | None], scale: bool) -> Act:
    x = act(inputs[0], "data")
    a = attrs(node)
    r = len(x.shape) + 1
    if ctx.opset >= 18 or (node.op_type == "ReduceSum" and ctx.opset >= 13):
        given = len(inputs) > 1 and inputs[1] is not None
        axes = [int(v) for v in const(inputs[1], "axes").reshape(-1)] if given else None
    else:
        axes = [int(v) for v in a["axes"]] if "axes" in a else None
    if not axes:
        if a.get("noop_with_empty_axes", 0):
            return x
        raise NotConvertible(f"{node.op_type} over every axis, the batch included")
    axes = [v + r if v < 0 else v for v in axes]
    if 0 in axes:
        raise NotConvertible(f"{node.op_type} over the batch axis")
    y = mean(lambda op, v: ctx.add(op, [v]), x, x.shape, [v - 1 for v in axes], bool(a.get("keepdims", 1)))
    if scale:  # sum = mean * number of reduced entries
        n = float(np.prod([x.shape[v - 1] for v in axes]))
        y = ctx.add(Affine(scale=torch.tensor(n), shift=torch.tensor(0.0)), [y])
    return y


@converter("ReduceMean", examples=_reduce_examples("ReduceMean"))
def convert_reduce_mean(
    ctx: BuildContext, node: onnx.NodeProto, inputs: list[Value | None]
) -> list[Value | None]:
    """Mean over non-batch axes (over the spatial axes it is a global average pool): Transpose,
    Reshape, GlobalAvgPool (norm 1/sqrt(#reduced)), Reshape."""
    return [_reduce(ctx, node, inputs, scale=False)]


@converter(
    "ReduceSum",
    examples=[
        unary("ReduceSum", 11, (3, 4, 5), axes=[2, 3], keepdims=0),
        lambda: one_node("ReduceSum", (3, 4), ["x", "a"], {"a": np.array([1], np.int64)}, opset=13),
    ],
)
def convert_reduce_sum(
    ctx: BuildContext, node: onnx.NodeProto, inputs: list[Value | None]
) -> list[Value | None]:
    """Sum over non-batch axes: the mean's chain, then Affine(#reduced)."""
    return [_reduce(ctx, node, inputs, scale=True)]
