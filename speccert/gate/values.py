"""Checked reads of policy values: each names the offending key in a UsageError (exit 2).

A value from a policy file is named by file and key ("speccert.toml: 'gate.eps[0]' must be ...");
one from the command line (`src` = COMMAND_LINE) by its option ("--max-lipschitz must be ...").
"""

from __future__ import annotations

import math
import re
from typing import Any

from speccert.errors import UsageError
from speccert.limits import check_norm_method, check_refine_above

COMMAND_LINE = "command line"  # the source of values typed as options (and of a policy without a file)
# Policy keys the command line sets through an option of another name.
_OPTION_OF_KEY = {
    "gate.no_regression.max_cra_drop": "--max-cra-drop",
    "gate.no_regression.max_lipschitz_growth": "--max-lipschitz-growth",
    "gate.no_regression.baseline": "--baseline",
    "gate.no_regression.max_clean_drop": "--max-clean-drop",
}


def named(key: str, src: str) -> str:
    """How a message names a value: `src: 'key'` for a policy file, the option for the command line
    ('--min-cra 0.5@nan.eps' -> '--min-cra 0.5@nan: the radius', '--eps[1]' -> '--eps')."""
    if src != COMMAND_LINE:
        return f"{src}: '{key}'"
    if key in _OPTION_OF_KEY:
        return _OPTION_OF_KEY[key]
    key = re.sub(r"\[[0-9]+\]$", "", key)
    option, dot, part = key.rpartition(".")
    if dot and part in ("min", "max"):
        return option
    if dot and part == "eps":
        return f"{option}: the radius"
    return key


def check_keys(table: dict[str, Any], allowed: set[str], where: str, src: str) -> None:
    for key in table:
        if key not in allowed:
            raise UsageError(f"{src}: unknown key '{where}.{key}' (allowed: {', '.join(sorted(allowed))})")


def number(
    v: Any, key: str, src: str, *, positive: bool = False, nonneg: bool = False, at_most: float | None = None
) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise UsageError(f"{named(key, src)} must be a finite number, got {v!r}")
    if positive and v <= 0:
        raise UsageError(f"{named(key, src)} must be > 0, got {v!r}")
    if nonneg and v < 0:
        raise UsageError(f"{named(key, src)} must be >= 0, got {v!r}")
    if at_most is not None and v > at_most:
        raise UsageError(f"{named(key, src)} must be <= {at_most:g}, got {v!r}")
    return float(v)


def numbers(v: Any, key: str, src: str, *, positive: bool = False) -> tuple[float, ...]:
    items = v if isinstance(v, list) else [v]
    if not items:
        raise UsageError(f"{named(key, src)} must not be empty")
    return tuple(number(x, f"{key}[{i}]", src, positive=positive) for i, x in enumerate(items))


# torch seeds and sizes are 64-bit integers: a larger Python int would fail deep inside torch (exit 5).
INT64_MAX = 2**63 - 1


def integer(v: Any, key: str, src: str, *, positive: bool = False) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise UsageError(f"{named(key, src)} must be an integer, got {v!r}")
    if positive and v <= 0:
        raise UsageError(f"{named(key, src)} must be > 0, got {v!r}")
    if not -INT64_MAX - 1 <= v <= INT64_MAX:
        raise UsageError(f"{named(key, src)} must fit in 64 bits, got {v!r}")
    return v


def boolean(v: Any, key: str, src: str) -> bool:
    if not isinstance(v, bool):
        raise UsageError(f"{named(key, src)} must be true or false, got {v!r}")
    return v


def string(v: Any, key: str, src: str) -> str:
    if not isinstance(v, str) or not v:
        raise UsageError(f"{named(key, src)} must be a non-empty string, got {v!r}")
    return v


def nonempty_list(v: Any, key: str, src: str) -> list[Any]:
    if not isinstance(v, list) or not v:
        raise UsageError(f"{named(key, src)} must be a non-empty list, got {v!r}")
    return v


_DEVICE = re.compile(r"^(cpu|auto|cuda(:[0-9]+)?)$")


def device(v: Any, key: str, src: str) -> str:
    """cpu, cuda, cuda:N or auto (checked here: torch's own error for "gpu" was an internal error, exit 5)."""
    if not isinstance(v, str) or not _DEVICE.match(v):
        raise UsageError(f"{named(key, src)} must be cpu, cuda, cuda:N or auto, got {v!r}")
    return v


def norm_method(v: Any, key: str, src: str) -> str:
    """A norm method's name (or auto), checked against the catalog as --method is."""
    return check_norm_method(string(v, key, src), named(key, src))


def refine_above(v: Any, key: str, src: str) -> float:
    """A ratio upper / lower >= 1, inf for never (`speccert.limits.check_refine_above`, as --refine-above)."""
    return check_refine_above(v, named(key, src))
