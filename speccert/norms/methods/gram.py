"""`gram`: Gram iteration with a rounding-error chain (speccert.norms.gram_chain) on the weight of a
Linear layer, or on every frequency block of a convolution's torus (speccert.norms.torus).

`auto` runs it only when no other method gave an upper bound: on large blocks it needs many squarings
to get within 1e-3, where the Cholesky certificate of `fft` is tight to 1e-10.
"""

from __future__ import annotations

import time
from functools import partial

import torch

from speccert.norms import torus
from speccert.norms.gram_chain import gram_upper_scalar, max_gram_bound
from speccert.norms.layer import LinearLayer
from speccert.norms.method import AutoRole, NormContext, NormMethod, register_method
from speccert.norms.result import NormResult, UpperBound

STEPS = 12


@register_method("gram")
class GramMethod(NormMethod):
    """Gram iteration ‖G_k‖_F^(1/2^k) with power-of-two rescaling and a rounding-error chain (Delattre et al.
    2023)"""

    kinds = ("upper",)
    summary = "Gram iteration ||G_k||_F^(1/2^k) with rounding-error chain (dense; FFT blocks for convs)"
    applies_to = "Linear; convs via FFT blocks"
    auto = AutoRole("last_resort", fallback=6)

    def applies(self, layer: LinearLayer) -> bool:
        return layer.matrix() is not None or torus.applies(layer.conv())

    def memory_bytes(self, layer: LinearLayer, ctx: NormContext) -> int:
        w = layer.matrix()
        if w is not None:
            m, n = w.shape
            return 8 * (m * n + 2 * min(m, n) ** 2)
        g = layer.conv()
        return 0 if g is None else torus.memory_bytes(g)

    def compute(self, layer: LinearLayer, ctx: NormContext) -> list[NormResult]:
        t0 = time.perf_counter()
        w = layer.matrix()
        if w is not None:
            v = gram_upper_scalar(w.to(device=ctx.device, dtype=torch.float64), STEPS)
            return [UpperBound(v, self.name, iterations=STEPS, seconds=time.perf_counter() - t0)]
        g = layer.conv()
        assert g is not None
        tb = torus.fft_bound(g, ctx.device, block_bound=partial(max_gram_bound, steps=STEPS))
        return [
            UpperBound(
                tb.value,
                self.name,
                iterations=STEPS,
                seconds=time.perf_counter() - t0,
                note="on FFT frequency blocks",
            )
        ]
