"""What a fine-tuning run records: one `EpochRecord` per certified epoch, the run's `FinetuneResult`,
and the Pareto front (clean vs certified accuracy) of its epochs."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from speccert.errors import EXIT_FAILED
from speccert.ir.graph import Graph
from speccert.training.targets import Target


@dataclass(frozen=True)
class EpochRecord:
    """The certifier's measurement of one epoch (epoch 0: the input model) on the validation data."""

    epoch: int
    loss: float
    clean: float
    cra: dict[float, float]
    lipschitz: float
    weight: float
    met: bool
    missed: list[str]
    seconds: float
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        """Plain data (weights_only checkpoints and JSON: no float keys)."""
        d = dict(self.__dict__)
        d["cra"] = [[float(k), float(v)] for k, v in self.cra.items()]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EpochRecord:
        d = dict(d)
        d["cra"] = {float(k): float(v) for k, v in d["cra"]}
        return cls(**d)


def dominates(a: EpochRecord, b: EpochRecord, eps: float) -> bool:
    """`a` is at least as good as `b` on clean and certified accuracy at `eps`, and better on one."""
    ca, cb = a.cra.get(eps, 0.0), b.cra.get(eps, 0.0)
    return a.clean >= b.clean and ca >= cb and (a.clean > b.clean or ca > cb)


def replaces_on_tie(history: list[EpochRecord], best_epoch: int, rec: EpochRecord, eps: float) -> bool:
    """On a tie of target scores: a trained epoch `rec` replaces the best one unless that one dominates it
    on clean and certified accuracy at `eps` (the written epoch then stays on the Pareto front)."""
    best = next((r for r in history if r.epoch == best_epoch), None)
    return rec.epoch > 0 and (best is None or not dominates(best, rec, eps))


def pareto_front(history: list[EpochRecord], eps: float) -> list[EpochRecord]:
    """The epochs no other epoch beats on both clean accuracy and certified accuracy at `eps`
    (ties keep the later epoch, trained further: as the best epoch's choice, so the written epoch is
    on the front), sorted by certified accuracy, highest first."""
    front: list[EpochRecord] = []
    for r in history:
        c = r.cra.get(eps, 0.0)
        dominated = any(
            dominates(o, r, eps) or (o.clean == r.clean and o.cra.get(eps, 0.0) == c and o.epoch > r.epoch)
            for o in history
            if o is not r
        )
        if not dominated:
            front.append(r)
    return sorted(front, key=lambda r: (-r.cra.get(eps, 0.0), -r.clean, r.epoch))


@dataclass
class FinetuneResult:
    met: bool
    missed: list[str]
    history: list[EpochRecord]
    best_epoch: int
    output: Path | None
    run_dir: Path | None
    targets: list[Target]
    report: Any = None  # the certify report of the written output (CertifyReport)
    graph: Graph | None = None  # the fine-tuned graph (the best epoch's weights)
    notes: list[str] = field(default_factory=list)
    pareto: list[EpochRecord] = field(default_factory=list)  # see pareto_front; weights in run_dir
    augment: str = "none"  # the training batches' augmentation (speccert.training.augment)
    widened: tuple[tuple[str, int, int], ...] = ()  # --widen: (layer, width before, after)

    @property
    def exit_code(self) -> int:
        return 0 if self.met else EXIT_FAILED


__all__ = ["EpochRecord", "FinetuneResult", "pareto_front"]
