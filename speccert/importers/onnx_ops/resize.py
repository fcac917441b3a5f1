"""Resize and Upsample: nearest-neighbour upsampling by whole factors (what `nn.Upsample(scale_factor=2)`
and `F.interpolate(..., mode="nearest")` export to), lowered to a ConvTranspose of ones
(speccert.importers.lowering.nearest_upsample: exact, norm sqrt(prod s)), and linear (bilinear)
resampling, lowered to one Linear per spatial axis (speccert.importers.lowering.linear_resample: the
operator is a Kronecker product, so the product of the two norms is its norm).

Nearest: the converter computes, per spatial axis, which input index each output index copies, by the
operator's own formulas (coordinate transformation, then the nearest rounding, then the clamp to the
input), and accepts the node only when that map is i -> i // s for a whole s: so every transformation
mode and rounding that amounts to it (asymmetric + floor, half_pixel + round_prefer_floor, ...) is
accepted, and every one that does not is refused naming the axis. Linear: the interpolation matrix of
each axis from the same coordinate formulas in exact rational arithmetic, accepted when its weights are
float32 numbers (upsampling by powers of two, align_corners grids with dyadic steps). Cubic
interpolation, antialiased downsampling and inexact weights are refused (one line, the node named);
onnxruntime's outputs are compared with the converted graph's at load, as for every op.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

import numpy as np
import onnx

from speccert.importers.lowering import (
    LoweringError,
    interpolation_matrix,
    linear_resample,
    nearest_upsample,
    sources,
)
from speccert.importers.onnx_ops import (
    Act,
    BuildContext,
    ExampleFn,
    NotConvertible,
    Value,
    act,
    attrs,
    const,
    converter,
)
from speccert.importers.onnx_ops.examples import model
from speccert.importers.onnx_ops.shape_ops import BATCH

TRANSFORMS = (
    "half_pixel",
    "half_pixel_symmetric",
    "pytorch_half_pixel",
    "align_corners",
    "asymmetric",
    "tf_half_pixel_for_nn",
)


def _round(x: Fraction, mode: str) -> int:
    if mode == "floor":
        return math.floor(x)
    if mode == "ceil":
        return math.ceil(x)
    half = x - math.floor(x) == 0.5
    if mode == "round_prefer_ceil":
        return math.ceil(x) if half else round(x)
    return math.floor(x) if half else round(x)  # round_prefer_floor (the default)


def nearest_map(n: int, m: int, scale: Fraction, transform: str, rounding: str) -> list[int]:
    """Input index copied by each of the m output indices (clamped to [0, n - 1], as the spec does)."""
    return [min(max(_round(x, rounding), 0), n - 1) for x in sources(n, m, scale, transform)]


def _targets(
    ctx: BuildContext, x: Act, scales: np.ndarray | None, sizes: np.ndarray | None, axes: list[int] | None
) -> tuple[list[int], list[Fraction]]:
    """(output length, exact scale) per spatial axis from the node's sizes (when given) or scales, over
    `axes` (opset 18; default all): the batch and channel axes must keep their size."""
    rank = len(x.shape) + 1
    listed = [a % rank for a in axes] if axes is not None else list(range(rank))
    use_sizes = sizes is not None and sizes.size > 0
    given = sizes if use_sizes else scales
    if given is None or given.size != len(listed):
        raise NotConvertible(f"needs scales or sizes for {len(listed)} axes, got {given}")
    lengths = dict(enumerate(x.shape, start=1))
    factors = dict.fromkeys(range(1, rank), Fraction(1))
    for a, v in zip(listed, given.tolist(), strict=True):
        if a == 0:  # sizes: BATCH from a folded Shape (or 1 when the batch is fixed at 1); scales: 1
            keeps = int(v) == BATCH or (int(v) == 1 and ctx.batch_fixed_one) if use_sizes else v == 1.0
            if not keeps:
                raise NotConvertible(f"resizes the batch axis ({'size' if use_sizes else 'scale'} {v:g})")
            continue
        if use_sizes:
            lengths[a], factors[a] = int(v), Fraction(int(v), x.shape[a - 1])
        else:
            lengths[a], factors[a] = math.floor(x.shape[a - 1] * float(v)), Fraction(float(v))
    if lengths[1] != x.shape[0]:
        raise NotConvertible(f"resizes the channel axis ({x.shape[0]} -> {lengths[1]})")
    return [lengths[a] for a in range(2, rank)], [factors[a] for a in range(2, rank)]


def _convert(
    ctx: BuildContext,
    x: Act,
    scales: np.ndarray | None,
    sizes: np.ndarray | None,
    a: dict[str, object],
    legacy: bool,
) -> Act:
    mode = str(a.get("mode", "nearest"))
    if mode not in ("nearest", "linear"):
        raise NotConvertible(
            f"mode '{mode}' (nearest-neighbour by whole factors and linear with float32 weights are supported)"
        )
    transform = "asymmetric" if legacy else str(a.get("coordinate_transformation_mode", "half_pixel"))
    rounding = "floor" if legacy else str(a.get("nearest_mode", "round_prefer_floor"))
    if transform not in TRANSFORMS:
        raise NotConvertible(f"coordinate_transformation_mode '{transform}'")
    if sizes is not None and sizes.size and str(a.get("keep_aspect_ratio_policy", "stretch")) != "stretch":
        raise NotConvertible(f"keep_aspect_ratio_policy '{a.get('keep_aspect_ratio_policy')}' with sizes")
    axes = a.get("axes")
    listed = None if axes is None else [int(v) for v in axes]  # type: ignore[attr-defined]
    lengths, factors = _targets(ctx, x, scales, sizes, listed)
    shapes = list(zip(x.shape[1:], lengths, factors, strict=True))
    emit = lambda op, v: ctx.add(op, [v])  # noqa: E731
    try:
        if mode == "linear":
            if int(a.get("antialias", 0)) and any(f < 1 for f in factors):  # type: ignore[call-overload]
                raise LoweringError("antialiased downsampling (a wider filter than two taps)")
            mats = [interpolation_matrix(n, sources(n, m, f, transform)) for n, m, f in shapes]
            return linear_resample(emit, x, x.shape, mats)
        maps = [nearest_map(n, m, f, transform, rounding) for n, m, f in shapes]
        return nearest_upsample(emit, x, x.shape, maps)
    except LoweringError as exc:
        how = transform if mode == "linear" else f"{transform}, {rounding}"
        raise NotConvertible(f"{mode}: {exc} ({how})") from None


def _float(v: Value | None, what: str) -> np.ndarray | None:
    return None if v is None else np.asarray(const(v, what), dtype=np.float64)


def _resize(
    shape: tuple[int, ...],
    opset: int,
    scales: list[float] | None,
    sizes: list[int] | None = None,
    **kw: Any,
) -> ExampleFn:
    """A one-node Resize example over an input of `shape` (without the batch axis)."""
    inits: dict[str, np.ndarray] = {}
    names = ["x", "scales"] if opset == 10 else ["x", "", "scales" if scales is not None else ""]
    if opset in (11, 12):  # roi is not optional before opset 13
        names[1], inits["roi"] = "roi", np.zeros(0, np.float32)
    if scales is not None:
        inits["scales"] = np.array(scales, np.float32)
    if sizes is not None:
        inits["sizes"] = np.array(sizes, np.int64)
        names.append("sizes")
    node = onnx.helper.make_node("Resize", names, ["y"], **kw)
    return lambda: model([node], shape, inits, opset)


def _upsample(mode: str) -> ExampleFn:
    node = onnx.helper.make_node("Upsample", ["x", "scales"], ["y"], mode=mode)
    return lambda: model([node], (2, 3, 4), {"scales": np.array([1, 1, 2, 4], np.float32)}, 9)


RESIZE_EXAMPLES = [
    _resize((3, 4, 5), 13, [1, 1, 2, 2], coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
    _resize((2, 3, 4), 11, [1, 1, 3, 2], mode="nearest"),  # half_pixel, round_prefer_floor (defaults)
    _resize((2, 6), 13, [1, 1, 3], coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
    _resize((2, 3, 3), 18, None, sizes=[6, 12], axes=[2, 3], mode="nearest"),
    _resize((2, 3, 3), 10, [1, 1, 2, 2], mode="nearest"),
    _resize((2, 3, 4), 13, [1, 1, 2, 2], mode="linear"),  # half_pixel: torch's bilinear upsampling
    _resize(
        (2, 3, 4),
        18,
        None,
        sizes=[5, 7],
        axes=[2, 3],
        mode="linear",
        coordinate_transformation_mode="align_corners",
    ),
    _resize((2, 6), 13, [1, 1, 4], mode="linear", coordinate_transformation_mode="asymmetric"),
    _resize((2, 3, 4), 10, [1, 1, 2, 2], mode="linear"),
]


@converter("Resize", opsets=(10, 21), examples=RESIZE_EXAMPLES)
def convert_resize(ctx: BuildContext, node: onnx.NodeProto, inputs: list[Value | None]) -> list[Value | None]:
    """Nearest-neighbour upsampling by whole factors on 1-2 spatial axes (any coordinate transformation
    and rounding that copies input i // s to output i) -> ConvTranspose of ones, stride s, one group per
    channel; linear mode with float32-exact weights -> one Linear per spatial axis (Transposes between);
    cubic, antialiased downsampling, other nearest maps and inexact weights refused."""
    x = act(inputs[0], "X")
    a = attrs(node)
    if ctx.opset == 10:
        scales, sizes = _float(inputs[1] if len(inputs) > 1 else None, "scales"), None
    else:
        scales = _float(inputs[2] if len(inputs) > 2 else None, "scales")
        sizes = _float(inputs[3] if len(inputs) > 3 else None, "sizes")
        if scales is not None and not scales.size:
            scales = None
    return [_convert(ctx, x, scales, sizes, a, legacy=ctx.opset == 10)]


@converter("Upsample", opsets=(8, 9), examples=[_upsample("nearest"), _upsample("linear")])
def convert_upsample(
    ctx: BuildContext, node: onnx.NodeProto, inputs: list[Value | None]
) -> list[Value | None]:
    """Upsample (nearest by whole factors, or linear with float32-exact weights) -> as Resize."""
    x = act(inputs[0], "X")
    a = attrs(node)
    raw = a.get("scales") if ctx.opset < 9 else (inputs[1] if len(inputs) > 1 else None)
    scales = np.asarray(raw, dtype=np.float64) if ctx.opset < 9 else _float(raw, "scales")  # type: ignore[arg-type]
    return [_convert(ctx, x, scales, None, a, legacy=True)]
