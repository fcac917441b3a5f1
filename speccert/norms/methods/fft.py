"""`fft`: the torus bound (speccert.norms.torus): a zero-padded conv is a compression of a circular conv,
whose norm is the max over frequencies of its block norms, each certified by a Cholesky factorisation.

In `auto` it runs first on zero-padded convs with kernels larger than 1x1: Fantastic-Four bounds the
symbol sup_w ||K^(w)|| of the (polyphase) kernel over all frequencies, the torus bound is the max over one
frequency grid of the same symbol, so fft <= fantastic4 up to the 1e-10 rounding allowances, and
fantastic4 is not run after it. On 1x1 zero-padded convs fantastic4 is exact (W at each kept pixel), so
fft runs after it and only if no upper bound is known yet.

It also supersedes `lmt` (Tsuzuku et al.: ||T|| sqrt(c), T the kernel as c_out x (c_in taps), c the
windows covering a pixel): with zero padding B(w) = T Phi(w), where Phi(w) puts tap a's phase in
polyphase slot r(a), so ||B(w)|| <= ||T|| ||Phi(w)|| = ||T|| sqrt(most taps in one slot) and taps in one
slot are >= s apart within a span of d(k-1): at most min(k, ceil((d(k-1)+1)/s)) per axis, LMT's c. (On
circular convs lmt runs first, order 20 < 30, so the supersession never skips it there.)
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from speccert.norms import torus
from speccert.norms.layer import LinearLayer
from speccert.norms.method import AutoRole, NormContext, NormMethod, register_method
from speccert.norms.result import NormResult, UpperBound


def _one_by_one(layer: LinearLayer) -> bool:
    g = layer.conv()
    return g is not None and all(k == 1 for k in g.kernel) and not g.circular


@register_method("fft")
class FFTMethod(NormMethod):
    """zero-padded conv = compression of a circular conv on a torus N ≥ n+p, strided → polyphase blocks,
    max over frequencies of block norms, proven by one Cholesky factorisation of tI − H(ω) per block with
    H(ω) assembled from the kernel's tap products (taps²·n² per frequency instead of n³), min over a few
    tori while cheap"""

    kinds = ("upper",)
    summary = "zero-padded conv as a compression of a circular conv; max of frequency-block norms"
    applies_to = "Conv 1-d/2-d (zero or circular padding, stride, dilation, groups), ConvTranspose, AvgPool"
    auto = AutoRole("upper", order=30, supersedes=("fantastic4", "lmt"), fallback=2)

    def applies(self, layer: LinearLayer) -> bool:
        return torus.applies(layer.conv())

    def memory_bytes(self, layer: LinearLayer, ctx: NormContext) -> int:
        g = layer.conv()
        return 0 if g is None else torus.memory_bytes(g)

    def auto_order(self, layer: LinearLayer) -> int:
        g = layer.conv()
        if g is not None and not g.circular and not _one_by_one(layer):
            return 5  # before fantastic4, which it supersedes (module docstring)
        return self.auto.order

    def auto_skip(self, layer: LinearLayer, earlier: Sequence[NormResult]) -> bool:
        return _one_by_one(layer) and any(isinstance(r, UpperBound) for r in earlier)

    def compute(self, layer: LinearLayer, ctx: NormContext) -> list[NormResult]:
        t0 = time.perf_counter()
        g = layer.conv()
        assert g is not None
        tb = torus.fft_bound(g, ctx.device)
        return [
            UpperBound(
                tb.value,
                self.name,
                iterations=tb.blocks,
                seconds=time.perf_counter() - t0,
                note=f"torus {torus.torus_label(tb, g.ndim)}",
            )
        ]
