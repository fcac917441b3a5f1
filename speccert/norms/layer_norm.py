"""`LayerNorm`: the bracket `layer_norms` (speccert.norms.auto) returns for one linear node."""

from __future__ import annotations

from dataclasses import dataclass, field

from speccert.norms.result import Estimate, LowerBound, NormResult, UpperBound


@dataclass(frozen=True)
class LayerNorm:
    """The bracket for one linear node: `lower.value <= ||A||_2 <= upper.value` (A its linear part).

    `upper` is always a proven bound; `lower` is proven when present; `estimate` is a heuristic
    (e.g. Miyato's), never a bound. `others` holds every result computed, keyed "method/kind";
    `notes` says why a method was skipped or fell back.
    """

    name: str
    op: str
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    upper: UpperBound
    lower: LowerBound | None = None
    others: dict[str, NormResult] = field(default_factory=dict)
    seconds: float = 0.0
    estimate: Estimate | None = None
    notes: tuple[str, ...] = ()

    @property
    def method(self) -> str:
        return self.upper.method

    @property
    def kind(self) -> str:
        return self.upper.kind

    @property
    def iterations(self) -> int:
        return max(self.upper.iterations, self.lower.iterations if self.lower else 0)

    @property
    def gap(self) -> float | None:
        """upper / lower - 1 (None without a positive lower bound)."""
        if self.lower is None or self.lower.value <= 0:
            return None
        return self.upper.value / self.lower.value - 1.0

    def to_dict(self) -> dict[str, object]:
        def res(r: NormResult | None) -> dict[str, object] | None:
            if r is None:
                return None
            return {
                "value": r.value,
                "kind": r.kind,
                "method": r.method,
                "iterations": r.iterations,
                "seconds": r.seconds,
                "note": r.note,
            }

        return {
            "name": self.name,
            "op": self.op,
            "in_shape": list(self.in_shape),
            "out_shape": list(self.out_shape),
            "upper": res(self.upper),
            "lower": res(self.lower),
            "estimate": res(self.estimate),
            "gap": self.gap,
            "seconds": self.seconds,
            "notes": list(self.notes),
            "others": {k: res(v) for k, v in self.others.items()},
        }
