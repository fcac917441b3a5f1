"""`curvature`: the curvature bound of the second-order certificate (Singla & Feizi 2020, "Second-Order
Provable Defenses against Adversarial Attacks", CRT), for networks with smooth activations.

With K a bound on the Hessian norm of the margin m, the certifier's radius is the positive root of
m(x) - ||grad m(x)|| r - K r^2 / 2 = 0, so a smaller K gives larger radii. K is composed over the
DAG in product form: through a linear segment (sigma L, sigma K); through an activation of slope a and
curvature c, (a L, a K + c L^2) (the chain rule for the Lipschitz constant of a Jacobian); Add sums.
For f = W2 act(W1 x) this is K = sigma_2 * c * sigma_1^2. With per-segment sigmas from persistent
power iteration, K is differentiable (gradient through every sigma_l = u_l^T W_l v_l).

    penalty = lambda * K(f)       (K of the output map; the margin's is at most sqrt(2) K)

ReLU / max-pool networks have no curvature bound: construction raises UsageError naming the node.
"""

from __future__ import annotations

import torch

from speccert.training.penalties import register_penalty
from speccert.training.penalties.base import Model, Penalty
from speccert.training.sigmas import SegmentSigmas, compose_curvature

Tensor = torch.Tensor


@register_penalty("curvature")
class CurvaturePenalty(Penalty):
    """lambda * K, the product-form bound on the output's Hessian norm (smooth activations only)."""

    default_weight = 0.01
    summary = "λ·K, product-form Hessian bound of the second-order certificate (Singla & Feizi CRT)"

    def __init__(
        self, graph, weight: float | None = None, conv_mode: str = "operator", seed: int = 0
    ) -> None:  # noqa: ANN001
        super().__init__(graph, weight)
        self.sigmas = SegmentSigmas(graph, conv_mode, seed)
        compose_curvature(graph, {s.name: torch.ones((), dtype=graph.dtype) for s in self.sigmas.segments})
        self._last: dict[str, float] = {}

    def term(self, logits: Tensor, y: Tensor, x: Tensor, model: Model) -> Tensor:
        lip, k = compose_curvature(self.graph, self.sigmas())
        self._last = {"L_est": float(lip.detach()), "K_est": float(k.detach())}
        return k

    def steer(self) -> dict[str, float]:
        return dict(self._last)
