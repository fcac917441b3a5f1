"""`closed_form`: exact norms of the structurally simple linear ops.

- BatchNorm (not folded) and Affine are diagonal: ||A|| = max |scale| (scale = gamma / sqrt(var + eps)).
- GlobalAvgPool maps each channel to its mean: A = (1/HW) 1^T per channel, ||A|| = 1 / sqrt(HW).
- Pad (zero), Reshape, Transpose are isometries or coordinate restrictions: ||A|| = 1 (0 if nothing
  survives a negative pad).
Values are computed in float64 and rounded up (upper) / down (lower).
"""

from __future__ import annotations

import math
import time

import torch

from speccert.ir.ops import GlobalAvgPool, Pad, Reshape, Transpose
from speccert.norms.layer import LinearLayer
from speccert.norms.method import AutoRole, NormContext, NormMethod, register_method
from speccert.norms.result import LowerBound, NormResult, UpperBound, round_down, round_up


def closed_form_value(layer: LinearLayer) -> float | None:
    diag = layer.diagonal()
    if diag is not None:
        return float(diag.abs().max()) if diag.numel() else 0.0
    op = layer.op
    if isinstance(op, GlobalAvgPool):
        return 1.0 / math.sqrt(math.prod(layer.in_shape[1:]))
    if isinstance(op, (Reshape, Transpose)):
        return 1.0
    if isinstance(op, Pad):
        return 1.0 if layer.n_out > 0 and layer.n_in > 0 else 0.0
    return None


@register_method("closed_form")
class ClosedFormMethod(NormMethod):
    """exact formulas in float64, 16 ulps of rounding allowance on each side"""

    kinds = ("upper", "lower")
    summary = "exact formulas: diagonal ops max|scale|, GlobalAvgPool 1/sqrt(HW), Pad/Reshape/Transpose 1"
    applies_to = "BatchNorm/Affine (max|scale|), GlobalAvgPool (1/√HW), Pad/Reshape/Transpose (1)"
    auto = AutoRole("decisive", order=0, fallback=0)

    def applies(self, layer: LinearLayer) -> bool:
        if isinstance(layer.op, Pad):
            # A crop by a negative pad is a restriction (norm 1 too), but keep it simple and exact.
            return all(b >= 0 and e >= 0 for b, e in layer.op.pads)
        return closed_form_value(layer) is not None

    def compute(self, layer: LinearLayer, ctx: NormContext) -> list[NormResult]:
        t0 = time.perf_counter()
        with torch.no_grad():
            v = closed_form_value(layer)
        assert v is not None
        dt = time.perf_counter() - t0
        # Each value is one or two correctly rounded float64 operations away from exact: 16 ulps cover it.
        return [
            UpperBound(round_up(v, 16), self.name, seconds=dt),
            LowerBound(round_down(v, 16), self.name, seconds=dt),
        ]
