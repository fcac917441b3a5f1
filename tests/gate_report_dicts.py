"""Hand-built certify report dicts (the shape of `CertifyReport.to_dict()`) for the gate tests."""

from __future__ import annotations

from typing import Any


def report(
    cra: tuple[float, ...] = (0.8, 0.6, 0.3),
    eps: tuple[float, ...] = (0.1, 0.25, 0.5),
    clean: float = 0.9,
    lip: float | None = 12.0,
    uppers: tuple[float | None, ...] = (2.0, 3.5, 1.0),
    sha: str = "a" * 64,
    n: int = 100,
) -> dict[str, Any]:
    return {
        "schema_version": "1.0.0",
        "kind": "certify",
        "model": {"path": "m.onnx", "sha256": sha, "format": "onnx"},
        "layers": [
            {"name": f"l{i}", "op": "Linear", "lower": u, "upper": u, "method": "dense"}
            for i, u in enumerate(uppers)
        ],
        "lipschitz": {"upper": lip, "lower": 1.0},
        "certificate": {
            "n": n,
            "clean_accuracy": clean,
            "eps": list(eps),
            "certified_accuracy": list(cra),
            "median_radius": 0.3,
        },
        "environment": {"method": "auto", "device": "cpu", "seed": 0},
    }
