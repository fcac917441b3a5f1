"""`deflated`: the torus bound with the input window and the output crop kept (speccert.norms.deflation,
speccert.norms.crop).

The top eigenvectors of every frequency block's Gram matrix (eigenvalues above 0.85 of the largest)
are deflated, one Cholesky factorisation per block proves the rest is below the threshold, and the
deflated part is bounded on the window exactly by a small Hermitian matrix (the blocks' eigenvectors
coupled by the window's Dirichlet kernel), certified by Cholesky; on stride-1 convs the cropped outputs'
energy in the deflated directions is subtracted (a 2k x 2k certificate, speccert.norms.crop). Never
above the torus bound on the same torus (to 1e-6: the eigenvectors come from a single-precision
solve); with every vector deflated it is ||A|| itself. On ResNet-18's layer4 3x3 convs on 7x7 maps
(random init) it gives 1.0078-1.0093 over the Lanczos lower bound (torus: 1.025-1.035), at 4-8x
Fantastic-Four's time there. In `auto` it is the "refine" stage: it runs only on a layer whose
torus / Lanczos bracket is still above `NormContext.refine_above` (1.01; on ResNet-18 224x224 those
three layer4 convs); on every layer with `--method deflated`. Its light budget (`AutoRole.light`,
`NormContext.refine_light`: threshold THETA_LIGHT = 0.98, a few dozen vectors near the peak) is auto's
tier for brackets between `tighten_above` (1.001) and 1.01: ResNet-18's layer2-3 3x3 convs and
layer4.0.conv1, 0.1-0.9% over the lower bound with the torus bound, 0.05-0.65% with it, in about the
torus bound's time. Where the geometry alone predicts the torus bound will miss a tier's target
(`deflation.expected_excess`: maps up to ~8x8 for 3x3 kernels miss 1.01, up to ~28x28 miss 1.001) auto
runs it first at that tier's budget and skips the torus bound (`supersedes`: never above it, to 1e-6,
since it takes the min over the same tori, nor above Fantastic-Four or LMT, which the torus bound
supersedes).
"""

from __future__ import annotations

import time

from speccert.norms import crop, deflation
from speccert.norms.layer import LinearLayer
from speccert.norms.method import AutoRole, NormContext, NormMethod, register_method
from speccert.norms.result import NormResult, UpperBound


@register_method("deflated")
class DeflatedMethod(NormMethod):
    """torus bound with the window and the output crop kept: each frequency block's top eigenvectors
    deflated (rest proven below the threshold by Cholesky), the deflated part bounded on the window by a
    k×k matrix of eigenvector inner products × Dirichlet kernels; on stride 1 minus the cropped outputs'
    energy in those directions (a 2k×2k certificate, one Cholesky factorisation of a completed square);
    min over the tori `fft` tries; a light budget (threshold 0.98 of the top eigenvalue) for `auto`'s
    brackets of 1.001–1.01"""

    kinds = ("upper",)
    summary = "torus bound with the top eigenvectors deflated, the input window and output crop kept"
    applies_to = "Conv 1-d/2-d, zero padding, kernel > 1 (stride, dilation, groups)"
    auto = AutoRole("refine", supersedes=("fft", "fantastic4", "lmt"), light=True)

    def applies(self, layer: LinearLayer) -> bool:
        return deflation.applies(layer.conv())

    def auto_first(self, layer: LinearLayer, ctx: NormContext) -> bool:
        g = layer.conv()
        return g is not None and 1.0 + deflation.expected_excess(g) > ctx.refine_above

    def memory_bytes(self, layer: LinearLayer, ctx: NormContext) -> int:
        g = layer.conv()
        if g is None:
            return 0
        blocks, dim = deflation.cost(g)
        dense = (
            3 * 16 * blocks * dim * dim + 16 * (2 * deflation.MAX_RANK) ** 2 * 4
        )  # blocks; k / 2k certificates
        return dense + crop.memory_bytes(g.as_2d(), deflation.MAX_RANK)

    def compute(self, layer: LinearLayer, ctx: NormContext) -> list[NormResult]:
        t0 = time.perf_counter()
        g = layer.conv()
        assert g is not None
        theta = deflation.THETA_LIGHT if ctx.refine_light else deflation.THETA
        # the tori fft tries (extra ones on small layers only): never above the bound it supersedes
        db = deflation.deflated_bound(
            g, ctx.device, theta, tell=lambda step: ctx.tell(f"deflated: {step}"), extra=2
        )
        torus = "x".join(str(n) for n in db.torus[2 - g.ndim :])
        light = ", light" if ctx.refine_light else ""
        return [
            UpperBound(
                db.value,
                self.name,
                iterations=db.rank,
                seconds=time.perf_counter() - t0,
                note=f"torus {torus}, {db.rank} vectors deflated{light}",
            )
        ]
