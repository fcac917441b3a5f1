"""Penalties registry: one file per penalty, each registered by name (STYLE.md rules 1-2).

Adding a penalty is one new file in this package: an `nn.Module` subclass of `Penalty` decorated with
`@register_penalty("name")` (the decorator sets the class's `name`, so it is written once). The package
loads every module in it at import (sorted, deterministic), so nothing here lists the penalties; the
`--penalty` choices of `speccert finetune`, its help (through penalties.json, see
speccert.training.catalog), the table of docs/finetune.md and
tests/test_penalties_registry.py (forward, backward, finite values, state_dict) all come from the
registry.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from speccert.registry import Registry
from speccert.training.penalties.base import Penalty

PENALTIES: Registry[str, type[Penalty]] = Registry("penalty")
P = TypeVar("P", bound=type[Penalty])


def register_penalty(name: str) -> Callable[[P], P]:
    """Class decorator: `cls.name = name` and `PENALTIES[name] = cls` (a duplicate name raises)."""

    def decorator(cls: P) -> P:
        cls.name = name
        PENALTIES.add(name, cls)
        return cls

    return decorator


def penalty_class(name: str) -> type[Penalty]:
    """The registered penalty `name` (UsageError listing the choices for an unknown name)."""
    from speccert.errors import UsageError

    if name not in PENALTIES:
        raise UsageError(f"unknown penalty {name!r}; choose one of: {', '.join(PENALTIES.keys())}")
    return PENALTIES.get(name)


def make_penalty(name: str, graph: Any, weight: float | None = None, **options: Any) -> Penalty:
    """Build the penalty `name` for `graph` (UsageError listing the choices for an unknown name)."""
    return penalty_class(name)(graph, weight, **options)


def penalty_table_markdown() -> str:
    """The penalties table of docs/finetune.md, generated from the registry (tests check it is current)."""
    rows = ["| name | default weight | what it is |", "|---|---|---|"]
    rows += [f"| `{k}` | {v.default_weight:g} | {v.summary} |" for k, v in PENALTIES.items()]
    return "\n".join(rows)


PENALTIES.load_package(__name__)  # base.py registers nothing; every other module one penalty

__all__ = [
    "PENALTIES",
    "Penalty",
    "make_penalty",
    "penalty_class",
    "penalty_table_markdown",
    "register_penalty",
]
