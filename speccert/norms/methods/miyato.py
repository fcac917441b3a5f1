"""`miyato`: ||T||_2 of the kernel reshaped to [c_out, c_in*h*w], as in spectral normalisation
(Miyato et al. 2018). A HEURISTIC for convolutions: the conv's true norm can exceed it by up to
sqrt(h w) (the tests show a conv where it is below the truth). Returned as an `Estimate`, which the
type system keeps out of certificates. For a Linear layer it is the weight's norm (exact there).
"""

from __future__ import annotations

import time

import torch

from speccert.norms.kernel_shapes import group_kernels
from speccert.norms.layer import LinearLayer
from speccert.norms.method import NormContext, NormMethod, register_method
from speccert.norms.result import Estimate, NormResult


@register_method("miyato")
class MiyatoMethod(NormMethod):
    """‖T‖ (spectral normalisation); not a bound for convs"""

    kinds = ("estimate",)
    applies_to = "convs, Linear"
    summary = "reshaped-kernel norm ||T|| (spectral normalisation); a heuristic, not a bound"

    def applies(self, layer: LinearLayer) -> bool:
        return layer.conv() is not None or layer.matrix() is not None

    def compute(self, layer: LinearLayer, ctx: NormContext) -> list[NormResult]:
        t0 = time.perf_counter()
        g = layer.conv()
        mats = [k.reshape(k.shape[0], -1) for k in group_kernels(g)] if g is not None else [layer.matrix()]
        v = max(float(torch.linalg.matrix_norm(m.to(torch.float64), 2)) for m in mats if m is not None)
        return [Estimate(v, self.name, seconds=time.perf_counter() - t0, note="heuristic, not a bound")]
