"""Side by side: `local`'s full search alone (nothing known) against after the cheap kinds (its steps at
r <= their radius taken as passed without evaluating), on the same points, one process.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/local_known.py

Before = `certify(..., certificates=["local"])` plus the cheap kinds on their own (their best radius is
what certify reported with both before the change); after = one run with both. Prints a Markdown row per
model: s/pt before and after, the speed-up, the median reported radius before -> after, the points whose
reported radius is lower after (must stay 0) and the load.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

import speccert
from speccert.bounds import certify

ROOT = Path(__file__).resolve().parents[1]
CHEAP = ["global", "pairwise", "margin"]
MODELS = [("zoo/mlp", "mlp.onnx", 64), ("zoo/mlp_robust", "mlp_robust.onnx", 64), ("zoo/cnn", "cnn.onnx", 16)]


def main() -> None:
    arrays = np.load(ROOT / "models" / "data" / "fashion_mnist_test_1k.npz")
    print(
        "| model (points) | local s/pt before | after | speed-up | median radius before -> after | lower | load |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, file, n in MODELS:
        g = speccert.load(str(ROOT / "models" / file))
        data = (arrays["x"][:n], arrays["y"][:n])
        load = os.getloadavg()[0]
        alone = certify(g, data, [0.5], certificates=["local"], lower_bound=False)
        cheap = certify(g, data, [0.5], certificates=CHEAP, lower_bound=False)
        both = certify(g, data, [0.5], certificates=[*CHEAP, "local"], lower_bound=False)
        before = np.maximum(alone.radius, cheap.radius)
        t_old = alone.timing["certify_s"] + cheap.timing["certify_s"]
        t_new = both.timing["certify_s"]
        lower = int((both.radius < before * (1 - 1e-12)).sum())
        print(
            f"| {name} ({n}) | {t_old / n:.3g} | {t_new / n:.3g} | {t_old / t_new:.2f}x | "
            f"{np.median(before):.4g} -> {np.median(both.radius):.4g} | {lower} | "
            f"{load:.1f}-{os.getloadavg()[0]:.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
