"""The human-readable summary of a certify report (`speccert certify`, and fine-tuning's closing
report): per-layer norms, the Lipschitz bound, certified accuracy per eps, the radius quantiles.

With `--radius-search eps` the per-point kinds (local, crown) tested only the requested eps, so a
point's radius is the best those tests proved: the radius line says so instead of calling it a
searched radius (environment.radius_search in the JSON)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from speccert.cli.common import styled

PER_POINT = ("local", "crown")  # the kinds whose radius comes from a search over balls


def _fmt(v: float | None, spec: str = ".4g") -> str:
    return "-" if v is None else format(v, spec)


def _gain(report_dict: dict[str, Any]) -> str:
    """'; median gain over global Nx' over the points with a positive global radius ('' if none)."""
    ratios = [
        row["radius"] / row["radii"]["global"]
        for row in report_dict.get("samples", [])
        if (row["radii"].get("global") or 0) > 0 and row["radius"] is not None
    ]
    if not ratios or len(report_dict["certificate"]["kinds"]) < 2:
        return ""
    ratios.sort()
    return f"; median gain over global {ratios[len(ratios) // 2]:.3g}x"


def render(report_dict: dict[str, Any], console: Console) -> None:
    """The human-readable summary of a certify report dict (stdout unless --json -)."""
    table = Table(title="Per-layer spectral norms (folded graph)", title_justify="left")
    for col in ("layer", "op", "lower", "upper", "method"):
        table.add_column(col, justify="right" if col in ("lower", "upper") else "left")
    for row in report_dict["layers"]:
        table.add_row(
            row["name"], row["op"], _fmt(row["lower"], ".6g"), _fmt(row["upper"], ".6g"), row["method"]
        )
    console.print(table)
    lip = report_dict["lipschitz"]
    console.print(
        styled(
            "Lipschitz bound of the logits (L2, data space): upper [bold]{}[/], empirical lower {}, ratio {}",
            _fmt(lip["upper"], ".6g"),
            _fmt(lip["lower"], ".6g"),
            _fmt(lip["ratio"], ".3f"),
        )
    )
    cert = report_dict["certificate"]
    console.print(
        styled("Samples: {}   clean accuracy: [bold]{}[/]", cert["n"], f"{cert['clean_accuracy']:.2%}")
    )
    t = Table(title="Certified accuracy (L2)", title_justify="left")
    t.add_column("eps", justify="right")
    t.add_column("certified accuracy", justify="right")
    for e, a in zip(cert["eps"], cert["certified_accuracy"], strict=True):
        t.add_row(f"{e:g}", f"{a:.2%}")
    console.print(t)
    q = cert["radius_quantiles"]
    console.print(
        _radius_label(report_dict)
        + ": median "
        + _fmt(cert["median_radius"], ".4g")
        + "  quantiles "
        + "  ".join(f"{k} {_fmt(v, '.4g')}" for k, v in q.items())
    )
    wins = cert["wins"]
    console.print(
        "Best certificate per point: " + ", ".join(f"{k} {v}" for k, v in wins.items()) + _gain(report_dict)
    )
    skipped = _untested_counts(report_dict)
    if skipped:
        console.print(
            "Not evaluated (the kinds before them certify these points at the largest eps): "
            + ", ".join(f"{k} {v}" for k, v in skipped.items())
        )
    if report_dict.get("audit"):
        a = report_dict["audit"]
        console.print(
            f"Audit: PGD-L2 ({a['restarts']} restarts x {a['steps']} steps) on {a['points']} certified "
            f"points: {a['successes']} successes"
        )
    for note in report_dict.get("notes", []):
        console.print(f"note: {note}", style="dim")
    tm = report_dict["timing"]
    console.print(
        f"time {tm['total_s']:.2f} s (norms {tm.get('norms_s', 0):.2f} s, certificates "
        f"{tm.get('certify_s', 0):.2f} s); {rate(tm.get('certify_samples_per_s', 0))} samples/s vs plain "
        f"inference {rate(tm.get('inference_samples_per_s', 0))} samples/s",
        style="dim",
    )


def _untested_counts(report_dict: dict[str, Any]) -> dict[str, int]:
    """Per kind, the samples eps mode did not evaluate it on (their `untested` lists); empty if none."""
    counts: dict[str, int] = {}
    for row in report_dict.get("samples", []):
        for k in row.get("untested", []):
            counts[k] = counts.get(k, 0) + 1
    return counts


def _radius_label(report_dict: dict[str, Any]) -> str:
    """'Certified radius', in eps mode with a per-point kind saying that it was not searched for."""
    eps_mode = report_dict.get("environment", {}).get("radius_search") == "eps"
    if eps_mode and any(k in PER_POINT for k in report_dict["certificate"]["kinds"]):
        return (
            "Certified radius (--radius-search eps: local/crown tested only the requested eps, so a "
            "lower bound, not a searched radius)"
        )
    return "Certified radius"


def rate(per_s: float) -> str:
    """Samples per second as read: whole numbers from 10 up, three significant digits below (the local
    and crown certificates run at a few seconds per point: 0.0318, not 0)."""
    return f"{per_s:.0f}" if per_s >= 10 else f"{per_s:.3g}"
