"""`fantastic4`: Singla & Feizi (2021), ||conv|| <= sqrt(h w) min(||R||, ||S||, ||T||, ||U||).

R, S, T, U are the four reshapings of the kernel (speccert.norms.kernel_shapes). The bound holds for a
stride-1 zero-padded conv; a strided one keeps a subset of its rows (a compression), and a dilated
stride-1 conv splits exactly into d1*d2 independent undilated convs over residue classes, so the
undilated kernel's bound covers any stride, dilation and per-side zero padding. We also apply it to
the polyphase kernel (a strided conv as a stride-1 conv over polyphase components) and keep the
smaller. Groups: block-diagonal, max over groups. Each matrix norm is bounded by Gram iteration
(speccert.norms.gram_chain), so the result is proven. Circular padding: only without dilation and with
distinct output positions (then a compression of the circular conv on Z_n, where the bound holds).
"""

from __future__ import annotations

import math
import time

import torch

from speccert.norms.gram_chain import gram_upper_scalar
from speccert.norms.kernel_shapes import group_kernels, polyphase_kernel, reshapings, undilated_ok
from speccert.norms.layer import LinearLayer
from speccert.norms.method import AutoRole, NormContext, NormMethod, register_method
from speccert.norms.result import NormResult, UpperBound, round_up

Tensor = torch.Tensor


def fantastic4_kernel(k: Tensor) -> float:
    """sqrt(h w) * min over the four reshapings of a proven bound on their 2-norms (k: [c_out, c_in, h, w])."""
    best = min(gram_upper_scalar(m, 10) for m in reshapings(k).values())
    return round_up(math.sqrt(k.shape[2] * k.shape[3]) * best)


@register_method("fantastic4")
class Fantastic4Method(NormMethod):
    """√(hw)·min(‖R‖,‖S‖,‖T‖,‖U‖) (Singla & Feizi 2021), also on the polyphase kernel"""

    kinds = ("upper",)
    summary = "Singla & Feizi: sqrt(hw) * min of four reshaped-kernel norms (also on the polyphase kernel)"
    applies_to = "convs"
    auto = AutoRole("upper", order=10, fallback=3)

    def applies(self, layer: LinearLayer) -> bool:
        g = layer.conv()
        return g is not None and g.ndim in (1, 2) and undilated_ok(g)

    def memory_bytes(self, layer: LinearLayer, ctx: NormContext) -> int:
        g = layer.conv()
        return 0 if g is None else 8 * 6 * g.weight.numel() * max(1, math.prod(g.stride))

    def compute(self, layer: LinearLayer, ctx: NormContext) -> list[NormResult]:
        t0 = time.perf_counter()
        g = layer.conv()
        assert g is not None
        value = 0.0
        for k in group_kernels(g):
            v = fantastic4_kernel(k)
            if not g.circular and any(s > 1 for s in g.stride):
                v = min(v, fantastic4_kernel(polyphase_kernel(k, g)))
            value = max(value, v)
        return [UpperBound(value, self.name, seconds=time.perf_counter() - t0)]
