"""`nonnegative`: ||A||_2 <= sqrt(||A||_1 ||A||_inf) (Schur / Hoelder), for ops whose matrix is entrywise
non-negative (average pooling in every variant: ceil_mode, count_include_pad off, per-side padding).
Then ||A||_inf = max(A 1) and ||A||_1 = max(A^T 1), two applications of the op. Sums are computed in
float64 and inflated by gamma(n + 2). Tight for pooling (exact for non-overlapping windows).
"""

from __future__ import annotations

import math
import time

import torch

from speccert.ir.ops import AvgPool
from speccert.norms.layer import LinearLayer
from speccert.norms.method import AutoRole, NormContext, NormMethod, register_method
from speccert.norms.result import NormResult, UpperBound, round_up
from speccert.norms.rounding import gamma


@register_method("nonnegative")
class NonnegativeMethod(NormMethod):
    """√(‖A‖₁‖A‖∞) from A·1 and Aᵀ·1"""

    kinds = ("upper",)
    summary = "sqrt(max row sum * max column sum) for non-negative operators (average pooling)"
    applies_to = "AvgPool (any mode)"
    auto = AutoRole("upper", order=40, fallback=5)

    def applies(self, layer: LinearLayer) -> bool:
        return isinstance(layer.op, AvgPool)

    def memory_bytes(self, layer: LinearLayer, ctx: NormContext) -> int:
        return 8 * 4 * (layer.n_in + layer.n_out)

    def compute(self, layer: LinearLayer, ctx: NormContext) -> list[NormResult]:
        t0 = time.perf_counter()
        ones_in = torch.ones((1, *layer.in_shape), dtype=torch.float64, device=ctx.device)
        ones_out = torch.ones((1, *layer.out_shape), dtype=torch.float64, device=ctx.device)
        with torch.no_grad():
            row = float(layer.apply(ones_in).max())
        col = float(layer.vjp(torch.float64, ctx.device)(ones_out).max())
        infl = 1.0 + gamma(layer.n_in + layer.n_out + 2.0)
        value = round_up(math.sqrt(max(row, 0.0) * infl * max(col, 0.0) * infl) * infl)
        return [UpperBound(value, self.name, seconds=time.perf_counter() - t0)]
