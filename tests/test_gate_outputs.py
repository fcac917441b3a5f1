"""Renderings of a gate result: JUnit XML, Markdown, and the gate JSON against its schema."""

from __future__ import annotations

import copy
import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from gate_report_dicts import report

import speccert
from speccert.errors import InputError
from speccert.gate.outputs import load_outputs, register_output, write_output
from speccert.gate.outputs.junit import render_junit
from speccert.gate.outputs.markdown import render_markdown, worst_layers
from speccert.gate.policy import DataSpec, Policy, RegressionSpec, make_rule
from speccert.gate.workflow import GateResult, evaluate, validate_gate
from speccert.ir import Activation, Graph, Linear, Node, Reshape


def _result(**kw: Any) -> GateResult:
    r = report(uppers=tuple(float(i) for i in range(14)), **kw)
    r["layers"][3]["name"] = "a|b <odd> & name"
    pol = Policy(
        rules=(
            make_rule("certified_accuracy", min=0.7, eps=0.25),
            make_rule("clean_accuracy", min=0.5),
            make_rule("lipschitz_upper", max=10, name='L <= 10 & "tight"'),
        ),
        regression=RegressionSpec(max_cra_drop=0.0),
    )
    return evaluate(
        r, pol, report(cra=(0.8, 0.65, 0.3), sha="f" * 64), baseline_source="last.json", seconds=1.5
    )


def test_registry_lists_both_formats_and_refuses_duplicates() -> None:
    assert {"junit", "markdown"} <= set(load_outputs().keys())
    with pytest.raises(KeyError, match="already registered"):
        register_output("junit", append=False)(render_junit)


def test_junit_parses_and_counts() -> None:
    res = _result()
    xml = render_junit(res)
    assert xml == render_junit(res)  # no timestamps: the same result gives the same file
    root = ET.fromstring(xml)
    suite = root.find("testsuite")
    assert suite is not None
    cases = suite.findall("testcase")
    failed = [c for c in cases if c.find("failure") is not None]
    # rules: cra@0.25 (0.6 < 0.7 fails), clean passes, L=12 > 10 fails; regression: cra@0.25 0.6 < 0.65 fails,
    # cra@0.1 and @0.5 equal pass, L 12 <= 12*1.05 passes
    assert len(cases) == len(res.rules) == 7
    assert [c.get("name") for c in failed] == [
        "certified_accuracy@0.25 >= 0.7",
        'L <= 10 & "tight"',
        "no_regression: certified_accuracy@0.25",
    ]
    assert root.get("tests") == suite.get("tests") == "7"
    assert root.get("failures") == suite.get("failures") == "3"
    first = failed[0].find("failure")
    assert first is not None
    assert "0.6" in (first.get("message") or "") and ">= 0.7" in (first.get("message") or "")
    assert "baseline 0.65" in (failed[2].find("failure").text or "")  # type: ignore[union-attr]
    assert {c.get("classname") for c in cases} == {"speccert.gate.m_onnx"}
    props = {p.get("name"): p.get("value") for p in suite.iter("property")}
    assert props["model.sha256"] == "a" * 64


def test_markdown_tables() -> None:
    res = _result()
    md = render_markdown(res)
    lines = md.splitlines()
    assert any(line.startswith("## speccert gate: ❌ **failed** (3 of 7 rules)") for line in lines)
    header = lines.index("| Rule | Value | Threshold | Result |")
    rows = []
    for line in lines[header + 2 :]:
        if not line.startswith("|"):
            break
        rows.append(line)
    assert len(rows) == 7 and sum("❌ fail" in r for r in rows) == 3
    assert "| certified_accuracy@0.25 >= 0.7 | 0.6 | >= 0.7 | ❌ fail |" in rows
    assert any("0.6 (baseline 0.65)" in r for r in rows)
    # worst layers: the 10 largest upper bounds, largest first; pipes escaped so the table stays a table
    w = lines.index("| Layer | Op | Lower | Upper | Method |")
    layer_rows = [ln for ln in lines[w + 2 : w + 12]]
    assert all(ln.startswith("| l") or ln.startswith("| a") for ln in layer_rows)
    assert [float(r.split("|")[4]) for r in layer_rows] == [
        13.0,
        12.0,
        11.0,
        10.0,
        9.0,
        8.0,
        7.0,
        6.0,
        5.0,
        4.0,
    ]
    assert [lay["upper"] for lay in worst_layers(res.report, 3)] == [13.0, 12.0, 11.0]
    assert "a\\|b" not in md  # layer 3 (upper 3.0) is not among the worst 10
    odd = report(uppers=(5.0,))
    odd["layers"][0]["name"] = "a|b"
    md2 = render_markdown(evaluate(odd, Policy(rules=(make_rule("clean_accuracy", min=0.1),))))
    assert "| a\\|b | Linear |" in md2 and "✅ **passed**" in md2
    assert "| eps | certified accuracy | baseline |" in md  # radii table with the baseline column


def test_markdown_appends_and_junit_replaces(tmp_path: Path) -> None:
    res = _result()
    md, xml = tmp_path / "summary.md", tmp_path / "gate.xml"
    md.write_text("previous step\n")
    xml.write_text("stale-content")
    write_output("markdown", res, md)
    write_output("markdown", res, md)
    write_output("junit", res, xml)
    text = md.read_text()
    assert text.startswith("previous step\n") and text.count("## speccert gate") == 2
    assert xml.read_text().startswith("<?xml") and "stale-content" not in xml.read_text()


@pytest.fixture(scope="module")
def gated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Graph, GateResult]:
    """speccert.gate() on an in-memory 16-8-3 graph: a real certify report inside the gate JSON."""
    torch.manual_seed(0)
    g = Graph(
        (1, 4, 4),
        [
            Node("f", Reshape((-1,)), ("input",)),
            Node("l1", Linear(torch.randn(8, 16) * 0.3, torch.zeros(8)), ("f",)),
            Node("r", Activation("relu"), ("l1",)),
            Node("l2", Linear(torch.randn(3, 8) * 0.3, torch.zeros(3)), ("r",)),
        ],
    )
    x = torch.rand(30, 1, 4, 4)
    path = tmp_path_factory.mktemp("data") / "d.npz"
    np.savez(path, x=x.numpy(), y=g.forward(x).argmax(1).numpy())
    pol = Policy(
        data=DataSpec(path=str(path)),
        eps=(0.02,),
        rules=(make_rule("certified_accuracy", min=0.1, eps=0.05), make_rule("max_layer_norm", max=100)),
    )
    res: GateResult = speccert.gate(g, pol)
    return g, res


@pytest.fixture(scope="module")
def real_gate(gated: tuple[Graph, GateResult]) -> GateResult:
    return gated[1]


def test_gate_json_validates_against_schema(real_gate: GateResult) -> None:
    doc = json.loads(json.dumps(real_gate.to_dict()))
    validate_gate(doc)
    assert doc["report"]["certificate"]["eps"] == [0.02, 0.05]  # the rule's radius was certified too
    assert doc["passed"] is real_gate.passed


@pytest.mark.parametrize(
    "tamper",
    [
        lambda d: d.update(passed=not d["passed"]),  # verdict disagrees with the rules
        lambda d: d["report"].pop("certificate"),  # embedded report checked by its schema
        lambda d: d["rules"][0].update(op="=="),
        lambda d: d.update(extra_key=1),
        lambda d: d.update(schema_version="2"),
    ],
)
def test_schema_rejects_broken_documents(real_gate: GateResult, tamper: Any) -> None:
    doc = copy.deepcopy(json.loads(json.dumps(real_gate.to_dict())))
    tamper(doc)
    with pytest.raises(InputError):
        validate_gate(doc)


def test_same_graph_and_policy_give_the_same_numbers(gated: tuple[Graph, GateResult]) -> None:
    graph, real_gate = gated
    again = speccert.gate(graph, real_gate.policy)
    a, b = real_gate.to_dict()["report"], again.to_dict()["report"]
    assert a["certificate"] == b["certificate"]
    assert a["lipschitz"] == b["lipschitz"] and a["samples"] == b["samples"]
    strip = lambda layers: [{k: v for k, v in lay.items() if k != "seconds"} for lay in layers]  # noqa: E731
    assert strip(a["layers"]) == strip(b["layers"])
    assert [r.to_dict() for r in real_gate.rules] == [r.to_dict() for r in again.rules]
