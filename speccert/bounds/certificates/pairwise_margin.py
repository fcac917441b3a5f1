"""Last-layer pairwise certificate: r_j = (f_y - f_j) / (||W_y - W_j||_2 * L_u).

When the logits are f = W u(x) + b (a final Linear, possibly after Reshape nodes, which
`fold_linear` keeps as norm-1 nodes feeding it), the margin f_y - f_j = (W_y - W_j) u(x) + const is
Lipschitz with constant ||W_y - W_j||_2 * L_u, L_u the bound on the Linear's input. The bias cancels.
This is never worse than the global certificate up to rounding: ||W_y - W_j|| <= sqrt(2) ||W||_2.
"""

from __future__ import annotations

import torch

from speccert.bounds.certificate import Batch, CertContext, Certificate, NotApplicable, register_certificate
from speccert.ir import Graph, Linear
from speccert.norms.rounding import gamma

Tensor = torch.Tensor


def final_linear(graph: Graph) -> tuple[Tensor, str]:
    """(W in float64, name of W's input node) for a graph whose output node is a Linear."""
    out = graph.node(graph.output)
    if not isinstance(out.op, Linear) or len(out.shape) != 1:
        raise NotApplicable("the logits are not produced by a final Linear layer")
    return out.op.weight.detach().to(torch.float64), out.inputs[0]


def row_difference_norms(w: Tensor) -> Tensor:
    """D[y, j] >= ||W_y - W_j||_2 in float64, rounded up (relative error of an n-term sum of squares)."""
    w = w.to(torch.float64)
    d = torch.stack([(w[i] - w).square().sum(-1).sqrt() for i in range(w.shape[0])])
    return d * (1.0 + 4.0 * gamma(w.shape[1] + 4))


@register_certificate("pairwise")
class PairwiseMargin(Certificate):
    """min_j (f_y - f_j) / (||W_y - W_j|| L_u)."""

    order = 20  # place among the kinds in reports (speccert.bounds.certificate)

    def __init__(self, ctx: CertContext) -> None:
        super().__init__(ctx)
        w, u = final_linear(ctx.bound.folded)
        l_u = ctx.bound.node_upper[u]
        # Rounding of the product: relative 4 gamma(4) covers the float64 multiply.
        self.denominator = (row_difference_norms(w) * l_u * (1.0 + 4.0 * gamma(4))).to(ctx.device)

    def radii(self, batch: Batch) -> Tensor:
        den = self.denominator[batch.y]  # [B, C]
        r = batch.margins / den
        return torch.where(den == 0, torch.where(batch.margins > 0, float("inf"), 0.0).to(r), r)
