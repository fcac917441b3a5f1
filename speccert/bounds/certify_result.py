"""The result of `certify()`: plain data, with `to_dict()` giving the versioned JSON report.

The JSON layout is fixed by speccert/bounds/report.schema.json (`SCHEMA_VERSION`); renderers (rich,
Markdown, JUnit) and the gate read the dict, never the objects. Infinite radii (a constant margin)
are written as null.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from speccert.bounds.schema import SCHEMA_VERSION

QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)


def _num(v: float | None) -> float | None:
    if v is None or not math.isfinite(v):
        return None
    return float(v)


def _quantile(r: np.ndarray, q: float) -> float:
    """np.quantile, without interpolating between infinite radii (inf - inf)."""
    if np.isfinite(r).all():
        return float(np.quantile(r, q))
    return float(np.quantile(r, q, method="inverted_cdf"))


@dataclass(frozen=True)
class LayerRow:
    """One linear layer of the folded graph: lower <= ||A||_2 <= upper (upper from `method`)."""

    name: str
    op: str
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    upper: float
    lower: float | None
    method: str
    seconds: float = 0.0


@dataclass(frozen=True)
class AuditSummary:
    """PGD-L2 audit of certified points: `successes` must be 0 (else certify raised InternalError)."""

    points: int
    restarts: int
    steps: int
    successes: int
    max_lead: float | None
    seconds: float


@dataclass
class CertifyReport:
    """Everything certify() found. Per-sample arrays are numpy arrays of length n.

    radius[i] is the best certified L2 radius of sample i in the data space (0 when misclassified),
    kind[i] the certificate that gave it ("none" when the radius is 0); radii[k][i] per kind.
    """

    model: dict[str, Any]
    data: dict[str, Any]
    layers: list[LayerRow]
    lipschitz_upper: float
    lipschitz_lower: float | None
    eps: list[float]
    labels: np.ndarray
    predictions: np.ndarray
    margins: np.ndarray
    radius: np.ndarray
    kind: np.ndarray
    radii: dict[str, np.ndarray]
    kinds: list[str]
    timing: dict[str, float]
    environment: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    audit: AuditSummary | None = None
    lipschitz_extra: dict[str, Any] = field(default_factory=dict)
    # eps mode: per per-point kind, the correctly classified points it did not evaluate because the kinds
    # before it certify them at the largest eps (radii[k][i] is 0 there: not tested, not "no certificate")
    untested: dict[str, np.ndarray] = field(default_factory=dict)

    # ---- derived figures -------------------------------------------------------------------------
    @property
    def n(self) -> int:
        return int(self.labels.shape[0])

    @property
    def correct(self) -> np.ndarray:
        return np.asarray(self.predictions == self.labels)

    @property
    def clean_accuracy(self) -> float:
        return float(self.correct.mean()) if self.n else 0.0

    def certified_accuracy(self, eps: float) -> float:
        """Fraction of samples correctly classified with certified radius >= eps."""
        return float((self.correct & (self.radius >= eps)).mean()) if self.n else 0.0

    @property
    def certified_accuracies(self) -> list[float]:
        return [self.certified_accuracy(e) for e in self.eps]

    @property
    def median_radius(self) -> float:
        return _quantile(self.radius, 0.5) if self.n else 0.0

    def radius_quantiles(self) -> dict[str, float | None]:
        return {f"p{round(q * 100)}": _num(_quantile(self.radius, q)) for q in QUANTILES}

    @property
    def wins(self) -> dict[str, int]:
        out = {k: int((self.kind == k).sum()) for k in self.kinds}
        out["none"] = int((self.kind == "none").sum())
        return out

    @property
    def lipschitz_ratio(self) -> float | None:
        if self.lipschitz_lower is None or self.lipschitz_lower <= 0:
            return None
        return self.lipschitz_upper / self.lipschitz_lower

    # ---- JSON ------------------------------------------------------------------------------------
    def to_dict(self, samples: bool = True) -> dict[str, Any]:
        """The versioned report (see report.schema.json). `samples=False` leaves the list empty."""
        return {
            "schema_version": SCHEMA_VERSION,
            "kind": "certify",
            "model": dict(self.model),
            "data": dict(self.data),
            "layers": [_layer_dict(r) for r in self.layers],
            "lipschitz": {
                "upper": _num(self.lipschitz_upper),
                "lower": _num(self.lipschitz_lower),
                "ratio": _num(self.lipschitz_ratio),
                **self.lipschitz_extra,
            },
            "certificate": self._certificate_dict(),
            "samples": [self._sample_dict(i) for i in range(self.n)] if samples else [],
            "audit": None if self.audit is None else _audit_dict(self.audit),
            "notes": list(self.notes),
            "timing": {k: float(v) for k, v in self.timing.items()},
            "environment": dict(self.environment),
        }

    def _certificate_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "clean_accuracy": self.clean_accuracy,
            "eps": [float(e) for e in self.eps],
            "certified_accuracy": self.certified_accuracies,
            "median_radius": _num(self.median_radius),
            "mean_radius": _num(float(np.mean(self.radius)))
            if self.n and np.isfinite(self.radius).all()
            else None,
            "radius_quantiles": self.radius_quantiles(),
            "kinds": list(self.kinds),
            "wins": self.wins,
            "norm": "l2",
            "space": "data",
        }

    def _sample_dict(self, i: int) -> dict[str, Any]:
        return {
            "index": i,
            "label": int(self.labels[i]),
            "prediction": int(self.predictions[i]),
            "margin": _num(float(self.margins[i])),
            "radius": _num(float(self.radius[i])),
            "certificate": None if self.kind[i] == "none" else str(self.kind[i]),
            "radii": {k: _num(float(v[i])) for k, v in self.radii.items()},
        } | self._untested_of(i)

    def _untested_of(self, i: int) -> dict[str, Any]:
        """{"untested": [kinds]} where eps mode did not evaluate a per-point kind on sample i, else {}."""
        kinds = [k for k in self.kinds if k in self.untested and bool(self.untested[k][i])]
        return {"untested": kinds} if kinds else {}


def _layer_dict(r: LayerRow) -> dict[str, Any]:
    return {
        "name": r.name,
        "op": r.op,
        "in_shape": list(r.in_shape),
        "out_shape": list(r.out_shape),
        "lower": _num(r.lower),
        "upper": _num(r.upper),
        "method": r.method,
        "seconds": r.seconds,
    }


def _audit_dict(a: AuditSummary) -> dict[str, Any]:
    return {
        "points": a.points,
        "restarts": a.restarts,
        "steps": a.steps,
        "successes": a.successes,
        "max_lead": _num(a.max_lead),
        "seconds": a.seconds,
    }
