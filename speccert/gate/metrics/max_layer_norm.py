"""Gate metric `max_layer_norm`: largest proven upper bound on a layer's spectral norm."""

from __future__ import annotations

from typing import Any

from speccert.gate.metrics import as_float, metric


@metric(bound="max", reads="max of `layers[].upper`")
def max_layer_norm(report: dict[str, Any], eps: float | None) -> float | None:
    """largest proven upper bound on a layer's spectral norm"""
    uppers = [as_float(layer.get("upper")) for layer in report.get("layers") or [] if isinstance(layer, dict)]
    if not uppers or any(u is None for u in uppers):
        return None
    return max(u for u in uppers if u is not None)
