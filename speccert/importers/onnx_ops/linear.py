"""Converters of the ONNX ops that are affine maps with constant weights: Gemm, MatMul, Conv,
ConvTranspose. The weight must be a constant and the activation must keep its batch axis first."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
import torch

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
from speccert.importers.onnx_ops.examples import model, one_node, randn
from speccert.importers.problems import ATTENTION
from speccert.ir.ops import Affine, Conv, ConvTranspose, Linear, Reshape


def tensor(a: np.ndarray) -> torch.Tensor:
    """A float32 parameter tensor (own memory, contiguous) from a folded constant."""
    return torch.from_numpy(np.array(a, dtype=np.float32, copy=True))


def spatial_padding(
    a: dict,
    in_spatial: Sequence[int],
    kernel: Sequence[int],
    strides: Sequence[int],
    dilations: Sequence[int],
) -> tuple[tuple[int, int], ...]:
    """Per-axis (begin, end) padding from ONNX `pads` / `auto_pad`.

    SAME_*: out = ceil(in / s), total = max((out - 1) s + (k - 1) d + 1 - in, 0), the odd pixel at the end
    (SAME_UPPER) or the beginning (SAME_LOWER)."""
    n = len(in_spatial)
    auto = a.get("auto_pad", "NOTSET")
    if auto in ("NOTSET", ""):
        pads = list(a.get("pads", [0] * (2 * n)))
        if len(pads) != 2 * n:
            raise NotConvertible(f"pads has {len(pads)} entries, expected {2 * n}")
        if any(p < 0 for p in pads):
            raise NotConvertible("negative pads (cropping) are not supported")
        return tuple((int(pads[i]), int(pads[i + n])) for i in range(n))
    if auto == "VALID":
        return tuple((0, 0) for _ in range(n))
    if auto not in ("SAME_UPPER", "SAME_LOWER"):
        raise NotConvertible(f"unknown auto_pad {auto!r}")
    out = []
    for size, k, s, d in zip(in_spatial, kernel, strides, dilations, strict=True):
        total = max((-(-size // s) - 1) * s + (k - 1) * d + 1 - size, 0)
        small, big = total // 2, total - total // 2
        out.append((small, big) if auto == "SAME_UPPER" else (big, small))
    return tuple(out)


def _gemm_examples() -> list:
    w, b = randn(6, 5, seed=1), randn(6, seed=2)
    ex = [
        lambda: one_node("Gemm", (5,), ["x", "w", "b"], {"w": w, "b": b}, opset=11, transB=1),
        lambda: one_node(
            "Gemm",
            (5,),
            ["x", "w", "b"],
            {"w": w.T.copy(), "b": b.reshape(1, 6)},
            opset=13,
            alpha=0.5,
            beta=2.0,
        ),
        lambda: one_node("Gemm", (5,), ["x", "w"], {"w": w}, opset=13, transB=1, alpha=-1.5),
        lambda: one_node(
            "Gemm", (5,), ["x", "w", "c"], {"w": w.T.copy(), "c": np.float32(0.25)}, opset=8, beta=3.0
        ),
        # alpha 0.3 and beta 0.7 times float32 numbers are not float32 numbers (kept exact, float64)
        lambda: one_node(
            "Gemm", (5,), ["x", "w", "c"], {"w": w.T.copy(), "c": randn(6, seed=5)}, alpha=0.3, beta=0.7
        ),
    ]
    return ex


@converter("Gemm", examples=_gemm_examples())
def convert_gemm(ctx: BuildContext, node: onnx.NodeProto, inputs: list[Value | None]) -> list[Value | None]:
    """Y = alpha A' B' + beta C with A the activation [N, K] (transA = 0) and B constant:
    Linear(weight = alpha B'^T, bias = beta C)."""
    a = attrs(node)
    if not isinstance(inputs[0], Act):
        raise NotConvertible(
            "only Gemm with the activation as A is supported (A constant would move the batch axis)"
        )
    x = inputs[0]
    if len(x.shape) != 1:
        raise NotConvertible(f"Gemm needs a 2-d activation [N, K], got [N, {', '.join(map(str, x.shape))}]")
    if a.get("transA", 0):
        raise NotConvertible("transA=1 on the activation would mix the batch axis into the features")
    alpha, beta = float(a.get("alpha", 1.0)), float(a.get("beta", 1.0))
    b32 = const(inputs[1], "B")
    weight = b32 if a.get("transB", 0) else b32.T
    c32 = const(inputs[2], "C") if len(inputs) > 2 and inputs[2] is not None else None
    plain_bias = c32 is None or (c32.dtype == np.float32 and c32.shape == (weight.shape[0],))
    if alpha == beta == 1.0 and b32.dtype == np.float32 and b32.ndim == 2 and plain_bias:
        # The usual export (torch's nn.Linear): float32 weights as stored, no float64 round trip (a
        # 25088x4096 VGG layer would take 0.8 GB and seconds per copy).
        return [ctx.add(Linear(weight=ctx.param(weight), bias=None if c32 is None else tensor(c32)), [x])]
    b = b32.astype(np.float64)
    b = b.T if a.get("transB", 0) else b
    w = alpha * b.T
    bias = None
    if len(inputs) > 2 and inputs[2] is not None:
        c = const(inputs[2], "C").astype(np.float64)
        if c.ndim == 2:
            if c.shape[0] != 1:
                raise NotConvertible("C with one row per batch element is not supported")
            c = c[0]
        bias = np.broadcast_to(beta * c, (w.shape[0],))
    if _is_float32(w) and (bias is None or _is_float32(bias)):
        return [ctx.add(Linear(weight=tensor(w), bias=None if bias is None else tensor(bias)), [x])]
    # alpha B or beta C is not a float32 number: keep them exact as a float64 Affine after Linear(B)
    # (fold_linear multiplies them in, in float64, when certifying)
    y = ctx.add(Linear(weight=tensor(b.T)), [x], hint="/linear")
    shift = np.zeros(w.shape[0]) if bias is None else bias
    scale = np.full(w.shape[0], alpha)
    return [ctx.add(Affine(scale=torch.from_numpy(scale), shift=torch.from_numpy(shift.copy())), [y])]


def _is_float32(a: np.ndarray) -> bool:
    return bool((a.astype(np.float32).astype(np.float64) == a).all())


def _matmul_examples() -> list:
    return [
        lambda: one_node("MatMul", (5,), ["x", "w"], {"w": randn(5, 7)}, opset=13),
        lambda: one_node("MatMul", (3, 5), ["x", "w"], {"w": randn(5, 2)}, opset=9),
        lambda: one_node("MatMul", (5,), ["x", "w"], {"w": randn(5)}, opset=13),
    ]


@converter("MatMul", examples=_matmul_examples())
def convert_matmul(ctx: BuildContext, node: onnx.NodeProto, inputs: list[Value | None]) -> list[Value | None]:
    """X @ W with W a constant [K, M] (or [K]): Linear(weight = W^T) on the last axis."""
    if isinstance(inputs[0], Act) and isinstance(inputs[1], Act):
        raise NotConvertible(ATTENTION)
    x = act(inputs[0], "A (a constant @ activation would move the batch axis)")
    w = const(inputs[1], "B")
    if not x.shape:
        raise NotConvertible("MatMul of a 1-d activation is not supported")
    if w.ndim == 1:
        y = ctx.add(Linear(weight=tensor(w.reshape(1, -1))), [x], hint="/linear")
        return [ctx.add(Reshape(x.shape[:-1]), [y])]
    if w.ndim != 2:
        raise NotConvertible(f"batched MatMul with a {w.ndim}-d constant is not supported")
    return [ctx.add(Linear(weight=ctx.param(w.T)), [x])]


def _conv_examples() -> list:
    w, b = randn(4, 3, 3, 3, seed=1), randn(4, seed=2)
    wg = randn(6, 2, 3, 2, seed=3)
    return [
        lambda: one_node("Conv", (3, 8, 8), ["x", "w", "b"], {"w": w, "b": b}, opset=11, pads=[1, 1, 1, 1]),
        lambda: one_node(
            "Conv", (3, 9, 8), ["x", "w"], {"w": w}, opset=13, pads=[0, 1, 2, 1], strides=[2, 1]
        ),
        lambda: one_node(
            "Conv", (3, 9, 9), ["x", "w", "b"], {"w": w, "b": b}, opset=8, dilations=[2, 1], strides=[1, 2]
        ),
        lambda: one_node(
            "Conv", (4, 7, 8), ["x", "w"], {"w": wg}, opset=13, group=2, auto_pad="SAME_UPPER", strides=[2, 2]
        ),
        lambda: one_node("Conv", (4, 7, 8), ["x", "w"], {"w": wg}, opset=18, group=2, auto_pad="SAME_LOWER"),
        lambda: one_node("Conv", (3, 8, 8), ["x", "w"], {"w": w}, opset=21, auto_pad="VALID"),
        lambda: one_node(
            "Conv",
            (3, 10),
            ["x", "w", "b"],
            {"w": randn(5, 3, 3, seed=4), "b": randn(5)},
            opset=13,
            pads=[2, 0],
            strides=[3],
        ),
    ]


@converter("Conv", examples=_conv_examples())
def convert_conv(ctx: BuildContext, node: onnx.NodeProto, inputs: list[Value | None]) -> list[Value | None]:
    """1-d and 2-d convolution with constant weight [c_out, c_in/groups, *k]; pads per side kept as is."""
    a = attrs(node)
    x = act(inputs[0], "X")
    w = const(inputs[1], "W (weights computed from the input are not linear)")
    nd = w.ndim - 2
    if nd not in (1, 2):
        raise NotConvertible(f"{nd}-d convolution is not in the IR (1-d and 2-d are)")
    if len(x.shape) != nd + 1:
        raise NotConvertible(f"input rank {len(x.shape) + 1} does not match a {nd}-d kernel")
    strides = tuple(int(s) for s in a.get("strides", [1] * nd))
    dil = tuple(int(d) for d in a.get("dilations", [1] * nd))
    pads = spatial_padding(a, x.shape[1:], w.shape[2:], strides, dil)
    b = inputs[2] if len(inputs) > 2 else None
    bias = tensor(const(b, "B")) if b is not None else None
    op = Conv(
        weight=ctx.param(w),
        bias=bias,
        stride=strides,
        padding=pads,
        dilation=dil,
        groups=int(a.get("group", 1)),
    )
    return [ctx.add(op, [x])]


def _convt_examples() -> list:
    w, b = randn(3, 4, 3, 3, seed=1), randn(4, seed=2)
    return [
        lambda: one_node(
            "ConvTranspose",
            (3, 5, 5),
            ["x", "w", "b"],
            {"w": w, "b": b},
            opset=11,
            strides=[2, 2],
            pads=[1, 1, 1, 1],
            output_padding=[1, 0],
        ),
        lambda: one_node(
            "ConvTranspose", (3, 5, 6), ["x", "w"], {"w": w}, opset=13, strides=[2, 1], pads=[1, 0, 0, 0]
        ),
        lambda: one_node(
            "ConvTranspose",
            (4, 5, 5),
            ["x", "w"],
            {"w": randn(4, 2, 2, 3, seed=3)},
            opset=17,
            group=2,
            dilations=[2, 1],
        ),
        lambda: one_node(
            "ConvTranspose", (3, 4, 4), ["x", "w"], {"w": w}, opset=13, strides=[2, 2], output_shape=[7, 7]
        ),
        lambda: model(
            [onnx.helper.make_node("ConvTranspose", ["x", "w"], ["y"], strides=[3])],
            (3, 6),
            {"w": randn(3, 2, 4, seed=5)},
            13,
        ),
    ]


@converter("ConvTranspose", examples=_convt_examples())
def convert_conv_transpose(
    ctx: BuildContext, node: onnx.NodeProto, inputs: list[Value | None]
) -> list[Value | None]:
    """Transposed convolution. ONNX pads (b, e) with e <= b map to torch padding b and output_padding
    increased by b - e (torch computes those extra end rows, it does not zero them)."""
    a = attrs(node)
    x = act(inputs[0], "X")
    w = const(inputs[1], "W")
    nd = w.ndim - 2
    if nd not in (1, 2) or len(x.shape) != nd + 1:
        raise NotConvertible(
            f"{nd}-d transposed convolution on a rank-{len(x.shape) + 1} input is not supported"
        )
    strides = [int(s) for s in a.get("strides", [1] * nd)]
    dil = [int(d) for d in a.get("dilations", [1] * nd)]
    out_pad = [int(p) for p in a.get("output_padding", [0] * nd)]
    k_eff = [(k - 1) * d + 1 for k, d in zip(w.shape[2:], dil, strict=True)]
    full = [s * (n - 1) + op + k for s, n, op, k in zip(strides, x.shape[1:], out_pad, k_eff, strict=True)]
    auto = a.get("auto_pad", "NOTSET")
    if "output_shape" in a or auto in ("SAME_UPPER", "SAME_LOWER"):
        target = (
            list(a["output_shape"])[-nd:]
            if "output_shape" in a
            else [n * s for n, s in zip(x.shape[1:], strides, strict=True)]
        )
        totals = [f - t for f, t in zip(full, target, strict=True)]
        if any(t < 0 for t in totals):
            raise NotConvertible("output_shape larger than the full transposed convolution")
        upper = auto == "SAME_UPPER"
        pads = [(t // 2, t - t // 2) if upper else (t - t // 2, t // 2) for t in totals]
    elif auto == "VALID":
        pads = [(0, 0)] * nd
    else:
        p = [int(v) for v in a.get("pads", [0] * (2 * nd))]
        pads = [(p[i], p[i + nd]) for i in range(nd)]
    torch_pad, torch_out_pad = [], []
    for (b0, e0), op, s, d in zip(pads, out_pad, strides, dil, strict=True):
        if e0 > b0 or b0 < 0 or e0 < 0:
            raise NotConvertible(f"transposed-conv pads (begin {b0}, end {e0}) need cropping at the end")
        extra = op + b0 - e0
        if extra >= max(s, d):
            raise NotConvertible(f"transposed-conv output padding {extra} >= max(stride, dilation)")
        torch_pad.append(b0)
        torch_out_pad.append(extra)
    b = inputs[2] if len(inputs) > 2 else None
    bias = tensor(const(b, "B")) if b is not None else None
    op_ = ConvTranspose(
        weight=ctx.param(w),
        bias=bias,
        stride=tuple(strides),
        padding=tuple(torch_pad),
        output_padding=tuple(torch_out_pad),
        dilation=tuple(dil),
        groups=int(a.get("group", 1)),
    )
    return [ctx.add(op_, [x])]
