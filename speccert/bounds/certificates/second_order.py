"""Second-order certificate for networks whose activations are all smooth (Singla & Feizi 2020, CRC).

If every margin m_j(x) = f_y(x) - f_j(x) has a K_j-Lipschitz gradient, then for ||d|| <= r
    m_j(x + d) >= m_j(x) - g_j r - K_j r^2 / 2,    g_j = ||grad m_j(x)||_2 (exact, by autograd),
so m_j stays positive for r < (-g_j + sqrt(g_j^2 + 2 K_j m_j)) / K_j = 2 m_j / (g_j + sqrt(g_j^2 + 2 K_j m_j))
(the second form avoids cancellation).

K_j generalises Singla & Feizi's product formula to DAGs with per-layer upper bounds
(speccert.bounds.compose.compose gives H_v, the Lipschitz constant of each node's derivative):
- final Linear W fed (through Reshapes) by a smooth activation a = sigma(p), w = W_y - W_j:
      K_j = sup|sigma''| ||w||_inf L_p^2 + sup|sigma'| ||w||_2 H_p
  because w^T D^2 a [h, h] = sum_i w_i sigma''(p_i) (Dp h)_i^2 + sum_i w_i sigma'(p_i) D^2 p_i [h, h];
- final Linear otherwise: K_j = ||W_y - W_j||_2 H_u;
- anything else: K_j = sqrt(2) H_logits.
Floating point: g_j is raised by a relative GRADIENT_SLACK (plus an absolute term scaled by the Lipschitz
bound) and K_j is rounded up, so the radius formula (decreasing in g and K, increasing in m) errs low.
"""

from __future__ import annotations

import math
from typing import cast

import torch

from speccert.bounds.certificate import (
    GRADIENT_SLACK,
    Batch,
    CertContext,
    Certificate,
    NotApplicable,
    register_certificate,
)
from speccert.bounds.certificates.pairwise_margin import final_linear, row_difference_norms
from speccert.bounds.crc import refine
from speccert.bounds.float_error import ErrorModel
from speccert.bounds.row_distances import max_abs_differences
from speccert.ir import INPUT, Activation, Graph, Reshape
from speccert.ir.activations import activation_curvature, activation_lipschitz
from speccert.norms.rounding import gamma

Tensor = torch.Tensor


def _activation_behind(graph: Graph, name: str) -> str | None:
    """The activation node reached from `name` through Reshape nodes only (each used once), or None."""
    while name != INPUT:
        node = graph.node(name)
        if isinstance(node.op, Activation):
            return name
        if not isinstance(node.op, Reshape) or len(graph.consumers(name)) != 1:
            return None
        name = node.inputs[0]
    return None


def curvature_matrix(ctx: CertContext) -> Tensor:
    """K[y, j] >= Lipschitz constant of grad (f_y - f_j), float64, rounded up."""
    bound = ctx.bound
    curv = bound.curvature
    if curv is None:
        raise NotApplicable("second-order certificate needs smooth activations only (no relu/max-pool)")
    graph = bound.folded
    up = 1.0 + 8.0 * gamma(8)
    try:
        w, u = final_linear(graph)
    except NotApplicable:
        c = graph.output_shape[0]
        k = torch.full((c, c), math.sqrt(2.0) * curv[graph.output] * up, dtype=torch.float64)
        return k
    d2 = row_difference_norms(w)
    act = _activation_behind(graph, u)
    if act is None:
        return d2 * curv[u] * up
    node = graph.node(act)
    assert isinstance(node.op, Activation)
    k_sigma = activation_curvature(node.op.fn, node.op.alpha)
    s_sigma = activation_lipschitz(node.op.fn, node.op.alpha)
    assert k_sigma is not None
    p = node.inputs[0]
    dinf = max_abs_differences(w)
    return (k_sigma * dinf * bound.node_upper[p] ** 2 + s_sigma * d2 * curv[p]) * up


@register_certificate("second_order")
class SecondOrder(Certificate):
    """min_j 2 m_j / (g_j + sqrt(g_j^2 + 2 K_j m_j)), g_j the exact gradient norm of m_j at x."""

    order = 50  # place among the kinds in reports (speccert.bounds.certificate)
    needs_grad = True

    def __init__(self, ctx: CertContext) -> None:
        super().__init__(ctx)
        self.k = curvature_matrix(ctx).to(ctx.device)
        self.g_abs = GRADIENT_SLACK * ctx.bound.upper
        self.errors = ErrorModel(ctx.bound.folded, {n.name: n.upper for n in ctx.bound.layers})

    def gradient_norms(self, batch: Batch) -> Tensor:
        """g[b, j] = ||grad_x (f_y - f_j)(x_b)||_2 in float64, by one backward pass per class."""
        x = batch.x.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = self.ctx.graph.forward(x)
            n_classes = logits.shape[1]
            jac = []
            for c in range(n_classes):
                (gc,) = torch.autograd.grad(logits[:, c].sum(), x, retain_graph=c + 1 < n_classes)
                jac.append(gc.reshape(x.shape[0], -1))
        jm = torch.stack(jac, 1)  # [B, C, d]
        jy = jm[torch.arange(x.shape[0], device=x.device), batch.y]  # [B, d]
        return cast(Tensor, (jy[:, None, :] - jm).norm(dim=-1))  # torch types Tensor.norm as Any

    def radii(self, batch: Batch) -> Tensor:
        g = self.gradient_norms(batch) * (1.0 + GRADIENT_SLACK) + self.g_abs
        k = self.k[batch.y]
        m = batch.margins
        r = 2.0 * m / (g + torch.sqrt(g * g + 2.0 * k * m.clamp_min(0.0)))
        r = torch.where(m <= 0, torch.zeros_like(r), r)
        r = torch.where(torch.isinf(m), torch.full_like(r, float("inf")), r)
        if self.ctx.crc_steps > 0:
            # The dual refinement of the class closest to flipping (the point's radius is the min over j).
            j = r.argmin(1)
            r_j = r.gather(1, j[:, None])[:, 0]
            refined = refine(
                self.ctx.graph,
                self.errors,
                batch.x,
                batch.y,
                j,
                k.gather(1, j[:, None])[:, 0],
                g.gather(1, j[:, None])[:, 0],
                r_j,
                self.g_abs,
                steps=self.ctx.crc_steps,
            )
            r = r.scatter(1, j[:, None], refined[:, None])
        return r
