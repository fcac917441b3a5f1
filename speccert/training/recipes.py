"""Named fine-tuning recipes: a penalty with its options plus the optimiser's schedule.

A recipe is plain data (`Recipe`); `register_recipe(Recipe(name=...))` adds it to `RECIPES` under its
own name (written once). `speccert finetune --recipe NAME` starts from the recipe and lets explicit
options (`--lr`, `--epochs`, `--weight`, `--penalty-option`) override it; `--penalty NAME` alone is the
plain recipe of that single penalty (constant learning rate, no clipping: the behaviour before recipes).

Learning rate at global step t of T (a function of t only, so a resumed run is bit-identical):

    lr(t) = lr * min(1, (t + 1) / (w T))                      warm-up over the first fraction w
          * (1 + cos(pi * (t - w T) / (T - w T))) / 2          with lr_decay = "cosine", after warm-up

Every recipe below is documented with its measured figures in docs/finetune.md.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from speccert.errors import UsageError
from speccert.registry import Registry

DECAYS = ("constant", "cosine")
REPARAMS = ("", "aol")


@dataclass(frozen=True)
class Recipe:
    """A penalty, its options and the optimiser schedule, under one name."""

    name: str
    summary: str
    penalty: str
    penalty_weight: float | None = None
    penalty_options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    lr: float = 1e-3
    epochs: int = 10
    warmup: float = 0.0  # fraction of the run's steps with a linear lr ramp
    lr_decay: str = "constant"
    grad_clip: float = 0.0  # max global gradient L2 norm (0: off)
    adapt_weight: bool = True  # WeightSchedule raises/lowers the penalty weight between epochs
    init_lipschitz: float = 0.0  # > 0: first rescale the logits so the certified L is this (rescale.py)
    # "aol": BatchNorm folded into its layer, every hidden Conv/Linear trained as AOL(V) (aol.py)
    reparam: str = ""
    ema: float = 0.0  # > 0: certify and write the moving average of the weights with this decay (ema.py)

    def __post_init__(self) -> None:
        if self.lr_decay not in DECAYS:
            raise UsageError(f"lr_decay must be one of {', '.join(DECAYS)}, got {self.lr_decay!r}")
        if self.reparam not in REPARAMS:
            raise UsageError(f"reparam must be one of {REPARAMS}, got {self.reparam!r}")
        checks = (
            ("warmup", 0.0 <= self.warmup < 1.0, "0 <= warmup < 1"),
            ("grad_clip", self.grad_clip >= 0, "grad_clip >= 0"),
            ("ema", 0 <= self.ema < 1, "0 <= ema < 1 (--ema)"),
            ("lr", self.lr > 0, "lr > 0 (--lr)"),
            ("epochs", self.epochs >= 0, "epochs >= 0 (--epochs)"),
        )
        wrong = [f"{rule}, got {getattr(self, key)!r}" for key, ok, rule in checks if not ok]  # NaN fails too
        if wrong:
            raise UsageError(f"recipe {self.name!r}: need " + "; ".join(wrong))

    def lr_at(self, step: int, total: int) -> float:
        """The learning rate of global step `step` (0-based) of `total` (formula in the module doc)."""
        total = max(total, 1)
        w = self.warmup * total
        if step < w:
            return self.lr * (step + 1) / w
        if self.lr_decay == "cosine":
            frac = min(1.0, (step - w) / max(total - w, 1.0))
            return self.lr * 0.5 * (1.0 + math.cos(math.pi * frac))
        return self.lr


RECIPES: Registry[str, Recipe] = Registry("recipe")


def register_recipe(recipe: Recipe) -> Recipe:
    """Add `recipe` to RECIPES under `recipe.name` (a duplicate name raises)."""
    RECIPES.add(recipe.name, recipe)
    return recipe


def single_penalty(name: str) -> Recipe:
    """The recipe `--penalty NAME` runs: the penalty at its defaults, constant lr 1e-3, no clipping."""
    return Recipe(name=f"penalty:{name}", summary=f"the single penalty {name}", penalty=name)


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise UsageError(f"unknown recipe {name!r}; choose one of: {', '.join(RECIPES.keys())}")
    return RECIPES.get(name)


def recipe_help() -> str:
    """The `--recipe` help text of the CLI, generated from the registry."""
    return "Named recipe: " + "; ".join(f"{k} = {r.summary}" for k, r in RECIPES.items()) + "."


def recipe_table_markdown() -> str:
    """The recipes table of docs/finetune.md, generated from the registry (tests check it is current)."""
    rows = [
        "| recipe | penalty (options) | initial L | layers | lr schedule | clip | epochs | what it is |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for k, r in RECIPES.items():
        opts = ", ".join(f"{a}={v}" for a, v in sorted(r.penalty_options.items()))
        sched = f"{r.lr:g}" + (f", warm-up {r.warmup:g}" if r.warmup else "") + f", {r.lr_decay}"
        pen = f"`{r.penalty}`" + (f" ({opts})" if opts else "")
        init = f"{r.init_lipschitz:g}" if r.init_lipschitz else "-"
        layers = {"": "plain", "aol": "AOL (BN folded)"}[r.reparam]
        rows.append(
            f"| `{k}` | {pen} | {init} | {layers} | {sched} | {r.grad_clip:g} | {r.epochs} | {r.summary} |"
        )
    return "\n".join(rows)


# The recipes. Each line's figures (and how they were measured) are in docs/finetune.md. All three
# share the LMT pairwise margin ramped in over a fraction of the run, cosine lr decay and a fixed
# weight (the schedule only decides when to stop); they differ in the start and the layers.
_LMT_SCHEDULE: dict[str, Any] = {"penalty": "lmt", "epochs": 20, "lr_decay": "cosine", "adapt_weight": False}


def _lmt(name: str, summary: str, anneal: float, **fields: Any) -> Recipe:
    """A recipe on `_LMT_SCHEDULE` with the margin ramped over the fraction `anneal` of the run."""
    opts = MappingProxyType({"anneal": anneal})
    return register_recipe(Recipe(name=name, summary=summary, penalty_options=opts, **_LMT_SCHEDULE | fields))


_lmt(
    "lmt-rescale",
    "logits rescaled to certified L = 1 first, then lmt-anneal's schedule",
    anneal=0.3,
    init_lipschitz=1.0,
)
_lmt(
    "aol-lmt",
    "BatchNorm folded, hidden layers trained as AOL(V) (1-Lipschitz), lmt pairwise margin",
    anneal=0.3,
    lr=5e-3,
    reparam="aol",
)
_lmt(
    "lmt-anneal",
    "LMT pairwise margin ramped from 0 over the first half of the run, cosine lr decay",
    anneal=0.5,
)

__all__ = ["RECIPES", "Recipe", "get_recipe", "recipe_help", "recipe_table_markdown", "register_recipe"]
