"""Penalties registry: one file per penalty, each registered by name (STYLE.md rules 1-2).

Adding a penalty: a new file here with `@PENALTIES.register("name")` on an `nn.Module` subclass of
`Penalty`, and its import below. `speccert finetune --penalty` takes its choices from this registry,
and tests/test_penalties_registry.py tests every entry (forward, backward, finite values, state_dict).
"""

from __future__ import annotations

from speccert.registry import Registry
from speccert.training.penalties.base import Penalty

PENALTIES: Registry[str, type[Penalty]] = Registry("penalty")

# Registration happens at import; the order is the order of `--penalty` choices.
from speccert.training.penalties import (  # noqa: E402,F401
    curvature,
    fantastic4,
    lmt,
    none,
    spectral,
    spectreg,
    weissi,
)


def make_penalty(name: str, graph, weight: float | None = None, **options) -> Penalty:  # noqa: ANN001
    """Build the penalty `name` for `graph` (UsageError listing the choices for an unknown name)."""
    from speccert.errors import UsageError

    if name not in PENALTIES:
        raise UsageError(f"unknown penalty {name!r}; choose one of: {', '.join(PENALTIES.keys())}")
    return PENALTIES.get(name)(graph, weight, **options)


def penalty_table_markdown() -> str:
    """The penalties table of docs/finetune.md, generated from the registry (tests check it is current)."""
    rows = ["| name | default weight | what it is |", "|---|---|---|"]
    rows += [f"| `{k}` | {v.default_weight:g} | {v.summary} |" for k, v in PENALTIES.items()]
    return "\n".join(rows)


__all__ = ["PENALTIES", "Penalty", "make_penalty", "penalty_table_markdown"]
