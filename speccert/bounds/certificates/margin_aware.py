"""Margin-aware certificate: r_j = (f_y - f_j) / (||(e_y - e_j)^T T|| * L_u).

The logits are f = T u(x) + b with T the affine tail after the last nonlinearity u (every Linear,
Conv, BatchNorm, Affine, average pooling, Pad, Reshape, Transpose after it, merged exactly:
speccert.bounds.linear_tail). The margin f_y - f_j = (T_y - T_j) u(x) + const is Lipschitz with
constant ||T_y - T_j||_2 * L_u, L_u the composed bound of u (1 when u is the input: then the radius is
the exact distance to the decision boundary of an affine network). It generalises the pairwise
certificate (T = the final Linear) and never loses to it: ||T_y - T_j|| <= ||W_y - W_j|| prod ||A_k||.
A classifier whose last layer is a conv with a 1x1 output is covered the same way.

Floating point: with T^ the computed rows (float64, one reverse pass), |T^ - T| <= gamma(K) |T|_abs
componentwise (|T|_abs the rows of |A_m| ... |A_1|, K the inner dimension of the chain), so
    ||T_y - T_j|| <= ||T^_y - T^_j|| (1 + gamma(n + 4)) + gamma(K) (1 + gamma(K)) (|| |T|_y || + || |T|_j ||),
norms of n-term sums rounded up; the product with L_u is rounded up by 4 gamma(4). A tail kept factored
behind a global average pool over P pixels (`TailRows.pixels`) has every such norm divided by sqrt(P),
exactly (speccert.bounds.linear_tail); the computed factor is raised by 8u to stay above it (the
square root, the division and the two products: four roundings of <= u each).
"""

from __future__ import annotations

import math

import torch

from speccert.bounds.certificate import Batch, CertContext, Certificate, register_certificate
from speccert.bounds.linear_tail import TailRows, tail_rows
from speccert.bounds.row_distances import distances
from speccert.norms.rounding import U, gamma

Tensor = torch.Tensor


def pair_norms(tail: TailRows) -> Tensor:
    """D[y, j] >= ||T_y - T_j||_2 (exact rows of the tail, rounding of the computed rows bounded)."""
    rows, n = tail.rows, tail.rows.shape[1]
    g_n = gamma(n + 4)
    g_k = gamma(tail.inner)
    abs_norms = tail.abs_norms * (1.0 + g_n) * (1.0 + g_k)
    diff = distances(rows)  # chunked: bounded memory (speccert.bounds.row_distances)
    err = g_k * (abs_norms[:, None] + abs_norms[None, :])
    out: Tensor = (diff * (1.0 + g_n) + err) * (1.0 + 4.0 * gamma(4))
    if tail.pixels > 1:  # true rows: rows / P over P pixels, norms / sqrt(P); 4 roundings, each <= u
        out = out * ((1.0 / math.sqrt(tail.pixels)) * (1.0 + 8.0 * U))
    return out


@register_certificate("margin")
class MarginAware(Certificate):
    """min_j (f_y - f_j) / (||T_y - T_j|| L_u), T the merged affine tail."""

    order = 40  # place among the kinds in reports (speccert.bounds.certificate)

    def __init__(self, ctx: CertContext) -> None:
        super().__init__(ctx)
        tail = tail_rows(ctx.bound.folded)
        l_u = ctx.bound.node_upper[tail.start]
        self.tail_start = tail.start
        self.denominator = (pair_norms(tail) * l_u * (1.0 + 4.0 * gamma(4))).to(ctx.device)

    def radii(self, batch: Batch) -> Tensor:
        den = self.denominator[batch.y]  # [B, C]
        r = batch.margins / den
        return torch.where(den == 0, torch.where(batch.margins > 0, float("inf"), 0.0).to(r), r)
