"""Gate metric `lipschitz_upper`: proven upper bound on the model's L2 Lipschitz constant."""

from __future__ import annotations

from typing import Any

from speccert.gate.metrics import as_float, metric, section


@metric(bound="max", reads="`lipschitz.upper`")
def lipschitz_upper(report: dict[str, Any], eps: float | None) -> float | None:
    """proven upper bound on the model's L2 Lipschitz constant"""
    return as_float(section(report, "lipschitz").get("upper"))
