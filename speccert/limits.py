"""The memory budget that file readers check sizes *declared* in a file against, before allocating.

A small hostile file can declare a huge tensor (a 50000 x 50000 external weight, an input of shape
[1, 1, 100000, 100000], a gzip or zip member that inflates to gigabytes). Readers compute the bytes the
declaration implies and call `check_bytes` first, so such a file is refused with one clear line
(InputError, exit code 4) instead of crashing the process or swapping the machine.

budget = `--max-memory` (`set_max_memory`) when given, else SPECCERT_MAX_MEMORY when set (bytes, or
with a K/M/G/T suffix), else half of the memory available now (MemAvailable, or physical memory),
capped by the process' RLIMIT_AS when one is set.

The same budget bounds what the computations plan to allocate: a norm method or a certificate whose
route (a dense matrix, an explicit Gram matrix, the rows of a merged affine tail) would need more
falls back to a cheaper sound bound and says so in the report (`fits`).

The range checks of settings that several entry points share live here too, torch-free, so the CLI
(before torch loads), the library's option objects and the gate policy refuse the same values with
the same words: `check_refine_above` (a ratio upper / lower >= 1, inf: never), `check_seed` (a
64-bit integer, what torch's generators take) and `check_norm_method` (a name in the norm-method
catalog, speccert/norms/methods.json, read as a file: the registry itself imports torch).
"""

from __future__ import annotations

import json
import math
import os
import resource
from functools import cache
from pathlib import Path

from speccert.errors import InputError, UsageError

ENV = "SPECCERT_MAX_MEMORY"
_SUFFIX = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


REFINE_ABOVE = 1.01  # `auto` refines a layer whose upper / lower bound ratio is above this (norms.method)
SEED_MIN, SEED_MAX = -(2**63), 2**63 - 1  # torch.manual_seed's int64 (a larger one raised, exit 5)

_override: int | None = None  # --max-memory for this process (set by the CLI, or a library user)


def parse_size(text: str, what: str = ENV) -> int:
    """Bytes in '4G', '512M', '1.5GiB', '1000000'; UsageError naming `what` otherwise."""
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    mult = _SUFFIX.get(t[-1:], 1)
    try:
        value = float(t[:-1] if t[-1:] in _SUFFIX else t)
    except ValueError:
        raise UsageError(f"{what}={text!r} is not a size (e.g. 4G, 512M, 1000000)") from None
    if not math.isfinite(value) or value <= 0:
        raise UsageError(f"{what}={text!r} must be a positive size")
    return int(value * mult)


def set_max_memory(size: str | int | None) -> None:
    """Set this process' memory budget (`--max-memory`: bytes or a size such as '8G'); None restores
    the default (SPECCERT_MAX_MEMORY, else half the available memory)."""
    global _override
    _override = parse_size(size, "--max-memory") if isinstance(size, str) else size
    if _override is not None and _override <= 0:
        _override = None
        raise UsageError(f"--max-memory must be a positive size, got {size}")


def _available() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return 1 << 34


def memory_budget() -> int:
    """Bytes one declared object (a tensor, an image, a decompressed member) or one computation's plan
    (a norm method on a layer, a certificate's precomputation) may occupy."""
    if _override is not None:
        return _override
    env = os.environ.get(ENV)
    if env:
        return parse_size(env)
    budget = _available() // 2
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        budget = min(budget, soft // 2)
    return budget


def human(nbytes: int | float) -> str:
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if nbytes >= size:
            return f"{nbytes / size:.1f} {unit}"
    return f"{int(nbytes)} bytes"


DEFAULT_PLAN = 2 << 30  # what one computation plans by default: keeps auto's choices (and time) on big layers


def plan_budget() -> int:
    """Bytes one computation (a norm method on one layer, a certificate's precomputation) may plan to
    allocate: the budget when the user set it (--max-memory, SPECCERT_MAX_MEMORY), else the smaller of
    the budget and 2 GiB."""
    if _override is not None or os.environ.get(ENV):
        return memory_budget()
    return min(memory_budget(), DEFAULT_PLAN)


def fits(nbytes: int | float) -> bool:
    """True when a computation planning to allocate `nbytes` stays within `plan_budget()`."""
    return nbytes <= plan_budget()


def check_bytes(what: str, nbytes: int | float) -> None:
    """Raise InputError when `what` would need more than the memory budget (before allocating it)."""
    budget = memory_budget()
    if nbytes > budget:
        raise InputError(
            f"{what} would take {human(nbytes)}, more than the memory budget of {human(budget)} "
            f"(pass --max-memory or set {ENV} to allow more)"
        )


def check_refine_above(value: float, what: str = "--refine-above") -> float:
    """`value` when it is a ratio upper / lower >= 1 (inf: never refine); UsageError naming `what`
    (the option or policy key) for NaN, anything below 1, or a non-number."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 1.0:  # NaN too
        raise UsageError(f"{what} is a ratio upper / lower >= 1 (inf: never refine), got {value!r}")
    return float(value)


def check_seed(value: int, what: str = "--seed") -> int:
    """`value` when it is an integer torch can seed with (64 bits); UsageError naming `what` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or not SEED_MIN <= value <= SEED_MAX:
        raise UsageError(f"{what} must be an integer that fits in 64 bits, got {value!r}")
    return value


NORM_CATALOG = Path(__file__).resolve().parent / "norms" / "methods.json"


@cache
def norm_catalog() -> list[dict[str, str]]:
    """The norm methods, `auto` first (name, gives, summary, applies_to, how), as generated by
    `python -m speccert.norms.catalog` (tests/test_norms_registry.py keeps the file current)."""
    methods: list[dict[str, str]] = json.loads(NORM_CATALOG.read_text(encoding="utf-8"))["methods"]
    return methods


def check_norm_method(value: str, what: str = "--method") -> str:
    """`value` when it names a norm method (or auto); UsageError naming `what` otherwise."""
    names = [m["name"] for m in norm_catalog()]
    if value not in names:
        raise UsageError(f"{what} {value!r} is not a norm method (choose from {', '.join(names)})")
    return value
