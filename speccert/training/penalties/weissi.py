"""`weissi`: the weight-scale-shift-invariant regulariser (Liu, Cui & Chan, "Improve Generalization
and Robustness of Neural Networks via Weight Scale Shifting Invariant Regularizations").

What is implemented, and why. In a positively homogeneous network (ReLU, max pool, linear layers)
scaling W_i by c > 0 and W_j by 1/c leaves the function unchanged, but a sum of per-layer norms
changes, so a plain spectral penalty can be "paid" by moving scale between layers without making the
network any more robust. The product of the layer norms, i.e. its logarithm

    chain:     R = lambda * sum_l log sigma(W_l),

is invariant under such shifts and is the log of the Lipschitz bound the certifier composes. For
residual networks the product over a block is replaced by the block's own bound,

    residual:  R = lambda * sum_blocks log(1 + prod_{l in block} sigma_l)   (identity shortcut),

and both are exactly log(L_hat), where L_hat composes the sigmas over the DAG with the certifier's
rules (sigma*L through a layer, L_a + L_b at an Add, activations and constants counted as 1, since
they do not move under weight scaling). So we compute lambda * log(compose(sigmas)): on a chain it is
the first formula, on identity-shortcut blocks the second, and on a block with a projection shortcut
log(prod_branch + sigma_shortcut), the natural generalisation. sigmas: persistent power iteration.
"""

from __future__ import annotations

import torch

from speccert.training.penalties import register_penalty
from speccert.training.penalties.base import Model, Penalty
from speccert.training.sigmas import SegmentSigmas, compose_lipschitz

Tensor = torch.Tensor


@register_penalty("weissi")
class WeissiPenalty(Penalty):
    """lambda * log(prod-over-DAG of sigma_l): sum log sigma_l on chains, sum log(1 + prod) on blocks."""

    default_weight = 0.1
    summary = "λ·Σ log σ(W_l), residual blocks log(1+Π σ) (Liu, Cui & Chan; scale-shift invariant)"

    def __init__(
        self, graph, weight: float | None = None, conv_mode: str = "operator", seed: int = 0
    ) -> None:  # noqa: ANN001
        super().__init__(graph, weight)
        self.sigmas = SegmentSigmas(graph, conv_mode, seed)
        self._last = 0.0

    def term(self, logits: Tensor, y: Tensor, x: Tensor, model: Model) -> Tensor:
        sig = {s.name: self.sigmas.sigma(s) for s in self.sigmas.weighted()}
        total = compose_lipschitz(self.graph, sig, slopes=False)
        value = torch.log(total.clamp_min(1e-30))
        self._last = float(value.detach())
        return value

    def steer(self) -> dict[str, float]:
        return {"log_prod_sigma": self._last}
