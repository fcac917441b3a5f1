"""`spectral`: spectral norm regularisation (Yoshida & Miyato 2017, "Spectral Norm Regularization for
Improving the Generalizability of Deep Learning").

    R(W) = (lambda / 2) * sum_l sigma(W_l)^2

with sigma_l from one persistent power-iteration step per training step (speccert.training.power).
u, v are constants in the backward pass, so dR/dW_l = lambda * sigma_l * u_l v_l^T: exactly the
paper's gradient (a careless implementation differentiates through a sigma computed as ||W v||^2 /
||v|| and gets a different power). For convolutions, `conv_mode="operator"` (default) iterates on the
convolution as a linear map with its padding and stride; `conv_mode="kernel"` on the kernel reshaped to
[c_out, c_in*kh*kw] as the paper does. A BatchNorm right after a layer is folded into it.
"""

from __future__ import annotations

import torch

from speccert.training.penalties import register_penalty
from speccert.training.penalties.base import Model, Penalty
from speccert.training.sigmas import SegmentSigmas

Tensor = torch.Tensor


@register_penalty("spectral")
class SpectralPenalty(Penalty):
    """(lambda/2) * sum over weighted layers of sigma_l^2 (Yoshida & Miyato 2017)."""

    default_weight = 0.01
    summary = "(λ/2)·Σ σ(W_l)², one power-iteration step per training step (Yoshida & Miyato 2017)"

    def __init__(
        self, graph, weight: float | None = None, conv_mode: str = "operator", seed: int = 0
    ) -> None:  # noqa: ANN001
        super().__init__(graph, weight)
        self.sigmas = SegmentSigmas(graph, conv_mode, seed)
        self._last: dict[str, float] = {}

    def layer_sigmas(self, steps: int = 1) -> dict[str, Tensor]:
        """sigma_l of every weighted layer (steps power-iteration steps first, in training mode)."""
        return {s.name: self.sigmas.sigma(s, steps) for s in self.sigmas.weighted()}

    def term(self, logits: Tensor, y: Tensor, x: Tensor, model: Model) -> Tensor:
        sig = self.layer_sigmas()
        self._last = {k: float(v.detach()) for k, v in sig.items()}
        return 0.5 * sum((s**2 for s in sig.values()), logits.new_zeros(()))

    def steer(self) -> dict[str, float]:
        return {f"sigma[{k}]": v for k, v in self._last.items()}
