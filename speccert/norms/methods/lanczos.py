"""`lanczos`: Lanczos on A^T A (speccert.norms.krylov); a proven LOWER bound, never an upper one.

`auto`'s lower bound: the iteration runs in float32 from a random start and stops early once the
bracket is tight against the best upper bound already found (`NormContext.upper_hint`).
"""

from __future__ import annotations

import time

import torch

from speccert.norms.krylov import lanczos
from speccert.norms.layer import LinearLayer
from speccert.norms.method import AutoRole, NormContext, NormMethod, register_method
from speccert.norms.result import LowerBound, NormResult


@register_method("lanczos")
class LanczosMethod(NormMethod):
    """Lanczos on AᵀA with full re-orthogonalisation (float32 iteration, one forward + one backward pass
    per step); the Ritz vector's `‖Av‖/‖v‖` recomputed in float64 minus its rounding error; stops when the
    Ritz value stalls (< 1% of the bracket's gap over 4 steps) or is within 5e-5 of the upper bound; the
    three-term recurrence is removed before full re-orthogonalisation, so a second Gram-Schmidt pass runs
    only on real cancellation"""

    kinds = ("lower",)
    summary = "Lanczos on A^T A (float32 iteration, float64 check of the Ritz vector); proven lower bound"
    auto = AutoRole("lower")

    def applies(self, layer: LinearLayer) -> bool:
        return True

    def memory_bytes(self, layer: LinearLayer, ctx: NormContext) -> int:
        return 4 * (min(ctx.max_iter, 128) + 8) * layer.n_in + 8 * 6 * (layer.n_in + layer.n_out)

    def compute(self, layer: LinearLayer, ctx: NormContext) -> list[NormResult]:
        t0 = time.perf_counter()
        res = lanczos(
            layer,
            ctx.device,
            torch.float32,
            min(ctx.max_iter, 128),
            ctx.tol,
            ctx.warm_start,
            ctx.seed,
            ctx.upper_hint,
            lambda step, steps: ctx.tell(f"lanczos {step}/{steps}"),
        )
        return [
            LowerBound(
                res.lower,
                self.name,
                iterations=res.iterations,
                tolerance=ctx.tol,
                seconds=time.perf_counter() - t0,
            )
        ]
