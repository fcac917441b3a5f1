"""`spectreg`: Jacobian regularisation by random projections (Varga, Csiszárik & Zombori, "Gradient
Regularization Improves Accuracy of Discriminative Models", SpectReg), and the DataGrad variant.

    spectreg:  R = lambda * mean_i || grad_x (r_i^T f(x_i)) ||^2,   r_i ~ N(0, I) per example.

Since E_r ||J^T r||^2 = tr(J J^T) = ||J||_F^2, R is an unbiased one-sample estimate of
lambda * mean_i ||J_f(x_i)||_F^2, the Frobenius Jacobian penalty, at the cost of one double backprop.
r is drawn from torch's global generator, which finetune checkpoints (exact resume).

    datagrad:  R = lambda * mean_i || grad_x CE(f(x_i), y_i) ||^2   (Drucker & LeCun's double backprop).

Both are local (at the data); they tighten the gradient term of the certificate, not the global L.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from speccert.errors import UsageError
from speccert.training.penalties import register_penalty
from speccert.training.penalties.base import Model, Penalty

Tensor = torch.Tensor
VARIANTS = ("projection", "datagrad")


@register_penalty("spectreg")
class SpectRegPenalty(Penalty):
    """lambda * mean ||grad_x (r^T f(x))||^2 (r Gaussian), or the DataGrad ||grad_x CE||^2 variant."""

    default_weight = 0.01
    summary = "λ·‖∇ₓ(rᵀf(x))‖², r~N(0,I): unbiased Frobenius-Jacobian penalty (Varga et al.); or DataGrad"
    needs_input = True

    def __init__(self, graph, weight: float | None = None, variant: str = "projection") -> None:  # noqa: ANN001
        super().__init__(graph, weight)
        if variant not in VARIANTS:
            raise UsageError(f"spectreg variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
        self.variant = variant

    def term(self, logits: Tensor, y: Tensor, x: Tensor, model: Model) -> Tensor:
        if not x.requires_grad:  # the caller's logits do not depend on a differentiable x: recompute
            x = x.detach().requires_grad_(True)
            logits = model(x)
        if self.variant == "projection":
            r = torch.randn(logits.shape, dtype=logits.dtype, device=logits.device)
            scalar = (logits * r).sum()
        else:
            scalar = F.cross_entropy(logits, y, reduction="sum")
        (g,) = torch.autograd.grad(scalar, x, create_graph=True)
        return g.pow(2).reshape(g.shape[0], -1).sum(dim=1).mean()
