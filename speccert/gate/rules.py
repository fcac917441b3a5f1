"""Gate rules as pure functions over a certify report dict (`CertifyReport.to_dict()`).

A metric reads one number from the report; a rule compares it with a threshold:

    passed  <=>  value >= threshold   (bound "min": certified_accuracy@eps, clean_accuracy, median_radius)
    passed  <=>  value <= threshold   (bound "max": lipschitz_upper, max_layer_norm)

A value that is missing or not a number never passes (a gate must not pass on a number it could not
read). Metrics live in the `METRICS` registry (the speccert/gate/metrics package, one module per metric),
each declaring its bound, whether it needs a radius and whether it is a fraction.

    >>> report = {"certificate": {"eps": [0.25], "certified_accuracy": [0.7], "clean_accuracy": 0.9}}
    >>> evaluate_rule(make_rule("certified_accuracy", min=0.6, eps=0.25), report).passed
    True
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from speccert.errors import UsageError
from speccert.gate.metrics import load_metrics
from speccert.gate.values import number, string

__all__ = ["RuleResult", "RuleSpec", "compare", "evaluate_rule", "evaluate_rules", "make_rule"]


@dataclass(frozen=True)
class RuleResult:
    """The outcome of one rule. `op` is '>=' or '<='; `value` is None when it could not be measured.
    `baseline` is the baseline's value for no_regression rules."""

    name: str
    metric: str
    op: str
    threshold: float
    value: float | None
    passed: bool
    message: str
    eps: float | None = None
    baseline: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: _json_number(v) for k, v in asdict(self).items()}


def _json_number(v: Any) -> Any:
    # JSON has no inf/nan: an unbounded value is written as the string "inf" (schema allows it).
    if isinstance(v, float) and not math.isfinite(v):
        return "inf" if v > 0 else ("-inf" if v < 0 else "nan")
    return v


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.12g}"


@dataclass(frozen=True)
class RuleSpec:
    """One threshold rule: `metric` (at radius `eps` for per-radius metrics) `bound` `threshold`,
    where bound is "min" (value >= threshold) or "max" (value <= threshold)."""

    metric: str
    bound: str
    threshold: float
    eps: float | None = None
    name: str | None = None

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        at = f"@{_fmt(self.eps)}" if self.eps is not None else ""
        op = ">=" if self.bound == "min" else "<="
        return f"{self.metric}{at} {op} {_fmt(self.threshold)}"


def make_rule(
    metric: str,
    *,
    min: float | None = None,
    max: float | None = None,  # noqa: A002
    eps: float | None = None,
    name: str | None = None,
    where: str = "rule",
    src: str = "policy",
) -> RuleSpec:
    """Validate one rule: the metric exists, takes the right bound, and names a radius iff it needs one."""
    metrics = load_metrics()
    if metric not in metrics:
        raise UsageError(
            f"{src}: {where}: unknown metric {metric!r} (known: {', '.join(metrics.keys())}; "
            "baseline comparison is [gate.no_regression])"
        )
    m = metrics.get(metric)
    bound = m.bound
    given = {"min": min, "max": max}
    if given[bound] is None:
        other = "max" if bound == "min" else "min"
        hint = f", not '{other}'" if given[other] is not None else ""
        raise UsageError(f"{src}: {where}: metric {metric!r} takes '{bound}'{hint}")
    if given["max" if bound == "min" else "min"] is not None:
        raise UsageError(f"{src}: {where}: metric {metric!r} takes only '{bound}'")
    threshold = number(given[bound], f"{where}.{bound}", src, nonneg=True)
    if m.fraction and threshold > 1:
        raise UsageError(
            f"{src}: {where}: {metric} is a fraction in [0, 1], got {threshold:g} "
            f"(write {threshold / 100:g} for {threshold:g}%)"
        )
    if m.needs_eps:
        if eps is None:
            raise UsageError(f"{src}: {where}: metric {metric!r} needs 'eps' (the radius)")
        eps = number(eps, f"{where}.eps", src, positive=True)
    elif eps is not None:
        raise UsageError(f"{src}: {where}: metric {metric!r} takes no 'eps'")
    if name is not None:
        name = string(name, f"{where}.name", src)
    return RuleSpec(metric=metric, bound=bound, threshold=threshold, eps=eps, name=name)


def compare(value: float | None, bound: str, threshold: float) -> bool:
    """value >= threshold (min) or value <= threshold (max); None and NaN never pass."""
    if value is None or math.isnan(value):
        return False
    return value >= threshold if bound == "min" else value <= threshold


def evaluate_rule(rule: RuleSpec, report: dict[str, Any]) -> RuleResult:
    """Measure `rule.metric` in `report` and compare it with the rule's threshold."""
    try:
        metric = load_metrics().get(rule.metric)
    except KeyError as exc:
        raise UsageError(str(exc.args[0])) from None
    value = metric.read(report, rule.eps)
    op = ">=" if rule.bound == "min" else "<="
    passed = compare(value, rule.bound, rule.threshold)
    at = f" at eps {rule.eps:g}" if rule.eps is not None else ""
    if value is None:
        message = f"{rule.metric}{at} is not in the report; required {op} {rule.threshold:g}"
    else:
        verdict = "meets" if passed else "violates"
        message = f"{rule.metric}{at} = {value:.6g} {verdict} the threshold {op} {rule.threshold:g}"
    return RuleResult(
        name=rule.label,
        metric=rule.metric,
        op=op,
        threshold=rule.threshold,
        value=value,
        passed=passed,
        message=message,
        eps=rule.eps,
    )


def evaluate_rules(rules: tuple[RuleSpec, ...] | list[RuleSpec], report: dict[str, Any]) -> list[RuleResult]:
    return [evaluate_rule(r, report) for r in rules]
