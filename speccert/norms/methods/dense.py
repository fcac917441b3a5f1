"""`dense`: the explicit matrix and its float64 SVD plus a rounding margin (speccert.norms.explicit)."""

from __future__ import annotations

import time

from speccert.norms.explicit import dense_bracket, explicit_matrix
from speccert.norms.layer import LinearLayer
from speccert.norms.method import AutoRole, NormContext, NormMethod, Refusal, register_method
from speccert.norms.result import LowerBound, NormResult, UpperBound


@register_method("dense")
class DenseMethod(NormMethod):
    """explicit matrix (op applied to the identity basis), float64 SVD + backward-error margin (Weyl)"""

    kinds = ("upper", "lower")
    summary = "explicit matrix + float64 SVD + rounding margin (small layers; exact to ~1e-12)"
    applies_to = "all (≤ 1M matrix entries)"
    auto = AutoRole("decisive", order=1, fallback=1)

    def applies(self, layer: LinearLayer) -> bool:
        return True

    def memory_bytes(self, layer: LinearLayer, ctx: NormContext) -> int:
        # The matrix, its SVD factors (U is m x k, Vh k x n) and the workspace: about 4 copies.
        return 4 * 8 * layer.n_in * layer.n_out

    def refuse(self, layer: LinearLayer, ctx: NormContext) -> Refusal | None:
        entries = layer.n_in * layer.n_out
        if entries > ctx.dense_max_entries:
            return Refusal(
                "size", f"dense matrix {layer.n_out}x{layer.n_in} exceeds {ctx.dense_max_entries:,} entries"
            )
        return super().refuse(layer, ctx)

    def compute(self, layer: LinearLayer, ctx: NormContext) -> list[NormResult]:
        t0 = time.perf_counter()
        a = explicit_matrix(layer, ctx.device)
        lower, upper = dense_bracket(a)
        dt = time.perf_counter() - t0
        return [UpperBound(upper, self.name, seconds=dt), LowerBound(lower, self.name, seconds=dt)]
