"""`none`: plain cross-entropy, no penalty (a control run: certification still decides when to stop)."""

from __future__ import annotations

import torch

from speccert.training.penalties import register_penalty
from speccert.training.penalties.base import Model, Penalty

Tensor = torch.Tensor


@register_penalty("none")
class NoPenalty(Penalty):
    """Penalty 0: fine-tune with cross-entropy alone."""

    default_weight = 0.0
    summary = "no penalty (cross-entropy only)"

    def term(self, logits: Tensor, y: Tensor, x: Tensor, model: Model) -> Tensor:
        return logits.new_zeros(())
