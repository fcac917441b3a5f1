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
vector x and checked as ||A x|| / ||x|| in float64 (speccert.norms.power.certify_lower), so the bracket
is as tight as the upper bound and auto needs no Lanczos run for these layers.
"""

from __future__ import annotations

import time

import torch

from speccert.norms.dense import explicit_matrix
from speccert.norms.layer import LinearLayer
from speccert.norms.method import NormContext, NormMethod, register_method
from speccert.norms.power import certify_lower
from speccert.norms.psd import gram_matrices, max_block_norm, top_eigenvector
from speccert.norms.result import LowerBound, NormResult, UpperBound
from speccert.norms.rounding import gamma, round_up

EXACT_MAX_DIM = 2048
EXACT_MAX_ENTRIES = 1 << 25


@register_method
class ExactMethod(NormMethod):
    name = "exact"
    kinds = ("upper", "lower")
    summary = "explicit matrix, Gram matrix, Cholesky certificate (smaller side <= 2048; exact to ~1e-10)"

    def applies(self, layer: LinearLayer) -> bool:
        return True

    def memory_bytes(self, layer: LinearLayer, ctx: NormContext) -> int:
        d = min(layer.n_in, layer.n_out)
        return 8 * (layer.n_in * layer.n_out + 4 * d * d)

    def refuse(self, layer: LinearLayer, ctx: NormContext) -> str | None:
        d = min(layer.n_in, layer.n_out)
        if d > EXACT_MAX_DIM or layer.n_in * layer.n_out > EXACT_MAX_ENTRIES:
            return f"explicit {layer.n_out}x{layer.n_in} matrix too large (limits: side {EXACT_MAX_DIM}, " \
                   f"{EXACT_MAX_ENTRIES:,} entries)"
        return super().refuse(layer, ctx)

    def compute(self, layer: LinearLayer, ctx: NormContext) -> list[NormResult]:
        t0 = time.perf_counter()
        a = explicit_matrix(layer, ctx.device)
        fro = float(torch.linalg.norm(a)) * (1.0 + gamma(a.numel() + 2.0))
        build = gamma(layer.n_in + 2.0) * fro
        value, _ = max_block_norm(a[None])
        upper = UpperBound(round_up(value + build), self.name, seconds=time.perf_counter() - t0)
        # The top singular vector from the same Gram matrix: a lower bound as tight as the upper one.
        t1 = time.perf_counter()
        h = gram_matrices(a[None])[0]
        v = top_eigenvector(h, value * value)
        x = v if a.shape[0] >= a.shape[1] else a.T @ v  # A^T A: an input vector; A A^T: map it back
        lower = LowerBound(certify_lower(layer, x.reshape(layer.in_shape)), self.name,
                           seconds=time.perf_counter() - t1)
        return [upper, lower]
