"""Targets a fine-tuning run must reach, measured by the certifier on held-out data.

Grammar (spaces ignored, case-insensitive; a trailing % divides by 100):

    cra@EPS>=VALUE      certified accuracy at L2 radius EPS       e.g. "cra@0.5>=0.70", "cra@0.5>=70%"
    clean>=VALUE        clean accuracy                            e.g. "clean>=0.85"
    lipschitz<=VALUE    the certifier's proven Lipschitz upper bound  e.g. "lipschitz<=5"

`Measurement` is what the certifier reports per epoch; `Target.holds(m)` and `Target.shortfall(m)`
(how much is missing, 0 when met) are computed from it alone, so the stopping rule is exactly
"every target holds on the certifier's numbers".
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from speccert.errors import UsageError

_PATTERN = re.compile(
    r"^(?P<metric>cra@(?P<eps>[0-9.eE+-]+)|clean|lipschitz)(?P<op>>=|<=)(?P<value>[0-9.eE+-]+)(?P<pct>%?)$"
)
GRAMMAR = (
    "'cra@EPS>=VALUE', 'clean>=VALUE' or 'lipschitz<=VALUE' (e.g. cra@0.5>=0.70, clean>=0.85, lipschitz<=5)"
)


@dataclass(frozen=True)
class Measurement:
    """The certifier's numbers for one model on the validation data."""

    clean: float
    cra: dict[float, float]
    lipschitz: float
    median_radius: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)
    report: Any = field(default=None, repr=False, compare=False)  # the certifier's full report, if any


@dataclass(frozen=True)
class Target:
    metric: str  # "cra", "clean" or "lipschitz"
    op: str  # ">=" or "<="
    value: float
    eps: float | None = None

    @property
    def text(self) -> str:
        head = f"cra@{self.eps:g}" if self.metric == "cra" else self.metric
        return f"{head}{self.op}{self.value:g}"

    def measured(self, m: Measurement) -> float:
        if self.metric == "clean":
            return m.clean
        if self.metric == "lipschitz":
            return m.lipschitz
        assert self.eps is not None
        if self.eps not in m.cra:
            raise KeyError(f"no certified accuracy at eps {self.eps:g} in the measurement")
        return m.cra[self.eps]

    def holds(self, m: Measurement) -> bool:
        v = self.measured(m)
        return v >= self.value if self.op == ">=" else v <= self.value

    def shortfall(self, m: Measurement) -> float:
        """How far from the target (0 when met): accuracy points missing, or L above the bound."""
        v = self.measured(m)
        return max(0.0, self.value - v) if self.op == ">=" else max(0.0, v - self.value)

    def progress(self, m: Measurement) -> float:
        """A unit-free distance to the target for the weight schedule: accuracy difference, or
        log(L / bound) for Lipschitz targets (0 when met)."""
        if self.metric == "lipschitz":
            v = self.measured(m)
            return max(0.0, math.log(v / self.value)) if math.isfinite(v) and v > 0 else math.inf
        return self.shortfall(m)

    def describe_miss(self, m: Measurement) -> str:
        v = self.measured(m)
        if self.metric == "lipschitz":
            return f"{self.text}: measured {v:.4g}, {self.shortfall(m):.4g} too high"
        return f"{self.text}: measured {v:.4f}, short by {self.shortfall(m):.4f}"


def _number(text: str, what: str, raw: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise UsageError(f"bad target {raw!r}: {what} {text!r} is not a number; expected {GRAMMAR}") from None
    if not math.isfinite(v):
        raise UsageError(f"bad target {raw!r}: {what} must be finite")
    return v


def parse_accuracy(text: str, what: str) -> float:
    """An accuracy as a fraction: "0.7" -> 0.7, "70%" -> 0.7. The one parser for accuracies typed by users
    (finetune targets, gate's --min-cra / --min-clean). UsageError (naming `what`) unless in [0, 1]."""
    s = text.strip()
    pct = s.endswith("%")
    try:
        v = float(s[:-1] if pct else s)
    except ValueError:
        raise UsageError(f"{what}: {text!r} is not an accuracy (e.g. 0.7 or 70%)") from None
    v = v / 100.0 if pct else v
    if not 0.0 <= v <= 1.0:  # also refuses nan and inf
        raise UsageError(f"{what}: an accuracy must be in [0, 1] (or a percentage), got {text!r}")
    return v


def parse_target(text: str) -> Target:
    """Parse one target string; UsageError (one line, the grammar) when it is malformed."""
    raw = text
    s = re.sub(r"\s+", "", text).lower()
    m = _PATTERN.match(s)
    if m is None:
        raise UsageError(f"bad target {raw!r}; expected {GRAMMAR}")
    metric = "cra" if m["metric"].startswith("cra") else m["metric"]
    eps = _number(m["eps"], "eps", raw) if metric == "cra" else None
    op = m["op"]
    if metric in ("cra", "clean"):
        if op != ">=":
            raise UsageError(
                f"bad target {raw!r}: accuracy targets use '>=' (e.g. {metric if metric == 'clean' else 'cra@0.5'}>=0.7)"
            )
        value = parse_accuracy(m["value"] + m["pct"], f"bad target {raw!r}")
        if eps is not None and eps <= 0:
            raise UsageError(f"bad target {raw!r}: eps must be > 0")
    else:
        if op != "<=":
            raise UsageError(f"bad target {raw!r}: Lipschitz targets use '<=' (e.g. lipschitz<=5)")
        value = _number(m["value"], "value", raw) / (100.0 if m["pct"] else 1.0)
        if value <= 0:
            raise UsageError(f"bad target {raw!r}: the Lipschitz bound must be > 0")
    return Target(metric, op, value, eps)


def parse_targets(texts: list[str] | tuple[str, ...]) -> list[Target]:
    if not texts:
        raise UsageError(f"give at least one --target: {GRAMMAR}")
    out = [parse_target(t) for t in texts]
    check_unique(out)
    return out


def check_unique(targets: list[Target]) -> None:
    if not targets:
        raise UsageError(f"give at least one --target: {GRAMMAR}")
    seen: set[tuple[str, float | None]] = set()
    for t in targets:
        if (t.metric, t.eps) in seen:
            raise UsageError(f"target {t.text} is given twice")
        seen.add((t.metric, t.eps))


def target_eps(targets: list[Target]) -> list[float]:
    """The radii the certifier must report for these targets (sorted, unique)."""
    return sorted({t.eps for t in targets if t.eps is not None})


@dataclass(frozen=True)
class TargetCheck:
    met: bool
    missed: list[str]
    distance: float  # sum of per-target progress distances (0 when every target holds)


def check_targets(targets: list[Target], m: Measurement) -> TargetCheck:
    """The stopping rule: met iff every target holds on the certifier's measurement."""
    missed = [t.describe_miss(m) for t in targets if not t.holds(m)]
    return TargetCheck(not missed, missed, sum(t.progress(m) for t in targets))
