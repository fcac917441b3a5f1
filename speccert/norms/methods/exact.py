"""`exact`: the layer's explicit matrix, its Gram matrix and a Cholesky certificate: ||A||_2 to ~1e-10.

For layers too big for a dense SVD but whose smaller side is at most EXACT_MAX_DIM (a 7x7 map with
32 channels: 1568), A is built by applying the layer to the identity basis, H = A^T A (or A A^T) is
formed, and lambda_max(H) <= t is proven by a Cholesky factorisation of t I - H
(speccert.norms.psd.max_eigenvalue: t from an eigenvalue solve, every rounding error bounded). Building
A: each entry is one sum of <= fan_in products, so ||fl(A) - A||_2 <= gamma(fan_in + 2) ||A||_F, added
to the bound. On small feature maps this removes the torus bound's excess over zero padding (up to
~10% on 7x7 maps) at the cost of O(n^3) work on the smaller side.
The same H gives the lower bound: its top eigenvector by inverse iteration with the Cholesky factor of
t I - H at the certified t (one more factorisation, three triangular solve pairs), turned into an input
vector x and checked as ||A x|| / ||x|| in float64 (speccert.norms.krylov.certify_lower), so the bracket
is as tight as the upper bound and auto needs no Lanczos run for these layers.

Larger zero-padded convolutions, opt-in (`exact_max_dim`, `--exact-max-dim`): the Gram matrix on the
smaller side is assembled from the kernel's tap products (speccert.norms.conv_gram: no explicit A),
Lanczos through the conv gives a proven lower bound sigma, and one Cholesky factorisation of
t I - H at t = (sigma (1 + 1e-4))^2 proves the upper bound (the same error analysis,
speccert.norms.psd.bound_after_cholesky). ResNet-18's 7x7 maps (n = 25088): ~70 s and ~10 GB per
layer on 2 CPU cores, bracket ~1e-4.
"""

from __future__ import annotations

import math
import time

import torch

from speccert.norms.conv_gram import conv_gram, gram_side
from speccert.norms.explicit import explicit_matrix
from speccert.norms.krylov import certify_lower, lanczos
from speccert.norms.layer import LinearLayer
from speccert.norms.method import (
    EXACT_MAX_DIM,
    AutoRole,
    NormContext,
    NormMethod,
    Refusal,
    register_method,
)
from speccert.norms.psd import block_norms_with_gram, bound_after_cholesky, passes_in_place, top_eigenvector
from speccert.norms.result import LowerBound, NormResult, UpperBound
from speccert.norms.rounding import gamma, round_up

EXACT_MAX_ENTRIES = 1 << 25
LARGE_BYTES_PER_ENTRY = 17  # large-conv route: the Gram matrix (shifted in place) and its Cholesky factor


@register_method("exact")
class ExactMethod(NormMethod):
    """explicit matrix, its Gram matrix H, and a Cholesky factorisation of tI − H proving λmax(H) ≤ t
    (rounding of every step bounded, `speccert/norms/psd.py`); the lower bound from H's top eigenvector
    (inverse iteration with the same kind of factor); bracket ~1e-9. Opt-in for larger convs: H assembled
    from the kernel's tap products (`conv_gram.py`, no explicit A), t from the Lanczos lower bound × (1 +
    1e-4), one Cholesky; bracket ~1e-4"""

    kinds = ("upper", "lower")
    summary = (
        "explicit matrix, Gram matrix, Cholesky certificate (smaller side <= 2048; exact to ~1e-10); "
        "larger zero-padded convs with --exact-max-dim (tap-assembled Gram matrix)"
    )
    applies_to = (
        "all (smaller side ≤ 2048, ≤ 33.5M entries); zero-padded convs up to `--exact-max-dim` (opt-in)"
    )
    auto = AutoRole("decisive", order=2)

    def applies(self, layer: LinearLayer) -> bool:
        return True

    def memory_bytes(self, layer: LinearLayer, ctx: NormContext) -> int:
        if _large_conv(layer, ctx):
            d, _ = gram_side(layer.conv())  # type: ignore[arg-type]
            return LARGE_BYTES_PER_ENTRY * d * d
        d = min(layer.n_in, layer.n_out)
        return 8 * (layer.n_in * layer.n_out + 4 * d * d)

    def refuse(self, layer: LinearLayer, ctx: NormContext) -> Refusal | None:
        if _large_conv(layer, ctx):
            # --exact-max-dim asks for this much: the larger of it and the memory budget is the limit
            limit = max(ctx.memory_limit, LARGE_BYTES_PER_ENTRY * ctx.exact_max_dim**2)
            return self.over_budget(self.memory_bytes(layer, ctx), limit)
        d = min(layer.n_in, layer.n_out)
        if d > EXACT_MAX_DIM or layer.n_in * layer.n_out > EXACT_MAX_ENTRIES:
            return Refusal(
                "size",
                f"explicit {layer.n_out}x{layer.n_in} matrix too large (limits: side {EXACT_MAX_DIM}, "
                f"{EXACT_MAX_ENTRIES:,} entries)",
            )
        return super().refuse(layer, ctx)

    def compute(self, layer: LinearLayer, ctx: NormContext) -> list[NormResult]:
        if _large_conv(layer, ctx):
            return _large_conv_bracket(layer, ctx, self.name)
        t0 = time.perf_counter()
        a = explicit_matrix(layer, ctx.device)
        fro = float(torch.linalg.norm(a)) * (1.0 + gamma(a.numel() + 2.0))
        build = gamma(layer.n_in + 2.0) * fro
        value, _, h = block_norms_with_gram(a[None])
        upper = UpperBound(round_up(value + build), self.name, seconds=time.perf_counter() - t0)
        # The top singular vector from the same Gram matrix: a lower bound as tight as the upper one.
        t1 = time.perf_counter()
        v = top_eigenvector(h[0], value * value)
        x = v if a.shape[0] >= a.shape[1] else a.T @ v  # A^T A: an input vector; A A^T: map it back
        lower = LowerBound(
            certify_lower(layer, x.reshape(layer.in_shape)), self.name, seconds=time.perf_counter() - t1
        )
        return [upper, lower]


def _large_conv(layer: LinearLayer, ctx: NormContext) -> bool:
    """A zero-padded conv whose smaller Gram side is above the explicit route's limit but within the
    user's `exact_max_dim` (opt-in: an n^3 Cholesky factorisation, minutes on a CPU for n ~ 25000)."""
    g = layer.conv()
    if g is None or g.circular or ctx.exact_max_dim <= EXACT_MAX_DIM or all(k == 1 for k in g.kernel):
        return False  # (1x1 kernels: fantastic4 is exact, W at each kept pixel, in no time)
    d, _ = gram_side(g)
    return EXACT_MAX_DIM < d <= ctx.exact_max_dim or (
        d <= EXACT_MAX_DIM and layer.n_in * layer.n_out > EXACT_MAX_ENTRIES
    )


def _large_conv_bracket(layer: LinearLayer, ctx: NormContext, name: str) -> list[NormResult]:
    """Lanczos through the conv gives a proven lower bound sigma accurate to ~1e-5; each group's Gram
    matrix (speccert.norms.conv_gram, assembled from tap products) is then certified below
    t = (sigma (1 + 1e-4))^2 by one in-place Cholesky factorisation (raised 10x and retried once if it
    fails). No eigenvalue solve of the large matrix is needed."""
    t0 = time.perf_counter()
    g = layer.conv()
    assert g is not None
    low = lanczos(
        layer, ctx.device, torch.float32, 128, 1e-7, on_step=lambda j, k: ctx.tell(f"exact: lanczos {j}/{k}")
    )
    lower = LowerBound(low.lower, name, iterations=low.iterations, seconds=time.perf_counter() - t0)
    worst = 0.0
    for gi in range(g.groups):
        for slack in (1e-4, 1e-3):
            t = (low.lower * (1.0 + slack)) ** 2
            ctx.tell(f"exact: tap Gram matrix, group {gi + 1}/{g.groups}")
            h, h_err = conv_gram(g, gi, ctx.device)
            n = h.shape[0]
            ctx.tell(f"exact: Cholesky {n}x{n}, group {gi + 1}/{g.groups}")
            if passes_in_place(h, t):
                worst = max(worst, bound_after_cholesky(t, n, h_err))
                break
            del h
        else:
            return [lower]  # not certified: auto falls back to the next upper-bound method
    value = round_up(math.sqrt(worst) * (1.0 + 4.0 * 2.0**-53))
    return [
        UpperBound(value, name, seconds=time.perf_counter() - t0, note=f"tap Gram {n}x{n}, Cholesky"),
        lower,
    ]
