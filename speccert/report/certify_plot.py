"""Certified accuracy against eps as a PNG (matplotlib, the `plot` extra)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from speccert.bounds.certify_result import CertifyReport
from speccert.errors import InputError, UsageError


def certified_accuracy_curve(report: CertifyReport, points: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """(eps grid from 0 to past the largest finite radius / requested eps, certified accuracy at each)."""
    finite = report.radius[np.isfinite(report.radius)]
    top = max([*report.eps, float(finite.max()) if finite.size else 0.0, 1e-3]) * 1.05
    grid = np.linspace(0.0, top, points)
    correct = report.correct
    acc = np.array([float((correct & (report.radius >= e)).mean()) for e in grid])
    return grid, acc


def plot_certified_accuracy(report: CertifyReport, path: str | Path, title: str | None = None) -> None:
    """Write the certified-accuracy-vs-eps curve, with the requested eps marked, to `path` (PNG)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UsageError(
            "--plot needs matplotlib: pip install 'speccert[plot]' (or pip install matplotlib)"
        ) from None
    target = Path(path)
    if target.is_dir():
        raise UsageError(f"--plot {path}: is a folder")
    grid, acc = certified_accuracy_curve(report)
    fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=120)
    ax.plot(grid, acc, color="tab:blue", label="certified accuracy")
    ax.scatter(report.eps, report.certified_accuracies, color="tab:red", zorder=3, label="requested eps")
    ax.axhline(report.clean_accuracy, color="gray", linestyle="--", linewidth=0.8, label="clean accuracy")
    ax.set_xlabel("L2 radius eps (data space)")
    ax.set_ylabel("certified accuracy")
    ax.set_ylim(0, 1.02)
    ax.set_xlim(0, grid[-1])
    ax.set_title(title or Path(str(report.model.get("path") or "model")).name)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    try:
        fig.savefig(target, format="png")
    except OSError as exc:
        raise InputError(f"--plot {path}: cannot write ({exc})") from None
    finally:
        plt.close(fig)
