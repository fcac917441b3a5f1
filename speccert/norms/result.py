"""How sure a number is, as a type (STYLE.md rule 4).

`UpperBound` is a proven upper bound on an operator norm, floating-point error included; only it may
reach a certificate (functions in speccert.bounds take `UpperBound`, and mypy rejects anything else).
`LowerBound` is proven from below (e.g. ||A v|| for a unit v). `Estimate` is neither (a heuristic such as
Miyato's reshaped-kernel norm, or an unfinished iteration).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class NormResult:
    value: float
    method: str
    iterations: int = 0
    tolerance: float = 0.0
    seconds: float = 0.0
    note: str = ""

    kind: str = "estimate"


@dataclass(frozen=True)
class UpperBound(NormResult):
    kind: str = "upper"


@dataclass(frozen=True)
class LowerBound(NormResult):
    kind: str = "lower"


@dataclass(frozen=True)
class Estimate(NormResult):
    kind: str = "estimate"


def round_up(x: float, ulps: int = 4) -> float:
    """x moved up by a few units in the last place: the last step of every certified float64 value."""
    for _ in range(ulps):
        x = math.nextafter(x, math.inf)
    return x


def round_down(x: float, ulps: int = 4) -> float:
    for _ in range(ulps):
        x = math.nextafter(x, -math.inf)
    return x
