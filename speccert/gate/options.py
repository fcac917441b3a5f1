"""Command-line options on top of a policy: rules from --min-cra & co., --eps, and the overrides.

Accuracies typed on the command line go through the same parser as finetune's targets
(`speccert.training.targets.parse_accuracy`): 0.7 and 70% mean the same everywhere.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from speccert.errors import UsageError
from speccert.gate.policy import COMMAND_LINE, SPLITS, Policy, RegressionSpec, parse_regression
from speccert.gate.rules import RuleSpec, make_rule
from speccert.gate.values import device as checked_device
from speccert.gate.values import integer, norm_method, numbers
from speccert.training.targets import parse_accuracy

__all__ = ["COMMAND_LINE", "parse_clean_option", "parse_cra_option", "parse_eps_option", "with_overrides"]


def parse_cra_option(text: str) -> RuleSpec:
    """'--min-cra 0.5@0.25' (or '50%@0.25') -> certified_accuracy at eps 0.25 >= 0.5."""
    value, sep, eps = text.partition("@")
    if not sep:
        raise UsageError(f"--min-cra expects ACCURACY@EPS, e.g. 0.5@0.25 or 50%@0.25, got {text!r}")
    v = parse_accuracy(value, f"--min-cra {text}")
    try:
        e = float(eps)
    except ValueError:
        raise UsageError(f"--min-cra {text}: the radius {eps!r} after '@' is not a number") from None
    return make_rule("certified_accuracy", min=v, eps=e, where=f"--min-cra {text}", src=COMMAND_LINE)


def parse_clean_option(text: str) -> RuleSpec:
    """'--min-clean 0.85' (or '85%') -> clean_accuracy >= 0.85."""
    v = parse_accuracy(text, "--min-clean")
    return make_rule("clean_accuracy", min=v, where="--min-clean", src=COMMAND_LINE)


def parse_eps_option(text: str) -> tuple[float, ...]:
    """'--eps 0.1,0.25' -> (0.1, 0.25)."""
    try:
        values = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise UsageError(f"--eps expects numbers separated by commas, got {text!r}") from None
    return numbers(values, "--eps", COMMAND_LINE, positive=True)


def with_overrides(
    policy: Policy,
    *,
    rules: list[RuleSpec] | None = None,
    eps: tuple[float, ...] | None = None,
    data: str | None = None,
    limit: int | None = None,
    method: str | None = None,
    device: str | None = None,
    seed: int | None = None,
    split: str | None = None,
    baseline: str | None = None,
    max_cra_drop: float | None = None,
    max_lipschitz_growth: float | None = None,
) -> Policy:
    """Command-line options on top of a policy: rules are added, everything else replaces."""
    d = policy.data
    if data is not None:
        d = dataclasses.replace(d, path=data)
    if limit is not None:
        d = dataclasses.replace(d, limit=integer(limit, "--limit", COMMAND_LINE, positive=True))
    if split is not None:
        if split not in SPLITS:
            raise UsageError(f"--split must be one of {', '.join(SPLITS)}, got {split!r}")
        d = dataclasses.replace(d, split=split)
    reg = policy.regression
    if baseline is not None or max_cra_drop is not None or max_lipschitz_growth is not None:
        reg = reg or RegressionSpec()
        raw: dict[str, Any] = {}
        if baseline is not None:
            raw["baseline"] = baseline
        if max_cra_drop is not None:
            raw["max_cra_drop"] = max_cra_drop
        if max_lipschitz_growth is not None:
            raw["max_lipschitz_growth"] = max_lipschitz_growth
        upd = parse_regression(raw, COMMAND_LINE)
        reg = dataclasses.replace(reg, **{k: getattr(upd, k) for k in raw})
    return dataclasses.replace(
        policy,
        data=d,
        rules=policy.rules + tuple(rules or ()),
        eps=eps if eps is not None else policy.eps,
        method=norm_method(method, "--method", COMMAND_LINE) if method is not None else policy.method,
        device=checked_device(device, "--device", COMMAND_LINE) if device is not None else policy.device,
        regression=reg,
        seed=integer(seed, "--seed", COMMAND_LINE) if seed is not None else policy.seed,
    )
