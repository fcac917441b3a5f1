"""The registry of gate metrics: each reads one number from a certify report dict.

A metric is one decorated function; its name is the function's name, its description the first line
of its docstring, so both are written once:

    @metric(bound="min", reads="`certificate.clean_accuracy`", fraction=True)
    def clean_accuracy(report, eps):   # docstring: "fraction of points correctly classified"
        return as_float(section(report, "certificate").get("clean_accuracy"))

`bound` says which side a rule takes: "min" (passed <=> value >= threshold) or "max" (value <=
threshold). A reader returns None when the report does not hold the number (a rule on it never passes).
The policy reference in docs/gate.md and the metric list in `speccert gate --help` are generated from
`METRICS`; `python -m speccert.gate.metrics` rewrites the docs table, and a test fails when it is stale.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from speccert.registry import Registry

__all__ = ["METRICS", "Metric", "as_float", "cra_at", "metric", "metrics_help", "metrics_table_markdown"]

EPS_MATCH = 1e-9  # radii are user-typed decimals: 0.25 in the policy is 0.25 in the report

Reader = Callable[[dict[str, Any], float | None], float | None]


@dataclass(frozen=True)
class Metric:
    """A number read from a certify report. `bound` is "min" (rules say value >= threshold) or "max";
    `reads` names the report field(s) for the docs; `fraction` metrics are accuracies in [0, 1]."""

    name: str
    bound: str
    read: Reader
    description: str
    reads: str
    needs_eps: bool = False
    fraction: bool = False


METRICS: Registry[str, Metric] = Registry("gate metric")


def metric(
    *, bound: str, reads: str, needs_eps: bool = False, fraction: bool = False
) -> Callable[[Reader], Reader]:
    """Register the decorated reader as the metric named after the function (a duplicate raises)."""
    if bound not in ("min", "max"):
        raise ValueError(f"bound must be 'min' or 'max', got {bound!r}")

    def deco(fn: Reader) -> Reader:
        doc = (fn.__doc__ or "").strip().splitlines()
        if not doc:
            raise ValueError(f"metric {fn.__name__!r} needs a docstring (its description)")
        METRICS.add(fn.__name__, Metric(fn.__name__, bound, fn, doc[0], reads, needs_eps, fraction))
        return fn

    return deco


def as_float(v: Any) -> float | None:
    """A report number as a float: plain numbers, "inf"/"nan" strings, or {"value": x} wrappers."""
    if isinstance(v, dict) and "value" in v:
        v = v["value"]
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, int | float):
        return float(v)
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return None
    return None


def section(report: dict[str, Any], key: str) -> dict[str, Any]:
    """`report[key]` when it is a table, else {} (a missing section reads as missing values)."""
    s = report.get(key)
    return s if isinstance(s, dict) else {}


def cra_at(report: dict[str, Any], eps: float) -> float | None:
    """Certified accuracy at radius `eps` (matched to the report's radii within 1e-9), or None."""
    cert = section(report, "certificate")
    radii, accs = cert.get("eps") or [], cert.get("certified_accuracy") or []
    for r, a in zip(radii, accs, strict=False):
        rf = as_float(r)
        if rf is not None and abs(rf - eps) <= EPS_MATCH * max(1.0, abs(eps)):
            return as_float(a)
    return None


@metric(bound="min", reads="`certificate.certified_accuracy` at `eps`", needs_eps=True, fraction=True)
def certified_accuracy(report: dict[str, Any], eps: float | None) -> float | None:
    """fraction of points correctly classified with certified radius >= eps"""
    assert eps is not None
    return cra_at(report, eps)


@metric(bound="min", reads="`certificate.clean_accuracy`", fraction=True)
def clean_accuracy(report: dict[str, Any], eps: float | None) -> float | None:
    """fraction of points correctly classified"""
    return as_float(section(report, "certificate").get("clean_accuracy"))


@metric(bound="min", reads="`certificate.median_radius`")
def median_radius(report: dict[str, Any], eps: float | None) -> float | None:
    """median certified radius over the evaluated points (0 if misclassified)"""
    return as_float(section(report, "certificate").get("median_radius"))


@metric(bound="max", reads="`lipschitz.upper`")
def lipschitz_upper(report: dict[str, Any], eps: float | None) -> float | None:
    """proven upper bound on the model's L2 Lipschitz constant"""
    return as_float(section(report, "lipschitz").get("upper"))


@metric(bound="max", reads="max of `layers[].upper`")
def max_layer_norm(report: dict[str, Any], eps: float | None) -> float | None:
    """largest proven upper bound on a layer's spectral norm"""
    uppers = [as_float(layer.get("upper")) for layer in report.get("layers") or [] if isinstance(layer, dict)]
    if not uppers or any(u is None for u in uppers):
        return None
    return max(u for u in uppers if u is not None)


def metrics_table_markdown() -> str:
    """The policy reference's metric table (docs/gate.md), one row per registered metric."""
    rows = ["| metric | bound | what it is | reads | needs `eps` |", "|---|---|---|---|---|"]
    for name, m in METRICS.items():
        bound = f"`{m.bound}`" + (" (a fraction in [0, 1])" if m.fraction else "")
        rows.append(
            f"| `{name}` | {bound} | {m.description} | {m.reads} | {'yes' if m.needs_eps else 'no'} |"
        )
    return "\n".join(rows)


def metrics_help() -> str:
    """One line per metric for `speccert gate --help` (rich markup: brackets escaped)."""
    lines = []
    for name, m in METRICS.items():
        eps = ", at eps" if m.needs_eps else ""
        lines.append(f"{name} ({m.bound}{eps}): {m.description}".replace("[", "\\["))
    return "\n\n".join(lines)


DOCS_BEGIN = "<!-- gate-metrics:begin (generated by python -m speccert.gate.metrics) -->"
DOCS_END = "<!-- gate-metrics:end -->"


def docs_block() -> str:
    return f"{DOCS_BEGIN}\n{metrics_table_markdown()}\n{DOCS_END}"


def rewrite_docs(path: Path) -> bool:
    """Replace the generated block in `path`; True when the file changed."""
    text = path.read_text(encoding="utf-8")
    start, end = text.index(DOCS_BEGIN), text.index(DOCS_END) + len(DOCS_END)
    new = text[:start] + docs_block() + text[end:]
    if new != text:
        path.write_text(new, encoding="utf-8")
    return new != text


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[2] / "docs/gate.md"
    print(f"{target}: {'rewritten' if rewrite_docs(target) else 'up to date'}")  # noqa: T201
