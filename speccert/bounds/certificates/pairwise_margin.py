"""Last-layer pairwise certificate: r_j = (f_y - f_j) / (||W_y - W_j||_2 * L_u).

When the logits are f = W u(x) + b (a final Linear, possibly after Reshape nodes, which
`fold_linear` keeps as norm-1 nodes feeding it), the margin f_y - f_j = (W_y - W_j) u(x) + const is
Lipschitz with constant ||W_y - W_j||_2 * L_u, L_u the bound on the Linear's input. The bias cancels.
This is never worse than the global certificate up to rounding: ||W_y - W_j|| <= sqrt(2) ||W||_2.

A conv classifier head (the last layer a Conv whose output, flattened by Reshape nodes, is the logits:
a 1x1 output map in the usual case) is the same map written differently: its rows W_c are the kernel of
output c laid over the input, computed by one reverse pass in float64 (speccert.bounds.linear_tail's
rows, their rounding bounded by the |W| rows as in the margin-aware certificate), so it gets the radii
of the equivalent Linear head.
"""

from __future__ import annotations

import math

import torch

from speccert.bounds.certificate import Batch, CertContext, Certificate, NotApplicable, register_certificate
from speccert.bounds.certificates.margin_aware import pair_norms
from speccert.bounds.linear_tail import TailRows, chain_rows
from speccert.bounds.row_distances import squared_distances
from speccert.ir import Conv, Graph, Linear, Node, Reshape
from speccert.norms.rounding import gamma

MAX_HEAD_ENTRIES = 1 << 24  # rows x inputs of a conv head formed densely

Tensor = torch.Tensor


def final_linear(graph: Graph) -> tuple[Tensor, str]:
    """(W in float64, name of W's input node) for a graph whose output node is a Linear."""
    out = graph.node(graph.output)
    if not isinstance(out.op, Linear) or len(out.shape) != 1:
        raise NotApplicable("the logits are not produced by a final Linear layer")
    return out.op.weight.detach().to(torch.float64), out.inputs[0]


def final_conv_rows(graph: Graph) -> TailRows:
    """Rows of a final Conv followed by Reshape nodes to the 1-d logits (module docstring)."""
    reshapes: list[Node] = []
    name = graph.output
    while isinstance(graph.node(name).op, Reshape) and len(graph.output_shape) == 1:
        reshapes.insert(0, graph.node(name))
        name = graph.node(name).inputs[0]
    conv = graph.node(name)
    if not isinstance(conv.op, Conv) or len(graph.output_shape) != 1:
        raise NotApplicable("the logits are not produced by a final Linear or Conv layer")
    u = conv.inputs[0]
    shape, n_out = graph.shape_of(u), graph.output_shape[0]
    if n_out * math.prod(shape) > MAX_HEAD_ENTRIES:
        raise NotApplicable(f"the conv head's {n_out} rows over {math.prod(shape)} inputs are too large")
    chain = [conv, *reshapes]
    rows = chain_rows(chain, shape, n_out, absolute=False)
    abs_norms = chain_rows(chain, shape, n_out, absolute=True).norm(dim=1)
    return TailRows(u, rows, abs_norms, int(conv.op.weight.numel()) + 4, tuple(chain))


def row_difference_norms(w: Tensor) -> Tensor:
    """D[y, j] >= ||W_y - W_j||_2 in float64, rounded up (relative error of an n-term sum of squares)."""
    w = w.to(torch.float64)
    d = squared_distances(w).sqrt_()  # chunked: bounded memory (speccert.bounds.row_distances)
    return d * (1.0 + 4.0 * gamma(w.shape[1] + 4))


@register_certificate("pairwise")
class PairwiseMargin(Certificate):
    """min_j (f_y - f_j) / (||W_y - W_j|| L_u)."""

    order = 20  # place among the kinds in reports (speccert.bounds.certificate)

    def __init__(self, ctx: CertContext) -> None:
        super().__init__(ctx)
        graph = ctx.bound.folded
        if isinstance(graph.node(graph.output).op, Linear):
            w, u = final_linear(graph)
            pairs = row_difference_norms(w)
        else:
            head = final_conv_rows(graph)
            u, pairs = head.start, pair_norms(head)
        l_u = ctx.bound.node_upper[u]
        # Rounding of the product: relative 4 gamma(4) covers the float64 multiply.
        self.denominator = (pairs * l_u * (1.0 + 4.0 * gamma(4))).to(ctx.device)

    def radii(self, batch: Batch) -> Tensor:
        den = self.denominator[batch.y]  # [B, C]
        r = batch.margins / den
        return torch.where(den == 0, torch.where(batch.margins > 0, float("inf"), 0.0).to(r), r)
