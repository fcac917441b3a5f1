"""The contract every penalty meets (one file per penalty, registered in PENALTIES by name).

A penalty is an `nn.Module` built from the `Graph` being trained (the module from `graph.to_torch()`
shares its tensors, so the penalty reads the live weights). Use it in any loop:

    >>> g = speccert.load("models/cnn.onnx"); model = g.to_torch()            # doctest: +SKIP
    >>> pen = PENALTIES.get("spectral")(g, weight=0.01)                        # doctest: +SKIP
    >>> logits = model(x); loss = pen.loss(logits, y, x, model)               # doctest: +SKIP

`forward(logits, y, x, model)` returns the penalty term (already multiplied by the weight);
`loss(...)` returns the full training loss, cross-entropy plus the term by default (LMT replaces the
cross-entropy instead). `weight` is a buffer, so it is checkpointed with the penalty's other state
(power-iteration vectors); `finetune` adapts it when progress stalls (speccert.training.schedule).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from speccert.errors import UsageError
from speccert.ir.graph import Graph

Tensor = torch.Tensor
Model = Callable[[Tensor], Tensor]


class Penalty(nn.Module):
    """Base class. Subclasses set `default_weight` and `summary` and implement `term`; the registry
    decorator `register_penalty("name")` sets `name`."""

    name: ClassVar[str] = "?"
    default_weight: ClassVar[float] = 1.0
    summary: ClassVar[str] = ""
    needs_input: ClassVar[bool] = False  # True when the term needs the batch (Jacobian penalties)
    weight: Tensor

    def __init__(self, graph: Graph, weight: float | None = None, **options: Any) -> None:
        super().__init__()
        if options:
            raise UsageError(f"penalty '{self.name}' has no option(s) {', '.join(sorted(options))}")
        w = self.default_weight if weight is None else float(weight)
        if not w >= 0:
            raise UsageError(f"penalty weight must be >= 0, got {weight}")
        self.graph = graph
        self.register_buffer("weight", torch.tensor(w, dtype=torch.float64))

    def set_weight(self, value: float) -> None:
        self.weight.fill_(float(value))

    @classmethod
    def target_options(cls, eps: Sequence[float]) -> dict[str, Any]:
        """Options this penalty takes from the run's target radii (defaults; the user's options win).

        The hook that lets `finetune` stay ignorant of penalty names (LMT trains for the largest eps)."""
        return {}

    def set_progress(self, fraction: float) -> None:
        """Called before every training step with the fraction of the run's steps done, in [0, 1]
        (annealing schedules; a function of the global step, so a resumed run sees the same values)."""

    def term(self, logits: Tensor, y: Tensor, x: Tensor, model: Model) -> Tensor:
        """The unweighted penalty value."""
        raise NotImplementedError

    def forward(self, logits: Tensor, y: Tensor, x: Tensor, model: Model) -> Tensor:
        t = self.term(logits, y, x, model)
        return self.weight.to(t.dtype) * t

    def loss(self, logits: Tensor, y: Tensor, x: Tensor, model: Model) -> Tensor:
        """Training loss: cross-entropy(logits, y) + weight * term."""
        return F.cross_entropy(logits, y) + self(logits, y, x, model)

    def steer(self) -> dict[str, float]:
        """Training-time estimates worth showing (e.g. the estimated L); never a certificate."""
        return {}
