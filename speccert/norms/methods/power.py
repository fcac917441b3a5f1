"""`power`: power iteration on A^T A (speccert.norms.krylov); a proven LOWER bound, never an upper one."""

from __future__ import annotations

import time

import torch

from speccert.norms.krylov import power_iteration
from speccert.norms.layer import LinearLayer
from speccert.norms.method import NormContext, NormMethod, register_method
from speccert.norms.result import LowerBound, NormResult


@register_method("power")
class PowerMethod(NormMethod):
    """power iteration on AᵀA through the real op (autograd VJP); final `‖Av‖/‖v‖` recomputed in float64
    minus its rounding error"""

    kinds = ("lower",)
    summary = "power iteration on A^T A (autograd VJP); proven lower bound"

    def applies(self, layer: LinearLayer) -> bool:
        return True

    def memory_bytes(self, layer: LinearLayer, ctx: NormContext) -> int:
        return 8 * 6 * (layer.n_in + layer.n_out)

    def compute(self, layer: LinearLayer, ctx: NormContext) -> list[NormResult]:
        t0 = time.perf_counter()
        dtype = torch.float32 if ctx.device.type == "cuda" else torch.float64
        res = power_iteration(layer, ctx.device, dtype, ctx.max_iter, ctx.tol, ctx.warm_start, ctx.seed)
        return [
            LowerBound(
                res.lower,
                self.name,
                iterations=res.iterations,
                tolerance=ctx.tol,
                seconds=time.perf_counter() - t0,
            )
        ]
