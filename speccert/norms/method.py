"""The norm-method contract and its registry (STYLE.md rule 1: one registry per kind of extension).

A method is one file in speccert/norms/ holding a `NormMethod` subclass decorated with
`@register_method`. It declares which layers it applies to (`applies`), how much memory it needs for
a layer (`memory_bytes`, so callers fall back instead of running out of memory) and computes a list
of results (`compute`): proven `UpperBound`s, proven `LowerBound`s or `Estimate`s. Methods never live
inside op classes, so a new method touches exactly one new file (plus its import in `_load_methods`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from speccert.norms.layer import LinearLayer
from speccert.norms.result import NormResult
from speccert.registry import Registry


@dataclass(frozen=True)
class NormContext:
    """Knobs shared by every method. `memory_limit` in bytes bounds any single allocation plan."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    memory_limit: int = 2 << 30
    tol: float = 1e-5
    max_iter: int = 500
    seed: int = 0
    dense_max_entries: int = 1_000_000
    warm_start: torch.Tensor | None = None  # a starting vector for iterative lower bounds
    upper_hint: float | None = (
        None  # a proven upper bound already known: lower-bound iterations may stop near it
    )
    exact_max_dim: int = (
        2048  # `exact` on convs whose smaller Gram side is up to this (above 2048: opt-in, n^3)
    )


class NormMethod:
    """Base class: one algorithm that bounds or estimates ||A||_2 of some layers."""

    name: ClassVar[str] = "?"
    kinds: ClassVar[tuple[str, ...]] = ()  # which of "upper", "lower", "estimate" it produces
    summary: ClassVar[str] = ""

    def applies(self, layer: LinearLayer) -> bool:
        raise NotImplementedError

    def memory_bytes(self, layer: LinearLayer, ctx: NormContext) -> int:
        """Peak extra memory this method needs on this layer (an estimate, used for fallbacks)."""
        return 0

    def refuse(self, layer: LinearLayer, ctx: NormContext) -> str | None:
        """Why this method must not run on this layer (too much memory), or None."""
        need = self.memory_bytes(layer, ctx)
        if need > ctx.memory_limit:
            return f"{self.name} needs ~{need / 2**30:.1f} GiB > limit {ctx.memory_limit / 2**30:.1f} GiB"
        return None

    def compute(self, layer: LinearLayer, ctx: NormContext) -> list[NormResult]:
        raise NotImplementedError


METHODS: Registry[str, NormMethod] = Registry("norm methods")


def register_method(cls: type[NormMethod]) -> type[NormMethod]:
    """Class decorator: instantiate the method and register it under `cls.name`."""
    METHODS.add(cls.name, cls())
    return cls


_loaded = False


def load_methods() -> Registry[str, NormMethod]:
    """Import every method module once (each registers itself) and return the registry."""
    global _loaded
    if not _loaded:
        _loaded = True
        from speccert.norms import (  # noqa: F401
            closed_form,
            dense,
            exact,
            fantastic4,
            fft,
            gram,
            lanczos,
            lmt,
            miyato,
            nonnegative,
            power,
        )
    return METHODS
