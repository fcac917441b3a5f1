"""Gate metric `certified_accuracy`: fraction of points correctly classified with certified radius >= eps."""

from __future__ import annotations

from typing import Any

from speccert.gate.metrics import cra_at, metric


@metric(bound="min", reads="`certificate.certified_accuracy` at `eps`", needs_eps=True, fraction=True)
def certified_accuracy(report: dict[str, Any], eps: float | None) -> float | None:
    """fraction of points correctly classified with certified radius >= eps"""
    assert eps is not None
    return cra_at(report, eps)
