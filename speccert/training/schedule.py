"""How the penalty weight adapts when progress toward the targets stalls.

The input model's measurement (epoch 0) is the reference. After each epoch the certifier's measurement gives every target a distance (accuracy points missing;
log(L / bound) for Lipschitz targets). The rule, with patience P = 1 and factor c = 2:
- if a *clean* target is missed, robustness is being bought with too much accuracy: weight /= c
  (at most once per epoch, not below `min_weight`);
- else, if a robustness target (cra or lipschitz) is missed and the summed distance of the
  robustness targets has not improved by at least `min_delta` (0.005) over its best value for P
  consecutive epochs: weight *= c (not above `max_weight`), and the stall counter restarts.
The weight only steers training; whether to stop is decided by the certifier's numbers alone.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from speccert.training.targets import Measurement, Target


@dataclass
class WeightSchedule:
    weight: float
    factor: float = 2.0
    patience: int = 1
    min_delta: float = 0.005
    min_weight: float = 1e-6
    max_weight: float = 1e4
    best: float = math.inf
    stalled: int = 0

    def observe(self, targets: list[Target], m: Measurement) -> None:
        """Record the input model's distance (epoch 0) as the reference, without changing the weight."""
        self.best = min(self.best, sum(t.progress(m) for t in targets if t.metric != "clean"))

    def update(self, targets: list[Target], m: Measurement) -> tuple[float, str]:
        """New weight after an epoch measured as `m`, and why it changed ('' when it did not)."""
        clean_missed = any(t.metric == "clean" and not t.holds(m) for t in targets)
        robust = [t for t in targets if t.metric != "clean"]
        dist = sum(t.progress(m) for t in robust)
        improved = dist < self.best - self.min_delta
        if dist < self.best:
            self.best = dist
        if clean_missed:
            self.stalled = 0
            new = max(self.min_weight, self.weight / self.factor)
            why = "clean target missed: weight lowered" if new != self.weight else ""
            self.weight = new
            return self.weight, why
        if not robust or dist == 0.0 or improved:
            self.stalled = 0
            return self.weight, ""
        self.stalled += 1
        if self.stalled >= self.patience:
            self.stalled = 0
            new = min(self.max_weight, self.weight * self.factor)
            why = "robustness stalled: weight raised" if new != self.weight else ""
            self.weight = new
            return self.weight, why
        return self.weight, ""

    def state_dict(self) -> dict[str, float | int]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, float | int]) -> None:
        for k, v in state.items():
            setattr(self, k, v)
