"""`lmt`: the stride-aware bound of Tsuzuku, Sato & Sugiyama (2018, Lipschitz-margin training).

Each output pixel is T applied to the input window it reads (T = kernel as [c_out, c_in*h*w]), so
||A x||^2 <= ||T||^2 sum_i ||window_i(x)||^2 <= ||T||^2 c ||x||^2, where c is the largest number of windows
covering one input pixel: per axis at most min(k, ceil((d(k-1)+1)/s)) (each tap hits a pixel from at
most one output; windows start s apart). Circular padding with repeated output positions multiplies
by that multiplicity. Groups: max over groups. ||T|| by Gram iteration: proven.
"""

from __future__ import annotations

import math
import time

from speccert.norms.gram_chain import gram_upper_scalar
from speccert.norms.kernel_shapes import group_kernels
from speccert.norms.layer import ConvGeometry, LinearLayer
from speccert.norms.method import AutoRole, NormContext, NormMethod, register_method
from speccert.norms.result import NormResult, UpperBound, round_up


def overlap_count(g: ConvGeometry) -> int:
    count = 1
    for k, d, s, n, o in zip(g.kernel, g.dilation, g.stride, g.size, g.out_size, strict=True):
        c = min(k, -(-(d * (k - 1) + 1) // s))
        if g.circular:
            c *= max(1, -(-o * s // n))  # window starts wrap around Z_n this many times at most
        count *= c
    return count


@register_method("lmt")
class LMTMethod(NormMethod):
    """‖T‖·√(windows covering a pixel) (Tsuzuku et al. 2018)"""

    kinds = ("upper",)
    summary = "Tsuzuku et al.: ||T|| * sqrt(max windows covering a pixel) (stride-aware)"
    applies_to = "convs"
    auto = AutoRole("upper", order=20, fallback=4)

    def applies(self, layer: LinearLayer) -> bool:
        g = layer.conv()
        return g is not None and g.ndim in (1, 2)

    def compute(self, layer: LinearLayer, ctx: NormContext) -> list[NormResult]:
        t0 = time.perf_counter()
        g = layer.conv()
        assert g is not None
        t = max(gram_upper_scalar(k.reshape(k.shape[0], -1), 10) for k in group_kernels(g))
        value = round_up(t * math.sqrt(overlap_count(g)))
        return [UpperBound(value, self.name, seconds=time.perf_counter() - t0)]
