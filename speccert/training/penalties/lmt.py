"""`lmt`: Lipschitz-margin training (Tsuzuku, Sato & Sugiyama 2018, "Lipschitz-Margin Training").

A point is certified at radius eps when its logit margin exceeds sqrt(2) * eps * L. LMT trains for
that margin by adding it to every non-target logit before the cross-entropy:

    global:    z_j <- z_j + sqrt(2) * eps' * L           for j != y
    pairwise:  z_j <- z_j + eps' * ||w_y - w_j||_2 * L_pen  for j != y

where L composes per-layer sigmas (persistent power iteration, differentiable) over the DAG with the
certifier's rules, w_k are the rows of the last Linear layer and L_pen the Lipschitz estimate of its
input (the certifier's tighter pairwise last-layer form). eps' = weight * ramp * eps: the penalty
weight scales the training margin (1 = the target eps), finetune's schedule raises it when the
certified accuracy stalls, and `anneal=a` ramps it linearly from 0 over the first fraction a of the
run (default 0: no ramp). `forward` returns CE(shifted) - CE(plain), so loss = CE + forward is the LMT loss.
`gloro=1` (GloRo, Leino et al. 2021) scores the plain logits plus one extra logit, the worst shifted
non-target max_{j != y} (z_j + margin_j), instead of every shifted logit: the cross-entropy then pulls on the
one pair that decides the certificate (and on the clean prediction). `la_beta=b > 0` replaces the cross-entropy of the shifted logits by logit annealing (BRONet, Lai et al.
2025): -(1 - p_y)^b log p_y, p = softmax(shifted logits).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from speccert.errors import UsageError
from speccert.ir.graph import INPUT
from speccert.ir.ops import Linear, Softmax
from speccert.training.penalties import register_penalty
from speccert.training.penalties.base import Model, Penalty
from speccert.training.sigmas import SegmentSigmas, compose_lipschitz

Tensor = torch.Tensor
FORMS = ("global", "pairwise")


@register_penalty("lmt")
class LMTPenalty(Penalty):
    """Cross-entropy on logits shifted by the Lipschitz margin sqrt(2)*eps*L (or the pairwise form)."""

    default_weight = 1.0
    summary = "CE with √2·ε·L added to non-target logits (Tsuzuku et al. 2018); pairwise last-layer form"

    def __init__(
        self,
        graph,
        weight: float | None = None,
        eps: float = 0.5,
        form: str = "pairwise",  # noqa: ANN001
        conv_mode: str = "operator",
        seed: int = 0,
        anneal: float = 0.0,
        la_beta: float = 0.0,
        gloro: int = 0,
    ) -> None:
        super().__init__(graph, weight)
        if not la_beta >= 0:
            raise UsageError(f"lmt la_beta must be >= 0, got {la_beta}")
        self.la_beta = float(la_beta)
        if gloro not in (0, 1):
            raise UsageError(f"lmt gloro must be 0 or 1, got {gloro}")
        self.gloro = bool(gloro)
        if not 0.0 <= anneal <= 1.0:
            raise UsageError(f"lmt anneal must be a fraction of the run in [0, 1], got {anneal}")
        self.anneal = float(anneal)
        self._ramp = 1.0 if anneal == 0 else 0.0
        if form not in FORMS:
            raise UsageError(f"lmt form must be one of {', '.join(FORMS)}, got {form!r}")
        if not eps > 0:
            raise UsageError(f"lmt eps must be > 0, got {eps}")
        self.eps = float(eps)
        self.form = form
        self.sigmas = SegmentSigmas(graph, conv_mode, seed)
        self._head = self._last_linear() if form == "pairwise" else None
        self._last: dict[str, float] = {}

    @classmethod
    def target_options(cls, eps: Sequence[float]) -> dict[str, Any]:
        return {"eps": max(eps)} if eps else {}

    def set_progress(self, fraction: float) -> None:
        # eps annealing (BRONet, Lai et al. 2025): the margin grows linearly over the first `anneal` of
        # the run, so the untouched model is not hit by a margin of sqrt(2)*eps*L with L in the hundreds.
        self._ramp = 1.0 if self.anneal == 0 else min(1.0, max(0.0, fraction) / self.anneal)

    def _last_linear(self) -> str:
        out = self.graph.node(self.graph.output)
        if isinstance(out.op, Softmax):
            out = self.graph.node(out.inputs[0])
        seg = next((s for s in self.sigmas.segments if s.name == out.name), None)
        if seg is None or not isinstance(seg.layer, Linear):
            raise UsageError("lmt form 'pairwise' needs a Linear last layer; use form 'global'")
        return seg.name

    def shift(self, y: Tensor, n_classes: int) -> Tensor:
        """The per-logit margin [batch, classes] added before the cross-entropy (0 at the target)."""
        sig = self.sigmas()
        eps = self.weight * (self.eps * self._ramp)
        onehot = F.one_hot(y, n_classes).to(self.graph.dtype)
        if self._head is None:
            lip = compose_lipschitz(self.graph, sig)
            self._last = {"L_est": float(lip.detach())}
            return math.sqrt(2.0) * eps.to(lip.dtype) * lip * (1 - onehot)
        seg = next(s for s in self.sigmas.segments if s.name == self._head)
        w = seg.effective_weight()  # [classes, features]
        src = seg.first.inputs[0]
        lip_pen = (
            torch.ones((), dtype=w.dtype) if src == INPUT else compose_lipschitz(self.graph, sig, upto=src)
        )
        diff = (w[y].unsqueeze(1) - w.unsqueeze(0)).norm(dim=2)  # [batch, classes], 0 at j = y
        self._last = {"L_pen_est": float(lip_pen.detach())}
        return eps.to(w.dtype) * diff * lip_pen

    def loss(self, logits: Tensor, y: Tensor, x: Tensor, model: Model) -> Tensor:
        shifted = logits + self.shift(y, logits.shape[1]).to(logits.dtype)
        if self.gloro:  # the plain logits and the worst shifted non-target (GloRo's bottom logit)
            target = F.one_hot(y, logits.shape[1]).bool()
            bot = shifted.masked_fill(target, -math.inf).amax(dim=1, keepdim=True)
            shifted = torch.cat([logits, bot], dim=1)
        if self.la_beta == 0:
            return F.cross_entropy(shifted, y)
        # Logit annealing (BRONet, Lai et al. 2025): -(1 - p_y)^beta log p_y on the shifted logits, so
        # points already beyond the margin stop pulling and the capacity goes to the border points.
        logp = F.log_softmax(shifted, dim=1).gather(1, y.unsqueeze(1)).squeeze(1)
        return -((1.0 - logp.exp()).clamp_min(0.0) ** self.la_beta * logp).mean()

    def forward(self, logits: Tensor, y: Tensor, x: Tensor, model: Model) -> Tensor:
        return self.loss(logits, y, x, model) - F.cross_entropy(logits, y)

    def term(self, logits: Tensor, y: Tensor, x: Tensor, model: Model) -> Tensor:
        return self.forward(logits, y, x, model)

    def steer(self) -> dict[str, float]:
        return dict(self._last)
