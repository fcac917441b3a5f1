"""Checked reads of policy values: each names the offending key in a UsageError (exit 2)."""

from __future__ import annotations

import math
from typing import Any

from speccert.errors import UsageError


def check_keys(table: dict[str, Any], allowed: set[str], where: str, src: str) -> None:
    for key in table:
        if key not in allowed:
            raise UsageError(f"{src}: unknown key '{where}.{key}' (allowed: {', '.join(sorted(allowed))})")


def number(
    v: Any, key: str, src: str, *, positive: bool = False, nonneg: bool = False, at_most: float | None = None
) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise UsageError(f"{src}: '{key}' must be a finite number, got {v!r}")
    if positive and v <= 0:
        raise UsageError(f"{src}: '{key}' must be > 0, got {v!r}")
    if nonneg and v < 0:
        raise UsageError(f"{src}: '{key}' must be >= 0, got {v!r}")
    if at_most is not None and v > at_most:
        raise UsageError(f"{src}: '{key}' must be <= {at_most:g}, got {v!r}")
    return float(v)


def numbers(v: Any, key: str, src: str, *, positive: bool = False) -> tuple[float, ...]:
    items = v if isinstance(v, list) else [v]
    if not items:
        raise UsageError(f"{src}: '{key}' must not be empty")
    return tuple(number(x, f"{key}[{i}]", src, positive=positive) for i, x in enumerate(items))


# torch seeds and sizes are 64-bit integers: a larger Python int would fail deep inside torch (exit 5).
INT64_MAX = 2**63 - 1


def integer(v: Any, key: str, src: str, *, positive: bool = False) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise UsageError(f"{src}: '{key}' must be an integer, got {v!r}")
    if positive and v <= 0:
        raise UsageError(f"{src}: '{key}' must be > 0, got {v!r}")
    if not -INT64_MAX - 1 <= v <= INT64_MAX:
        raise UsageError(f"{src}: '{key}' must fit in 64 bits, got {v!r}")
    return v


def boolean(v: Any, key: str, src: str) -> bool:
    if not isinstance(v, bool):
        raise UsageError(f"{src}: '{key}' must be true or false, got {v!r}")
    return v


def string(v: Any, key: str, src: str) -> str:
    if not isinstance(v, str) or not v:
        raise UsageError(f"{src}: '{key}' must be a non-empty string, got {v!r}")
    return v


def nonempty_list(v: Any, key: str, src: str) -> list[Any]:
    if not isinstance(v, list) or not v:
        raise UsageError(f"{src}: '{key}' must be a non-empty list, got {v!r}")
    return v
