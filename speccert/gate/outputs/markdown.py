"""Markdown summary of a gate run, for pull-request comments and GitHub's job summary.

Sections: a verdict line, the model/data/method line, the rules table (value, threshold, result), the
certified accuracy by radius (with the baseline when there is one), the worst layers (largest proven
spectral-norm upper bounds), and notes. Written in append mode, so it can target $GITHUB_STEP_SUMMARY.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from speccert.gate.metrics import as_float, cra_at, section
from speccert.gate.outputs import register_output

if TYPE_CHECKING:
    from speccert.gate.workflow import GateResult

WORST_LAYERS = 10


def cell(text: object) -> str:
    """Text safe inside a Markdown table cell (pipes escaped, no line breaks)."""
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def num(v: Any, digits: int = 4) -> str:
    f = as_float(v)
    if f is None:
        return "—"
    if math.isinf(f):
        return "∞" if f > 0 else "−∞"
    return f"{f:.{digits}g}"


def worst_layers(report: dict[str, Any], k: int = WORST_LAYERS) -> list[dict[str, Any]]:
    """The k layers with the largest spectral-norm upper bound (ties keep graph order)."""
    layers = [lay for lay in report.get("layers") or [] if isinstance(lay, dict)]
    return sorted(layers, key=lambda lay: -(as_float(lay.get("upper")) or 0.0))[:k]


def _header(result: GateResult) -> list[str]:
    model, cert, env = (section(result.report, k) for k in ("model", "certificate", "environment"))
    failed = len(result.failures)
    verdict = "✅ **passed**" if result.passed else f"❌ **failed** ({failed} of {len(result.rules)} rules)"
    sha = str(model.get("sha256") or "")[:12]
    facts = [
        f"model `{cell(model.get('path') or '(in-memory graph)')}`" + (f" (sha256 `{sha}`)" if sha else "")
    ]
    if cert.get("n") is not None:
        facts.append(f"{cert['n']} points")
    facts.append(f"method `{cell(env.get('method', result.policy.method))}`")
    facts.append(f"device `{cell(env.get('device', result.policy.device))}`")
    facts.append(f"{result.seconds:.1f} s")
    return ["", f"## speccert gate: {verdict}", "", " · ".join(facts), ""]


def _rules_table(result: GateResult) -> list[str]:
    lines = ["| Rule | Value | Threshold | Result |", "|---|---:|---:|:---:|"]
    for r in result.rules:
        value = num(r.value) + (f" (baseline {num(r.baseline)})" if r.baseline is not None else "")
        lines.append(
            f"| {cell(r.name)} | {value} | {r.op} {num(r.threshold)} | {'✅ pass' if r.passed else '❌ fail'} |"
        )
    return [*lines, ""]


def _certificate(result: GateResult) -> list[str]:
    report = result.report
    cert, lip = section(report, "certificate"), section(report, "lipschitz")
    bound = (
        f"Lipschitz constant in [{num(lip.get('lower'))}, {num(lip.get('upper'))}]"
        if lip.get("lower") is not None
        else f"Lipschitz constant <= {num(lip.get('upper'))}"
    )
    lines = [
        f"Clean accuracy {num(cert.get('clean_accuracy'))} · {bound} · median certified radius "
        f"{num(cert.get('median_radius'))}",
        "",
    ]
    radii = [e for e in (as_float(x) for x in cert.get("eps") or []) if e is not None]
    if radii:
        base = result.extra.get("baseline_report")
        lines += [
            "| eps | certified accuracy |" + (" baseline |" if base else ""),
            "|---:|---:|" + ("---:|" if base else ""),
        ]
        for e in radii:
            lines.append(
                f"| {e:g} | {num(cra_at(report, e))} |" + (f" {num(cra_at(base, e))} |" if base else "")
            )
        lines.append("")
    return lines


def _worst_layers(report: dict[str, Any]) -> list[str]:
    worst = worst_layers(report)
    if not worst:
        return []
    lines = [
        f"### Worst layers (largest spectral-norm upper bound, top {len(worst)})",
        "",
        "| Layer | Op | Lower | Upper | Method |",
        "|---|---|---:|---:|---|",
    ]
    for lay in worst:
        lines.append(
            f"| {cell(lay.get('name', '?'))} | {cell(lay.get('op', ''))} | {num(lay.get('lower'))} | "
            f"{num(lay.get('upper'))} | {cell(lay.get('method', ''))} |"
        )
    return [*lines, ""]


@register_output("markdown", append=True)
def render_markdown(result: GateResult) -> str:
    """The gate result as a Markdown section (starts and ends with a blank line, for appending)."""
    report = result.report
    lines = _header(result) + _rules_table(result) + _certificate(result) + _worst_layers(report)
    notes = list(result.notes) + [f"certify: {n}" for n in report.get("notes") or [] if isinstance(n, str)]
    if notes:
        lines += [f"- {cell(n)}" for n in notes] + [""]
    return "\n".join(lines) + "\n"
