"""Composite operators written as short chains of IR ops, shared by the ONNX and ATen importers.

Each lowering takes the input's shape without the batch axis and `emit(op, value) -> value`, the
importer's way to append one IR node; it returns the final value. Every chain computes the operator
exactly (the faithfulness check at load compares it with onnxruntime / torch) and is bounded by the
rules of its parts:

- scaled ELU, post * elu(pre * x; alpha) with pre > 0: SELU (pre 1, alpha 1.6733, post 1.0507), CELU(a)
  = a * elu(x / a; 1) (smooth: ELU with alpha 1 has curvature 1), torch's elu(x, alpha, scale,
  input_scale) = (scale / input_scale) * elu(input_scale * x; alpha * input_scale); the Affines keep
  float64 constants, so the slope bound post * pre * max(1, |alpha|) is the function's own sup |f'|.
- clip(x, a, b) = a + clip(x - a; b - a):      Affine(1, -a), Activation clip(b - a), Affine(1, a)
  max(x, c) = c + relu(x - c);  min(x, c) = c - relu(c - x)        (all 1-Lipschitz, Affines of norm 1)
- mean over axes: Transpose (reduced axes last), Reshape [K, R], GlobalAvgPool (norm 1/sqrt(R)),
  Reshape to the result; a mean over all trailing spatial axes is a single GlobalAvgPool.
- layer norm over the last k axes: Standardize(k, eps) (1/sqrt(eps)-Lipschitz), Affine(gamma, beta).
- group norm: Reshape [G, rest], Standardize(1, eps), Reshape back, per-channel Affine(gamma, beta).
- x - mean(x over axes, keepdims) (deel-torchlip's LayerCentering): one Center(axes) (an orthogonal
  projection, factor 1) instead of Add(x, -broadcast(mean)) (factor 2): `centering_axes` recognises the
  mean's chain.
- nearest-neighbour upsampling by integer factors s (output index i copies input index i // s on every
  spatial axis): ConvTranspose with a ones kernel [C, 1, *s], stride s, groups C (each pixel copied into
  an s_1 x ... block: A^T A = prod(s) I, norm sqrt(prod s), the constants exact in any dtype).
- linear (bilinear) resampling: separable, y = A_1 x A_2^T per channel with A_a [out, in] per spatial axis,
  each row two weights (1 - w, w) on neighbouring inputs: a Linear on the last axis per axis, the other
  brought last by Transposes (the operator is A_1 (x) A_2 per channel: the composed bound, the product
  of the Linears' norms, is its exact norm). Both lowerings mark their layers `fixed` (fine-tuning
  never trains an interpolation). The weights must be float32 numbers (they are for factors
  that are powers of two, 0.25 / 0.75 at 2x): the certified operator is the file's, not a rounded one.
- max (min) over one axis of length n: n = 2, Extremum of the two Slices (the pair pattern of
  speccert.importers.sorting then fuses a MaxMin into a Sort); n > 2, Sort(descending) and the Slice of
  its first entry, 1-Lipschitz (|max x - max y| <= ||x - y||_inf per fibre); then a Reshape without the
  axis unless keepdims.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from fractions import Fraction
from typing import TypeVar

import torch

from speccert.ir.graph import Node
from speccert.ir.ops import (
    Activation,
    Affine,
    ConvTranspose,
    Extremum,
    GlobalAvgPool,
    Linear,
    Op,
    Reshape,
    Slice,
    Sort,
    Standardize,
    Transpose,
)

V = TypeVar("V")
Emit = Callable[[Op, V], V]
Emit2 = Callable[[Op, V, V], V]


class LoweringError(ValueError):
    """The operator's arguments are outside what the chain computes (the message says why)."""


def _affine(scale: float | torch.Tensor, shift: float | torch.Tensor) -> Affine:
    s = torch.as_tensor(scale, dtype=torch.float32)
    t = torch.as_tensor(shift, dtype=torch.float32)
    return Affine(scale=s.clone(), shift=t.clone())


def scaled_elu(emit: Emit[V], x: V, pre: float, alpha: float, post: float) -> V:
    """post * elu(pre * x; alpha) for pre > 0 (module docstring); float64 scales, no node for a 1."""
    if not (pre > 0 and math.isfinite(pre) and math.isfinite(alpha) and math.isfinite(post)):
        raise LoweringError(f"scaled ELU with input scale {pre:g}, alpha {alpha:g}, scale {post:g}")

    def scale(c: float) -> Affine:  # float64: 1 / alpha is not a float32 number (see ir.ops.Affine)
        return Affine(scale=torch.tensor(c, dtype=torch.float64), shift=torch.zeros((), dtype=torch.float64))

    y = x if pre == 1.0 else emit(scale(pre), x)
    y = emit(Activation("elu", alpha), y)
    return y if post == 1.0 else emit(scale(post), y)


def clip(emit: Emit[V], x: V, low: float | None, high: float | None) -> V:
    """clamp(x, low, high) for scalar bounds (None = unbounded on that side)."""
    if low is not None and high is not None:
        if low > high:
            raise LoweringError(f"clip with min {low:g} > max {high:g}")
        y = emit(_affine(1.0, -low), x) if low != 0 else x
        y = emit(Activation("clip", float(high - low)), y)
        return emit(_affine(1.0, low), y) if low != 0 else y
    if low is not None:
        return max_const(emit, x, torch.tensor(float(low)))
    if high is not None:
        return min_const(emit, x, torch.tensor(float(high)))
    return x


def max_const(emit: Emit[V], x: V, c: torch.Tensor) -> V:
    """max(x, c) = c + relu(x - c), c a constant broadcastable to x (checked by the caller)."""
    y = emit(_affine(1.0, -c), x)
    y = emit(Activation("relu"), y)
    return emit(_affine(1.0, c), y)


def min_const(emit: Emit[V], x: V, c: torch.Tensor) -> V:
    """min(x, c) = c - relu(c - x)."""
    y = emit(_affine(-1.0, c), x)
    y = emit(Activation("relu"), y)
    return emit(_affine(-1.0, c), y)


def hardsigmoid(emit: Emit[V], x: V, alpha: float, beta: float) -> V:
    """max(0, min(1, alpha x + beta)) = clip(alpha x + beta; 1)."""
    y = emit(_affine(alpha, beta), x)
    return emit(Activation("clip", 1.0), y)


def mean(emit: Emit[V], x: V, shape: tuple[int, ...], axes: list[int], keepdims: bool) -> V:
    """Mean over non-batch `axes` (0 = first axis after the batch) of a tensor of `shape`."""
    axes = sorted({a % len(shape) for a in axes}) if shape else []
    out_keep = tuple(1 if i in axes else d for i, d in enumerate(shape))
    out = out_keep if keepdims else tuple(d for i, d in enumerate(shape) if i not in axes)
    reduced = math.prod(shape[i] for i in axes)
    if reduced == 1:
        return x if out == shape else emit(Reshape(out), x)
    if len(shape) >= 2 and axes == list(range(1, len(shape))):
        y = emit(GlobalAvgPool(), x)  # [C, 1, ..., 1]
        return y if out == out_keep else emit(Reshape(out), y)
    kept = [i for i in range(len(shape)) if i not in axes]
    perm = tuple(kept + axes)
    if perm != tuple(range(len(shape))):
        x = emit(Transpose(perm), x)
    two_d = (math.prod(shape[i] for i in kept), reduced)
    if tuple(shape[i] for i in perm) != two_d:
        x = emit(Reshape(two_d), x)
    x = emit(GlobalAvgPool(), x)
    after = (math.prod(shape[i] for i in kept), 1)
    return x if out == after else emit(Reshape(out), x)


def layer_norm(
    emit: Emit[V],
    x: V,
    shape: tuple[int, ...],
    axes: int,
    eps: float,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
) -> V:
    """Layer norm over the last `axes` axes with optional elementwise weight and bias (shape of
    those axes)."""
    if not 1 <= axes <= len(shape):
        raise LoweringError(f"layer norm over the last {axes} axes of a {len(shape)}-axis tensor")
    y = emit(Standardize(axes=axes, eps=float(eps)), x)
    return _scale_shift(emit, y, weight, bias, shape[len(shape) - axes :])


def group_norm(
    emit: Emit[V],
    x: V,
    shape: tuple[int, ...],
    groups: int,
    eps: float,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
) -> V:
    """Group norm over channel axis 0 of `shape` ([C, *spatial]) with per-channel weight and bias."""
    c = shape[0]
    if groups <= 0 or c % groups:
        raise LoweringError(f"group norm with {groups} groups over {c} channels")
    grouped = (groups, math.prod(shape) // groups)
    same = tuple(shape) == grouped  # already [groups, rest]: no Reshape either way
    y = x if same else emit(Reshape(grouped), x)
    y = emit(Standardize(axes=1, eps=float(eps)), y)
    y = y if same else emit(Reshape(tuple(shape)), y)
    view = (c,) + (1,) * (len(shape) - 1)
    w = None if weight is None else weight.reshape(view)
    b = None if bias is None else bias.reshape(view)
    return _scale_shift(emit, y, w, b, view)


def _scale_shift(
    emit: Emit[V], y: V, weight: torch.Tensor | None, bias: torch.Tensor | None, shape: tuple[int, ...]
) -> V:
    if weight is None and bias is None:
        return y
    w = torch.ones(shape) if weight is None else weight.detach().reshape(shape)
    b = torch.zeros(shape) if bias is None else bias.detach().reshape(shape)
    if bool((w == 1).all()) and not bool(b.any()):
        return y
    return emit(Affine(scale=w.float().clone(), shift=b.float().clone()), y)


def reduce_extremum(
    emit: Emit[V], emit2: Emit2[V], x: V, shape: tuple[int, ...], axis: int, is_max: bool, keepdims: bool
) -> V:
    """max (is_max) or min of `x` (of `shape`) over non-batch `axis` (0 = first axis after the batch)."""
    n = shape[axis]
    if n == 2:
        a = emit(Slice(axis=axis, start=0, stop=1), x)
        b = emit(Slice(axis=axis, start=1, stop=2), x)
        y = emit2(Extremum(is_max=is_max), a, b)
    elif n > 2:
        y = emit(Sort(axis=axis, descending=is_max), x)
        y = emit(Slice(axis=axis, start=0, stop=1), y)
    else:
        y = x
    if keepdims:
        return y
    return emit(Reshape(tuple(d for i, d in enumerate(shape) if i != axis)), y)


_MEAN_CHAIN = (Reshape, Transpose, GlobalAvgPool)  # what `mean` above emits


def centering_axes(
    nodes: Sequence[Node], a: str, b: str, a_shape: tuple[int, ...], b_shape: tuple[int, ...]
) -> tuple[int, ...] | None:
    """The axes over which `a - b` centres `a`, or None: b must be mean(a over those axes, keepdims),
    i.e. of a's rank with 1 where it differs from a's shape, computed from a by a chain of the nodes
    `mean` emits (Reshape / Transpose / GlobalAvgPool, at least one pool). The chain is linear, as is
    the mean; the two are compared on a random float64 input (two different linear maps agree on it
    with probability 0), and the load's faithfulness check compares the result with the file again."""
    if len(a_shape) != len(b_shape):
        return None
    axes = tuple(i for i, (m, n) in enumerate(zip(a_shape, b_shape, strict=True)) if m != n)
    if not axes or any(b_shape[i] != 1 for i in axes):
        return None
    by_name = {n.name: n for n in nodes}
    chain: list[Op] = []
    cur = b
    while cur != a:
        node = by_name.get(cur)
        if node is None or not isinstance(node.op, _MEAN_CHAIN) or len(chain) > 8:
            return None
        chain.append(node.op)
        cur = node.inputs[0]
    if not any(isinstance(op, GlobalAvgPool) for op in chain):
        return None
    x = torch.randn((2, *a_shape), dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y = x
    with torch.no_grad():
        for op in reversed(chain):
            y = op.forward(y)
    want = x.mean(dim=tuple(i + 1 for i in axes), keepdim=True)
    if y.shape != want.shape or not torch.allclose(y, want, rtol=1e-12, atol=1e-12):
        return None
    return axes


def nearest_upsample(emit: Emit[V], x: V, shape: tuple[int, ...], maps: Sequence[Sequence[int]]) -> V:
    """Nearest-neighbour resampling of the 1 or 2 spatial axes of `shape` ([C, *spatial]): `maps[a][i]` is
    the input index that output index i copies on spatial axis a. Exactly a ConvTranspose when every
    map is i -> i // s for a whole s (the module docstring); anything else raises LoweringError saying
    which axis copies what (a resampling that skips or repeats pixels unevenly has no such form)."""
    spatial = tuple(shape[1:])
    if len(maps) != len(spatial) or len(spatial) not in (1, 2):
        raise LoweringError(f"nearest resampling of {len(spatial)} spatial axes (1 or 2 are supported)")
    factors = []
    for axis, (n, m) in enumerate(zip(spatial, maps, strict=True)):
        s = len(m) // n if n else 0
        if s < 1 or s * n != len(m) or any(int(j) != i // s for i, j in enumerate(m)):
            head = ", ".join(str(int(j)) for j in list(m)[:8]) + (", ..." if len(m) > 8 else "")
            raise LoweringError(
                f"spatial axis {axis}: {n} -> {len(m)} copies input indices [{head}], not a whole-number "
                "upsampling (each index repeated s times in order)"
            )
        factors.append(s)
    if all(s == 1 for s in factors):
        return x
    c = shape[0]
    ones = torch.ones((c, 1, *factors), dtype=torch.float32)
    k = len(factors)
    return emit(ConvTranspose(ones, None, tuple(factors), (0,) * k, (0,) * k, (1,) * k, c, fixed=True), x)


def sources(n: int, m: int, scale: Fraction, transform: str) -> list[Fraction]:
    """The input coordinate of each of the m output indices (input length n, scale m / n or as given),
    exactly, by ONNX Resize's coordinate transformation `transform` (torch's interpolations are two of
    them: align_corners, and half_pixel for align_corners=False)."""
    half = Fraction(1, 2)
    out = []
    for i in range(m):
        if transform == "asymmetric":
            x = i / scale
        elif transform == "tf_half_pixel_for_nn":
            x = (i + half) / scale
        elif transform == "align_corners":
            x = Fraction(0) if m == 1 else Fraction(i * (n - 1), m - 1)
        elif transform == "pytorch_half_pixel" and m == 1:
            x = Fraction(0)
        else:  # half_pixel, pytorch_half_pixel, and half_pixel_symmetric's adjustment of the length
            symmetric = transform == "half_pixel_symmetric"
            offset = Fraction(n, 2) * (1 - Fraction(m) / (n * scale)) if symmetric else Fraction(0)
            x = offset + (i + half) / scale - half
        out.append(x)
    return out


def interpolation_matrix(n: int, sources: Sequence[Fraction]) -> torch.Tensor:
    """[len(sources), n]: row i interpolates linearly at input coordinate sources[i] (clamped to
    [0, n - 1]): weight 1 - w on floor, w on the next index. Exact rationals; LoweringError when an
    entry is not a float32 number (it would be rounded, and the certificate would be of another map)."""
    a = torch.zeros((len(sources), n), dtype=torch.float64)
    for i, src in enumerate(sources):
        x = min(max(src, Fraction(0)), Fraction(n - 1))
        lo = math.floor(x)
        w = x - lo
        for j, v in ((lo, 1 - w), (min(lo + 1, n - 1), w)):
            if v and float(torch.tensor(float(v), dtype=torch.float32)) != v:
                raise LoweringError(
                    f"interpolation weight {v} (output {i}) is not a float32 number: only factors whose "
                    "weights are exact (e.g. powers of two) are supported"
                )
            a[i, j] += float(v)
    return a.to(torch.float32)


def linear_resample(emit: Emit[V], x: V, shape: tuple[int, ...], mats: Sequence[torch.Tensor]) -> V:
    """Separable linear resampling of the 1 or 2 spatial axes of `shape` ([C, *spatial]) by the per-axis
    matrices `mats` ([out, in] each, from `interpolation_matrix`): the module docstring's chain."""
    spatial = tuple(shape[1:])
    if len(mats) != len(spatial) or len(spatial) not in (1, 2):
        raise LoweringError(f"linear resampling of {len(spatial)} spatial axes (1 or 2 are supported)")

    def identity(a: torch.Tensor) -> bool:
        return a.shape[0] == a.shape[1] and bool((a == torch.eye(a.shape[0])).all())

    last = mats[-1]
    y = x if identity(last) else emit(Linear(last.clone(), fixed=True), x)
    if len(mats) == 2 and not identity(mats[0]):
        y = emit(Transpose((0, 2, 1)), y)
        y = emit(Linear(mats[0].clone(), fixed=True), y)
        y = emit(Transpose((0, 2, 1)), y)
    return y
