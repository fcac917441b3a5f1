"""The documentation's examples stay true: every policy in docs/gate.md parses, and the CI examples in
docs/ci.md call `speccert gate` with options that exist."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import typer.main
from typer.testing import CliRunner

from speccert.cli.app import app
from speccert.gate.metrics import docs_block, load_metrics
from speccert.gate.policy import parse_policy

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _blocks(path: Path, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", path.read_text(), flags=re.S)


def _gate_options() -> set[str]:
    cmd = typer.main.get_command(app).commands["gate"]  # type: ignore[attr-defined]
    return {o for p in cmd.params for o in p.opts if o.startswith("--")} | {"--help"}


def test_policies_in_gate_md_parse() -> None:
    blocks = _blocks(DOCS / "gate.md", "toml")
    assert len(blocks) >= 2
    for text in blocks:
        pol = parse_policy(tomllib.loads(text), src="docs/gate.md")
        assert pol.rules
    full = parse_policy(tomllib.loads(blocks[1]), src="docs/gate.md")
    # the reference example shows every metric and every [gate] key
    assert {r.metric for r in full.rules} == {
        "certified_accuracy",
        "clean_accuracy",
        "median_radius",
        "lipschitz_upper",
        "max_layer_norm",
    }
    assert full.regression is not None and full.regression.max_clean_drop == 0.01


def _used_options(text: str) -> set[str]:
    calls = re.findall(r"speccert gate[^\n]*(?:\\\n[^\n]*)*", text)
    assert calls
    return {o for call in calls for o in re.findall(r"(--[a-z][a-z-]+)", call)}


@pytest.mark.parametrize("doc", ["ci.md", "gate.md"])
def test_documented_commands_use_real_options(doc: str) -> None:
    used = _used_options((DOCS / doc).read_text())
    assert used <= _gate_options(), used - _gate_options()


def test_ci_yaml_and_makefile_blocks() -> None:
    yaml = pytest.importorskip("yaml")
    (workflow,) = [b for b in _blocks(DOCS / "ci.md", "yaml") if "jobs:" in b]
    doc = yaml.safe_load(workflow)
    steps = doc["jobs"]["gate"]["steps"]
    gate_step = next(s for s in steps if s.get("name") == "speccert gate")
    assert "--junit reports/gate.xml" in gate_step["run"] and '"$GITHUB_STEP_SUMMARY"' in gate_step["run"]
    junit_step = next(s for s in steps if "junit" in s.get("uses", ""))
    assert junit_step["if"].startswith("always()")  # the report is published when the gate fails
    (precommit,) = [b for b in _blocks(DOCS / "ci.md", "yaml") if "repos:" in b]
    hook = yaml.safe_load(precommit)["repos"][0]["hooks"][0]
    assert hook["entry"].startswith("speccert gate") and hook["pass_filenames"] is False
    (make,) = _blocks(DOCS / "ci.md", "make")
    assert all(
        line.startswith("\t") for line in make.splitlines() if line.startswith(("speccert", " speccert"))
    )
    assert "\tspeccert gate $(MODEL)" in make


def test_metric_table_in_gate_md_is_generated_from_the_registry() -> None:
    text = (DOCS / "gate.md").read_text()
    assert docs_block() in text, "docs/gate.md metric table is stale: run `python -m speccert.gate.metrics`"
    for name in load_metrics():
        assert f"| `{name}` |" in docs_block()


def test_gate_help_lists_every_registered_metric() -> None:
    result = CliRunner().invoke(app, ["gate", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "[[gate.rule]]" in result.output  # escaped for rich: the brackets survive
    for name, m in load_metrics().items():
        assert f"{name} ({m.bound}" in result.output and m.description in result.output


def test_readme_gate_section_names_every_metric() -> None:
    readme = (DOCS.parent / "README.md").read_text()
    section = readme[readme.index("### gate") : readme.index("## Exit codes")]
    for name in load_metrics():
        assert f"`{name}`" in section, f"README's gate section does not name metric {name}"
