"""Nearest-neighbour upsampling (`nn.Upsample`, `F.interpolate(mode="nearest" | "nearest-exact")`) by
whole factors: a ConvTranspose of ones (speccert.importers.lowering.nearest_upsample); linear and
bilinear interpolation with float32-exact weights: one Linear per spatial axis
(speccert.importers.lowering.linear_resample).

Torch maps output index i to input floor(i * r) ("nearest") or floor((i + 0.5) * r) ("nearest-exact"),
r = 1 / scale_factor when a factor is given, else in / out, clamped to the input; both are i // s for a
whole factor s. The map is computed here and the lowering accepts only that form; the import's
faithfulness check compares the graph with torch's own kernel (which computes r in single precision).
(Bi)linear: input coordinate i (n - 1) / (m - 1) with align_corners, else max(0, (i + 1/2) r - 1/2),
interpolated between floor and the next index (the last index clamped), in exact rationals.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

from speccert.importers.aten_ops.base import (
    ConvertContext,
    TensorValue,
    Unsupported,
    aten_op,
    emitter,
    tensor_arg,
)
from speccert.importers.lowering import (
    LoweringError,
    interpolation_matrix,
    linear_resample,
    nearest_upsample,
    sources,
)


def _axis(
    n: int, axis: int, sizes: Sequence[int] | None, factors: Sequence[float | None]
) -> tuple[int, float | None]:
    """(output length, scale factor or None) of spatial axis `axis` of length n, as torch reads them."""
    f = factors[axis] if axis < len(factors) else None
    return (int(sizes[axis]) if sizes else math.floor(n * float(f or 1.0))), f


def _upsample(
    ctx: ConvertContext, x_arg: Any, sizes: Sequence[int] | None, factors: Sequence[float | None], exact: bool
) -> TensorValue:
    x = tensor_arg(x_arg, "upsample input")
    maps = []
    for axis, n in enumerate(x.shape[2:]):
        m, f = _axis(n, axis, sizes, factors)
        r = 1.0 / float(f) if f else n / m
        half = 0.5 if exact else 0.0
        maps.append([min(math.floor((i + half) * r), n - 1) for i in range(m)])
    try:
        return nearest_upsample(emitter(ctx), x, x.shape[1:], maps)
    except LoweringError as exc:
        raise Unsupported(f"{'nearest-exact' if exact else 'nearest'} upsampling: {exc}") from None


def _vec(ctx: ConvertContext, args: list[Any], exact: bool) -> TensorValue:
    sizes = args[1] if len(args) > 1 else None
    factors = list(args[2]) if len(args) > 2 and args[2] is not None else []
    return _upsample(ctx, args[0], sizes, factors, exact)


@aten_op("aten.upsample_nearest1d.vec", "aten.upsample_nearest2d.vec")
def upsample_nearest_vec(ctx: ConvertContext, args: list[Any]) -> TensorValue:
    """upsample_nearest(x, output_size, scale_factors) by whole factors -> ConvTranspose of ones, stride
    s, one group per channel; fractional factors and downsampling refused."""
    return _vec(ctx, args, exact=False)


@aten_op("aten._upsample_nearest_exact1d.vec", "aten._upsample_nearest_exact2d.vec")
def upsample_nearest_exact_vec(ctx: ConvertContext, args: list[Any]) -> TensorValue:
    """nearest-exact upsampling by whole factors -> ConvTranspose of ones, as nearest."""
    return _vec(ctx, args, exact=True)


def _default(ctx: ConvertContext, args: list[Any], exact: bool) -> TensorValue:
    return _upsample(ctx, args[0], args[1], list(args[2:]), exact)


@aten_op("aten.upsample_nearest1d.default", "aten.upsample_nearest2d.default")
def upsample_nearest(ctx: ConvertContext, args: list[Any]) -> TensorValue:
    """upsample_nearest(x, output_size, scales...) by whole factors -> ConvTranspose of ones."""
    return _default(ctx, args, exact=False)


@aten_op("aten._upsample_nearest_exact1d.default", "aten._upsample_nearest_exact2d.default")
def upsample_nearest_exact(ctx: ConvertContext, args: list[Any]) -> TensorValue:
    """nearest-exact upsampling (x, output_size, scales...) by whole factors -> ConvTranspose of ones."""
    return _default(ctx, args, exact=True)


def _linear(
    ctx: ConvertContext,
    x_arg: Any,
    sizes: Sequence[int] | None,
    corners: bool,
    factors: Sequence[float | None],
) -> TensorValue:
    x = tensor_arg(x_arg, "interpolation input")
    mats = []
    try:
        for axis, n in enumerate(x.shape[2:]):
            m, f = _axis(n, axis, sizes, factors)
            scale = Fraction(float(f)) if f else Fraction(m, n)
            # torch's max(0, (i + 1/2) / scale - 1/2) is half_pixel, clamped by interpolation_matrix
            src = sources(n, m, scale, "align_corners" if corners else "half_pixel")
            mats.append(interpolation_matrix(n, src))
        return linear_resample(emitter(ctx), x, x.shape[1:], mats)
    except LoweringError as exc:
        raise Unsupported(f"{'bi' if len(x.shape) == 4 else ''}linear interpolation: {exc}") from None


@aten_op("aten.upsample_linear1d.vec", "aten.upsample_bilinear2d.vec")
def upsample_linear_vec(ctx: ConvertContext, args: list[Any]) -> TensorValue:
    """(bi)linear interpolation (x, output_size, align_corners, scale_factors) with float32-exact weights
    (e.g. 2x) -> one Linear per spatial axis with Transposes; other factors refused."""
    factors = list(args[3]) if len(args) > 3 and args[3] is not None else []
    return _linear(ctx, args[0], args[1], bool(args[2]), factors)


@aten_op("aten.upsample_linear1d.default", "aten.upsample_bilinear2d.default")
def upsample_linear(ctx: ConvertContext, args: list[Any]) -> TensorValue:
    """(bi)linear interpolation (x, output_size, align_corners, scales...) -> one Linear per axis."""
    return _linear(ctx, args[0], args[1], bool(args[2]), list(args[3:]))
