"""Gate metric `clean_accuracy`: fraction of points correctly classified."""

from __future__ import annotations

from typing import Any

from speccert.gate.metrics import as_float, metric, section


@metric(bound="min", reads="`certificate.clean_accuracy`", fraction=True)
def clean_accuracy(report: dict[str, Any], eps: float | None) -> float | None:
    """fraction of points correctly classified"""
    return as_float(section(report, "certificate").get("clean_accuracy"))
