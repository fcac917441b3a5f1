"""The memory budget that file readers check sizes *declared* in a file against, before allocating.

A small hostile file can declare a huge tensor (a 50000 x 50000 external weight, an input of shape
[1, 1, 100000, 100000], a gzip or zip member that inflates to gigabytes). Readers compute the bytes the
declaration implies and call `check_bytes` first, so such a file is refused with one clear line
(InputError, exit code 4) instead of crashing the process or swapping the machine.

budget = SPECCERT_MAX_MEMORY when set (bytes, or with a K/M/G/T suffix), else half of the memory
available now (MemAvailable, or physical memory), capped by the process' RLIMIT_AS when one is set.
"""

from __future__ import annotations

import math
import os
import resource

from speccert.errors import InputError, UsageError

ENV = "SPECCERT_MAX_MEMORY"
_SUFFIX = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def _parse(text: str) -> int:
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    mult = _SUFFIX.get(t[-1:], 1)
    try:
        value = float(t[:-1] if t[-1:] in _SUFFIX else t)
    except ValueError:
        raise UsageError(f"{ENV}={text!r} is not a size (e.g. 4G, 512M, 1000000)") from None
    if not math.isfinite(value) or value <= 0:
        raise UsageError(f"{ENV}={text!r} must be a positive size")
    return int(value * mult)


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
    """Bytes one declared object (a tensor, an image, a decompressed member) may occupy."""
    env = os.environ.get(ENV)
    if env:
        return _parse(env)
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


def check_bytes(what: str, nbytes: int | float) -> None:
    """Raise InputError when `what` would need more than the memory budget (before allocating it)."""
    budget = memory_budget()
    if nbytes > budget:
        raise InputError(
            f"{what} would take {human(nbytes)}, more than the memory budget of {human(budget)} "
            f"(set {ENV} to allow more)"
        )
