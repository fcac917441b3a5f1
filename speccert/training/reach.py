"""Stop a run early when a missed target is out of reach at the current trend (`--stop-out-of-reach`),
or when the time budget does not allow another epoch (`--time-budget`).

For every missed target, its measured value v_e over the last W trained epochs (W = `window`, 4) is
fitted by least squares, v_e ~ a + s e, and extrapolated linearly over the epochs the budget still
allows (n left, the epoch budget and the time budget together):

    projected = a + s (e_last + n)

A target is out of reach when the projection still misses it (for 'lipschitz<=V' the fit is on
log L, so a steady relative decrease counts). Fine-tuning curves flatten as the learning rate decays,
so a linear trend over-promises late in a run: the rule stops only runs that would miss even on their
recent slope. It never judges before W trained epochs after the penalty's margin ramp (`anneal`),
during which accuracy falls by design, and it must hold on two consecutive epochs (one noisy epoch does
not stop a run). It decides nothing about certificates: the written model is the best epoch,
certified from the file as always.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from speccert.training.records import EpochRecord
from speccert.training.targets import Measurement, Target


@dataclass(frozen=True)
class Projection:
    target: Target
    slope: float  # per epoch, in the fitted quantity (accuracy, or log L)
    projected: float  # in the target's own units

    def describe(self, left: int, window: int) -> str:
        t = self.target
        if t.metric == "lipschitz":
            trend = f"L x {math.exp(self.slope):.3g} per epoch"
            return f"{t.text}: {trend} over the last {window} epochs, ~{self.projected:.4g} after {left} more"
        return (
            f"{t.text}: {100 * self.slope:+.2f} points per epoch over the last {window} epochs, "
            f"~{100 * self.projected:.2f}% after {left} more"
        )


def _measured(r: EpochRecord) -> Measurement:
    return Measurement(r.clean, r.cra, r.lipschitz)


def _value(t: Target, r: EpochRecord) -> float:
    v = t.measured(_measured(r))
    if t.metric == "lipschitz":
        return math.log(v) if v > 0 and math.isfinite(v) else math.inf
    return v


def project(t: Target, recent: list[EpochRecord], left: int) -> Projection:
    """The least-squares line through `recent` (consecutive epochs) extrapolated `left` epochs on."""
    xs = [float(r.epoch) for r in recent]
    ys = [_value(t, r) for r in recent]
    if not all(math.isfinite(y) for y in ys):
        return Projection(t, 0.0, math.inf if t.metric == "lipschitz" else 0.0)
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    s = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx if sxx > 0 else 0.0
    y = my + s * (xs[-1] + left - mx)
    return Projection(t, s, math.exp(y) if t.metric == "lipschitz" else y)


def misses(p: Projection) -> bool:
    v = p.target.value
    return p.projected > v if p.target.metric == "lipschitz" else p.projected < v


@dataclass
class ReachWatch:
    """Applies the rule of the module docstring after each epoch; `check` returns why to stop, or ''."""

    targets: list[Target]
    first_epoch: int  # the first trained epoch that may be judged (after the margin ramp + window)
    window: int = 4
    strikes: int = 0

    @classmethod
    def for_run(cls, targets: list[Target], epochs: int, anneal: float, window: int = 4) -> ReachWatch:
        return cls(targets, math.ceil(anneal * epochs) + window, window)

    def check(self, history: list[EpochRecord], left: int) -> str:
        last = history[-1]
        if last.met or last.epoch < self.first_epoch or left <= 0:
            return ""
        recent = [r for r in history if r.epoch > 0][-self.window :]
        missed = [t for t in self.targets if not t.holds(_measured(last))]
        gone = [p for p in (project(t, recent, left) for t in missed) if misses(p)]
        self.strikes = self.strikes + 1 if gone else 0
        if self.strikes < 2:
            return ""
        return "stopped early, out of reach at the current trend: " + "; ".join(
            p.describe(left, len(recent)) for p in gone
        )

    def state_dict(self) -> dict[str, int]:
        return {"strikes": self.strikes}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.strikes = int(state.get("strikes", 0))


def out_of_time(budget: float | None, spent: float, history: list[EpochRecord]) -> str:
    """Why the next epoch may not start (`--time-budget`, seconds: the last epoch's duration says it would
    end past the budget), or ''."""
    if budget is None or not history:
        return ""
    last = history[-1].seconds
    if spent + last > budget:
        return f"time budget {budget:g} s: {spent:.0f} s spent, the next epoch needs ~{last:.0f} s"
    return ""


def epochs_left(epochs: int, budget: float | None, spent: float, history: list[EpochRecord]) -> int:
    """Epochs the epoch budget and the time budget (at the last epoch's duration) still allow."""
    left = epochs - history[-1].epoch
    last = history[-1].seconds
    if budget is not None and last > 0:
        left = min(left, int((budget - spent) // last))
    return max(left, 0)


__all__ = ["Projection", "ReachWatch", "epochs_left", "misses", "out_of_time", "project"]
