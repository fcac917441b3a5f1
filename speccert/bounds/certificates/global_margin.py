"""Global certificate: r = (f_y - f_j) / (sqrt(2) L) for each class j, L the logits' Lipschitz bound.

|(f_y - f_j)(x + d) - (f_y - f_j)(x)| <= sqrt(2) ||f(x + d) - f(x)|| <= sqrt(2) L ||d||, because the
row vector e_y - e_j has norm sqrt(2). (Named global_margin.py: `global` is a Python keyword.)
"""

from __future__ import annotations

import math

import torch

from speccert.bounds.certificate import Batch, CertContext, Certificate, NotApplicable, register_certificate
from speccert.norms.result import round_up


@register_certificate("global")
class GlobalMargin(Certificate):
    """margin / (sqrt(2) * L): valid for any graph the composition bounds."""

    order = 10  # place among the kinds in reports (speccert.bounds.certificate)

    def __init__(self, ctx: CertContext) -> None:
        super().__init__(ctx)
        if not math.isfinite(ctx.bound.upper):
            raise NotApplicable("the Lipschitz bound is infinite")
        self.denominator = round_up(math.sqrt(2.0) * ctx.bound.upper)

    def radii(self, batch: Batch) -> torch.Tensor:
        if self.denominator == 0.0:  # a constant function: every margin holds everywhere
            return torch.where(batch.margins > 0, float("inf"), 0.0).to(batch.margins)
        return batch.margins / self.denominator
