"""Gate metric `median_radius`: median certified radius over the evaluated points (0 if misclassified)."""

from __future__ import annotations

from typing import Any

from speccert.gate.metrics import as_float, metric, section


@metric(bound="min", reads="`certificate.median_radius`")
def median_radius(report: dict[str, Any], eps: float | None) -> float | None:
    """median certified radius over the evaluated points (0 if misclassified)"""
    return as_float(section(report, "certificate").get("median_radius"))
