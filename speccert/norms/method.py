"""The norm-method contract and its registry (STYLE.md rule 1: one registry per kind of extension).

A method is one module in speccert/norms/methods/ holding a `NormMethod` subclass decorated with
`@register_method("name")`; the registry loads that package itself (`load_methods`), so adding a method
touches that one file. A method declares which layers it applies to (`applies`), how much memory it
needs for a layer (`memory_bytes`, so callers fall back instead of running out of memory), its place in
the `auto` strategy (`auto`, an `AutoRole`) and computes a list of results (`compute`): proven
`UpperBound`s, proven `LowerBound`s or `Estimate`s. Methods are thin: the mathematics lives in kernel
modules of speccert.norms (torus, gram_chain, krylov, explicit, psd, conv_gram, kernel_shapes), and no
method module imports another.

    >>> @register_method("twice_frobenius")                       # doctest: +SKIP
    ... class TwiceFrobenius(NormMethod):
    ...     kinds = ("upper",)
    ...     summary = "2 ||W||_F (a loose bound, for illustration)"
    ...     applies_to = "Linear"
    ...     def applies(self, layer): return layer.matrix() is not None
    ...     def compute(self, layer, ctx): ...
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch

from speccert.limits import REFINE_ABOVE as REFINE_ABOVE  # the norms' default, shared with the checks
from speccert.limits import human
from speccert.norms.layer import LinearLayer
from speccert.norms.result import NormResult
from speccert.registry import Registry

TIGHTEN_ABOVE = (
    1.001  # `auto`'s light refine tier: brackets between this and refine_above (issue 18's median)
)
EXACT_MAX_DIM = 2048  # `exact`'s explicit route: the smaller side of the matrix, at most (n^3 work)
METHODS_PACKAGE = "speccert.norms.methods"


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
        EXACT_MAX_DIM  # `exact` on convs whose smaller Gram side is up to this (above: opt-in, n^3)
    )
    # `auto` runs its "refine" methods on a layer whose upper / proven lower bound is above this (inf: never)
    refine_above: float = REFINE_ABOVE
    # and those with a light budget (`AutoRole.light`) on a layer whose bracket is between this and
    # refine_above (inf, or refine_above inf: never); `refine_light` tells such a method that it runs so
    tighten_above: float = TIGHTEN_ABOVE
    refine_light: bool = False
    # Told what a long computation on one layer is doing now ("lanczos 32/128", "Cholesky 25088x25088"),
    # for progress displays; never changes a result.
    note: Callable[[str], None] | None = None

    def tell(self, text: str) -> None:
        if self.note is not None:
            self.note(text)


Stage = Literal["decisive", "upper", "last_resort", "lower", "refine"]


@dataclass(frozen=True)
class Refusal:
    """Why a method will not run on a layer: `kind` "memory" (its plan exceeds the memory budget, which
    the user can raise: `auto` always says so) or "size" (a fixed size cap of the method, the decisive
    stage's normal case: `auto` passes over it quietly there); `text` says it in words."""

    kind: Literal["memory", "size"]
    text: str


@dataclass(frozen=True)
class AutoRole:
    """How `auto` (speccert.norms.auto) uses a method.

    stage: "decisive" methods (exact to ~1e-9, where they fit) are tried first, in `order`; the first to
    give an upper bound decides the layer (with a lower bound from the "lower" stage if it gave none).
    Otherwise every applicable "upper"
    method runs, in `order`, and the smallest upper bound is kept; "last_resort" methods run only when
    none of them gave one; "lower" methods give the lower bound; "refine" methods (tighter, slower) run
    last, only on a layer whose bracket upper / lower is still above `NormContext.refine_above`, and
    their upper bound joins the minimum. None: auto never runs it.
    light: a "refine" method that also has a cheap budget (it reads `NormContext.refine_light`), which
    auto spends on a layer whose bracket is between `NormContext.tighten_above` and `refine_above`.
    supersedes: methods this one makes redundant once it has given an upper bound on a layer (they are
    not run after it). fallback: position among the upper bounds tried, in order, when the method a user
    asked for gives none (None: never used as a fallback).
    """

    stage: Stage | None = None
    order: int = 0
    supersedes: tuple[str, ...] = ()
    fallback: int | None = None
    light: bool = False


class NormMethod:
    """Base class: one algorithm that bounds or estimates ||A||_2 of some layers."""

    name: ClassVar[str] = "?"  # set by @register_method
    kinds: ClassVar[tuple[str, ...]] = ()  # which of "upper", "lower", "estimate" it produces
    summary: ClassVar[str] = ""  # one line: CLI help and the README's support table
    applies_to: ClassVar[str] = "all"  # which layers, in words (docs/norms.md)
    auto: ClassVar[AutoRole] = AutoRole()

    def applies(self, layer: LinearLayer) -> bool:
        raise NotImplementedError

    def memory_bytes(self, layer: LinearLayer, ctx: NormContext) -> int:
        """Peak extra memory this method needs on this layer (an estimate, used for fallbacks)."""
        return 0

    def refuse(self, layer: LinearLayer, ctx: NormContext) -> Refusal | None:
        """Why this method must not run on this layer (by default: more memory than the limit), or None."""
        return self.over_budget(self.memory_bytes(layer, ctx), ctx.memory_limit)

    def over_budget(self, need: int, limit: int) -> Refusal | None:
        """The memory refusal when `need` bytes exceed `limit`, else None."""
        if need > limit:
            return Refusal("memory", f"{self.name} needs ~{human(need)} > limit {human(limit)}")
        return None

    def auto_order(self, layer: LinearLayer) -> int:
        """Position within its `auto` stage on this layer (default: `auto.order`)."""
        return self.auto.order

    def auto_first(self, layer: LinearLayer, ctx: NormContext) -> bool:
        """For a "refine" method: whether the cheaper bounds are expected to miss `ctx.refine_above` on
        this layer, so that auto runs it first, in place of the "upper" methods it supersedes (default:
        never; for the light tier auto asks with refine_above = tighten_above and refine_light set). Only
        time depends on it: a wrong guess computes a proven bound all the same."""
        return False

    def auto_skip(self, layer: LinearLayer, earlier: Sequence[NormResult]) -> bool:
        """Whether auto may skip this method on this layer given the results already computed."""
        return False

    def compute(self, layer: LinearLayer, ctx: NormContext) -> list[NormResult]:
        raise NotImplementedError


METHODS: Registry[str, NormMethod] = Registry("norm methods")


def register_method(name: str) -> Callable[[type[NormMethod]], type[NormMethod]]:
    """Class decorator: name the method (once, here), instantiate it and register it under that name."""

    def decorator(cls: type[NormMethod]) -> type[NormMethod]:
        cls.name = name
        METHODS.add(name, cls())
        return cls

    return decorator


def load_methods() -> Registry[str, NormMethod]:
    """The registry, with every module of speccert/norms/methods/ imported (each registers itself)."""
    return METHODS.load_package(METHODS_PACKAGE)
