"""`WeightAverage`: an exponential moving average (EMA) of the trained weights.

After optimiser step t (0-based, the run's global step) every floating tensor w of the model's state
updates its average a:

    a <- d_t a + (1 - d_t) w,        d_t = min(decay, (1 + t) / (10 + t))

(the warm-up d_t keeps the first steps from being dominated by the starting weights). The average is
what the certifier measures each epoch and what a run writes: `applied(module)` swaps it into the
module (whose tensors the graph shares, so the certified map is the averaged map) and swaps the
trained weights back afterwards, so training continues on the raw weights. The average is a plain set
of weights like any other: the certificate is computed from it (and re-checked from the written file)
exactly as for an unaveraged run. d_t is a function of t only and the average is checkpointed, so a
resumed run continues bit-identically.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from speccert.errors import UsageError

Tensor = torch.Tensor


class WeightAverage:
    """EMA of `module`'s floating state (parameters and buffers; frozen ones simply stay equal)."""

    def __init__(self, module: torch.nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise UsageError(f"the weight-average decay must be in (0, 1), got {decay:g}")
        self.decay = float(decay)
        self.avg: dict[str, Tensor] = {
            k: v.detach().clone() for k, v in module.state_dict().items() if v.is_floating_point()
        }

    def decay_at(self, step: int) -> float:
        """d_t of the module docstring."""
        return min(self.decay, (1.0 + step) / (10.0 + step))

    @torch.no_grad()
    def update(self, module: torch.nn.Module, step: int) -> None:
        """Fold the weights after optimiser step `step` into the average."""
        d = self.decay_at(step)
        for k, v in module.state_dict().items():
            a = self.avg.get(k)
            if a is not None:
                a.mul_(d).add_(v.detach(), alpha=1.0 - d)

    @contextmanager
    def applied(self, module: torch.nn.Module) -> Iterator[None]:
        """The module holds the averaged weights inside the block, its own weights again after it."""
        own = {k: v.detach().clone() for k, v in module.state_dict().items() if k in self.avg}
        module.load_state_dict(self.avg, strict=False)
        try:
            yield
        finally:
            module.load_state_dict(own, strict=False)

    def state_dict(self) -> dict[str, Tensor]:
        return {k: v.clone() for k, v in self.avg.items()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        if set(state) != set(self.avg):
            raise UsageError("the checkpoint's weight average does not match this model's weights")
        for k, v in state.items():
            self.avg[k].copy_(v)


__all__ = ["WeightAverage"]
