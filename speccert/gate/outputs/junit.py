"""JUnit XML for CI test tabs: one test suite per gate run, one test case per rule.

A failed rule is a `<failure>` whose message states the measured value and the threshold, so the
pipeline's test view reads like the gate's table. Counts obey the JUnit convention
tests = number of rules, failures = number of failed rules, errors = 0 (errors abort the gate: exit 2-5).
No timestamps or host names are written, so the same run gives the same file.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import TYPE_CHECKING, Any

from speccert.gate.outputs import register_output

if TYPE_CHECKING:
    from speccert.gate.workflow import GateResult


def _model_name(report: dict[str, Any]) -> str:
    model = report.get("model") if isinstance(report.get("model"), dict) else {}
    return str((model or {}).get("path") or "model")


def _value(v: float | None) -> str:
    return "missing" if v is None else f"{v:.6g}"


@register_output("junit", append=False)
def render_junit(result: GateResult) -> str:
    """The gate result as a JUnit XML document (a string, UTF-8 declared)."""
    model = _model_name(result.report)
    n, failed = len(result.rules), len(result.failures)
    seconds = f"{result.seconds:.3f}"
    root = ET.Element(
        "testsuites", name="speccert gate", tests=str(n), failures=str(failed), errors="0", time=seconds
    )
    suite = ET.SubElement(
        root,
        "testsuite",
        name=f"speccert gate {model}",
        tests=str(n),
        failures=str(failed),
        errors="0",
        skipped="0",
        time=seconds,
    )
    props = ET.SubElement(suite, "properties")
    model_info = result.report.get("model") if isinstance(result.report.get("model"), dict) else {}
    env = result.report.get("environment") if isinstance(result.report.get("environment"), dict) else {}
    for key, value in (
        ("model", model),
        ("model.sha256", (model_info or {}).get("sha256")),
        ("policy", result.policy.source),
        ("method", result.policy.method),
        ("device", (env or {}).get("device", result.policy.device)),
        ("seed", result.policy.seed),
    ):
        if value is not None and value != "":
            ET.SubElement(props, "property", name=key, value=str(value))
    # dots split class names into packages in CI test views: keep the file name one segment
    classname = "speccert.gate." + model.replace("\\", "/").split("/")[-1].replace(".", "_")
    for rule in result.rules:
        case = ET.SubElement(suite, "testcase", classname=classname, name=rule.name, time="0")
        if not rule.passed:
            base = f"; baseline {_value(rule.baseline)}" if rule.baseline is not None else ""
            failure = ET.SubElement(case, "failure", type="GateRuleFailed", message=f"{rule.message}")
            failure.text = (
                f"measured: {_value(rule.value)}\nrequired: {rule.op} {rule.threshold:.6g}{base}\n"
                f"{rule.message}"
            )
        else:
            out = ET.SubElement(case, "system-out")
            out.text = rule.message
    if result.notes:
        notes = ET.SubElement(suite, "system-out")
        notes.text = "\n".join(result.notes)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
