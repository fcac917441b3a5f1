"""`speccert gate` through the real console script: exit codes, reports, baseline, bad inputs.

Models are tiny ONNX files built with onnx.helper (Flatten -> Gemm -> Relu -> Gemm on 1x4x4 inputs) and
data labelled by the model itself; one test runs the bundled MLP (models/mlp.onnx) on 100 points.
Ground truth for thresholds: dense SVD of the weights (a layer's proven upper bound is >= its norm).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import gate_report_dicts
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from speccert.gate.workflow import validate_gate

REPO = Path(__file__).resolve().parents[1]
# The console script beside this interpreter first (a venv run without activating it), then PATH.
SPECCERT = shutil.which("speccert", path=os.path.dirname(sys.executable)) or shutil.which("speccert")
pytestmark = pytest.mark.skipif(SPECCERT is None, reason="the speccert console script is not installed")


def _save(path: Path, nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto], n_out: int) -> None:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", n_out])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """A 16-8-3 ReLU MLP as ONNX, 40 points labelled by it, and its weights."""
    root = tmp_path_factory.mktemp("gate")
    rng = np.random.default_rng(0)
    w1 = (rng.standard_normal((8, 16)) * 0.4).astype(np.float32)
    b1 = (rng.standard_normal(8) * 0.1).astype(np.float32)
    w2 = (rng.standard_normal((3, 8)) * 0.4).astype(np.float32)
    b2 = np.zeros(3, np.float32)
    nodes = [
        helper.make_node("Flatten", ["x"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "w1", "b1"], ["h"], transB=1),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], transB=1),
    ]
    inits = [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"))]
    _save(root / "tiny.onnx", nodes, inits, 3)
    x = rng.random((40, 1, 4, 4)).astype(np.float32)
    h = np.maximum(x.reshape(40, -1).astype(np.float64) @ w1.T + b1, 0)
    y = (h @ w2.T + b2).argmax(1)
    np.savez(root / "data.npz", x=x, y=y)
    norms = [float(np.linalg.svd(w.astype(np.float64), compute_uv=False)[0]) for w in (w1, w2)]
    return {"root": root, "model": root / "tiny.onnx", "data": root / "data.npz", "max_norm": max(norms)}


def run(*args: object, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    env.pop("SPECCERT_DEBUG", None)
    return subprocess.run(
        [str(SPECCERT), "gate", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=600,
    )


def junit_counts(path: Path) -> tuple[int, int, list[ET.Element]]:
    suite = ET.parse(path).getroot().find("testsuite")
    assert suite is not None
    cases = suite.findall("testcase")
    assert int(suite.get("tests", "-1")) == len(cases)
    failed = [c for c in cases if c.find("failure") is not None]
    assert int(suite.get("failures", "-1")) == len(failed)
    return len(cases), len(failed), failed


@pytest.fixture(scope="module")
def passed(tiny: dict[str, object]) -> tuple[subprocess.CompletedProcess[str], Path]:
    """One passing gate run from a policy file, with every report written (reused as a baseline)."""
    root = tiny["root"]
    assert isinstance(root, Path)
    policy = root / "speccert.toml"
    policy.write_text(f"""
[gate]
eps = [0.01, 0.05]
[gate.data]
path = "data.npz"
[[gate.rule]]
metric = "clean_accuracy"
min = 1.0
[[gate.rule]]
metric = "max_layer_norm"
max = {tiny["max_norm"] * 1.001}
[[gate.rule]]
metric = "certified_accuracy"
eps = 0.01
min = 0.0
""")
    (root / "summary.md").write_text("# earlier step\n")
    p = run(
        tiny["model"],
        "--policy",
        policy,
        "--json",
        root / "pass.json",
        "--junit",
        root / "pass.xml",
        "--markdown",
        root / "summary.md",
    )
    return p, root


def test_passing_policy_exit_0_and_reports(passed: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    p, root = passed
    assert p.returncode == 0, p.stdout + p.stderr
    assert "PASSED" in p.stdout and "max_layer_norm" in p.stdout
    doc = json.loads((root / "pass.json").read_text())
    validate_gate(doc)
    assert doc["passed"] is True and doc["summary"] == {"rules": 3, "failed": 0}
    assert doc["report"]["certificate"]["clean_accuracy"] == 1.0  # the data is labelled by the model
    assert doc["report"]["certificate"]["eps"] == [0.01, 0.05]
    assert junit_counts(root / "pass.xml")[:2] == (3, 0)
    md = (root / "summary.md").read_text()
    assert md.startswith("# earlier step\n")  # appended, not truncated
    assert "| Rule | Value | Threshold | Result |" in md and md.count("✅ pass") == 3
    assert "Worst layers" in md


def test_failing_rules_exit_1_with_values_in_junit(tiny: dict[str, object]) -> None:
    root = tiny["root"]
    assert isinstance(root, Path)
    below = float(tiny["max_norm"]) * 0.99  # type: ignore[arg-type]  # a sound upper bound is above this
    p = run(
        tiny["model"],
        "--data",
        tiny["data"],
        "--min-cra",
        "1.0@50",
        "--max-layer-norm",
        f"{below:.6f}",
        "--min-clean",
        "0.5",
        "--junit",
        root / "fail.xml",
        "--json",
        "-",
    )
    assert p.returncode == 1, p.stderr
    doc = json.loads(p.stdout)  # --json - keeps stdout pure JSON; the table goes to stderr
    validate_gate(doc)
    assert doc["passed"] is False and doc["exit_code"] == 1
    assert "FAILED" in p.stderr and "2 of 3" in p.stderr
    n, failed, cases = junit_counts(root / "fail.xml")
    assert (n, failed) == (3, 2)
    names = {c.get("name") for c in cases if c.find("failure") is not None}
    assert names == {"certified_accuracy@50 >= 1", f"max_layer_norm <= {float(f'{below:.6f}'):.12g}"}
    msg = [c.find("failure").get("message") for c in cases if c.get("name", "").startswith("max_layer")][0]  # type: ignore[union-attr]
    assert f"{float(f'{below:.6f}'):g}" in (msg or "") and "violates" in (msg or "")


def test_regression_against_baseline(
    passed: tuple[subprocess.CompletedProcess[str], Path], tiny: dict[str, object]
) -> None:
    _, root = passed
    base = json.loads((root / "pass.json").read_text())
    # a baseline that was better at eps 0.05 and had a smaller L: the current model regressed there,
    # while at eps 0.01 the same model + policy gives the same numbers, so that comparison holds exactly
    cert = base["report"]["certificate"]
    cra_001 = cert["certified_accuracy"][0]
    cert["certified_accuracy"][1] = min(1.0, cert["certified_accuracy"][1] + 0.2)
    lip = base["report"]["lipschitz"]["upper"]
    base["report"]["lipschitz"]["upper"] = lip / 2
    base["report"]["model"]["sha256"] = "0" * 64
    (root / "better.json").write_text(json.dumps(base))
    p = run(
        tiny["model"],
        "--data",
        tiny["data"],
        "--eps",
        "0.01,0.05",
        "--baseline",
        root / "better.json",
        "--max-cra-drop",
        "0",
        "--junit",
        root / "reg.xml",
        "--json",
        root / "reg.json",
    )
    assert p.returncode == 1, p.stdout + p.stderr
    _, failed, cases = junit_counts(root / "reg.xml")
    assert {c.get("name") for c in cases if c.find("failure") is not None} == {
        "no_regression: certified_accuracy@0.05",
        "no_regression: lipschitz_upper",
    }
    assert failed == 2 and "another model file" in p.stdout
    reg = json.loads((root / "reg.json").read_text())
    validate_gate(reg)
    assert reg["report"]["certificate"]["certified_accuracy"][0] == cra_001  # deterministic
    assert reg["report"]["lipschitz"]["upper"] == lip
    assert reg["baseline"]["model_sha256"] == "0" * 64


def test_malformed_toml_exit_2_with_line(tmp_path: Path, tiny: dict[str, object]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[gate]\neps = [0.1]\nmethod = \n[gate.data]\n")
    p = run(tiny["model"], "--policy", bad)
    assert p.returncode == 2 and "invalid TOML" in p.stderr and "line 3" in p.stderr, p.stderr
    assert "Traceback" not in p.stderr


# The same entry point the console script calls (speccert.cli.app.main), in-process to keep the suite fast:
# policy errors, unreadable files (exit 4) and an unsupported model (exit 3).
@pytest.mark.parametrize(
    ("args", "code", "text"),
    [
        (["--policy", "{root}/unknown.toml"], 2, "gate.rule[0].minimum"),
        (["--data", "{data}"], 2, "no policy file found"),
        (["--min-cra", "0.5"], 2, "ACCURACY@EPS"),
        (["--min-clean", "0.5"], 2, "no data"),
        (["--data", "{root}/missing.npz", "--min-clean", "0.5"], 4, "missing.npz"),
        (["--data", "{data}", "--min-clean", "0.5", "--baseline", "{root}/none.json"], 4, "none.json"),
        (["--policy", "{root}/none.toml"], 4, "none.toml"),
        (["--data", "{data}", "--min-clean", "0.5", "--junit", "{root}/nodir/gate.xml"], 4, "does not exist"),
        (["--data", "{data}", "--min-clean", "0.5", "--method", "bogus"], 2, "bogus"),
        (["--data", "{data}", "--min-clean", "0.5", "--markdown", ""], 2, "empty path"),
        (["--data", "{data}", "--min-clean", "0.5", "--eps", "0.1,x"], 2, "--eps"),
        (["--data", "{data}", "--min-clean", "0.5", "MODEL={root}/corrupt.onnx"], 4, "corrupt.onnx"),
        (["--data", "{data}", "--min-clean", "0.5", "MODEL={root}/sign.onnx"], 3, "Sign"),
        # fail closed (issue 17): a NaN / out-of-range / other-schema baseline, before any certification
        (["--data", "{data}", "--baseline", "{root}/nan.json"], 4, "'certificate.certified_accuracy[1]'"),
        (["--data", "{data}", "--baseline", "{root}/neg.json"], 4, "'lipschitz.upper' must be"),
        (["--data", "{data}", "--baseline", "{root}/v9.json"], 4, "report schema 9.0.0"),
        (["--policy", "{root}/deep.toml"], 4, "nested too deeply"),
        (["--policy", "{root}/huge.toml"], 4, "a policy file is at most"),
        (["--data", "{data}", "--min-cra", "150%@0.1"], 2, "an accuracy must be in [0, 1]"),
    ],
)
def test_bad_input_exit_codes(
    tmp_path: Path,
    tiny: dict[str, object],
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    code: int,
    text: str,
) -> None:
    from speccert.cli.app import main

    (tmp_path / "unknown.toml").write_text(
        "[gate]\n[[gate.rule]]\nmetric = 'clean_accuracy'\nminimum = 0.5\n"
    )
    base = gate_report_dicts.report()
    base["certificate"]["certified_accuracy"][1] = math.nan
    (tmp_path / "nan.json").write_text(json.dumps(base))  # json writes NaN; Python reads it back
    base = gate_report_dicts.report(lip=-5.0)
    (tmp_path / "neg.json").write_text(json.dumps(base))
    base = gate_report_dicts.report()
    base["schema_version"] = "9.0.0"
    (tmp_path / "v9.json").write_text(json.dumps(base))
    (tmp_path / "deep.toml").write_text("[gate]\nx = " + "[" * 5000 + "]" * 5000 + "\n")
    (tmp_path / "huge.toml").write_text("[gate]\neps = [" + "0.1," * (2**18 + 10) + "0.1]\n")
    (tmp_path / "corrupt.onnx").write_bytes(b"\x08\x07garbage" + bytes(range(256)) * 4)
    w = numpy_helper.from_array(np.random.default_rng(1).standard_normal((3, 16)).astype(np.float32), "w")
    _save(
        tmp_path / "sign.onnx",
        [
            helper.make_node("Flatten", ["x"], ["f"], axis=1),  # Sign: no Lipschitz bound
            helper.make_node("Sign", ["f"], ["s"]),
            helper.make_node("Gemm", ["s", "w"], ["y"], transB=1),
        ],
        [w],
        3,
    )
    args = [a.format(root=tmp_path, data=tiny["data"]) for a in args]
    model = next((a[len("MODEL=") :] for a in args if a.startswith("MODEL=")), str(tiny["model"]))
    argv = ["gate", model, *(a for a in args if not a.startswith("MODEL="))]
    cwd = os.getcwd()
    os.chdir(tmp_path)  # no speccert.toml here to discover
    try:
        assert main(argv) == code
    finally:
        os.chdir(cwd)
    err = capsys.readouterr().err
    assert text in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err  # one line, whatever the error


@pytest.mark.slow
def test_bundled_mlp_fails_a_strict_policy(tmp_path: Path) -> None:
    model, data = REPO / "models" / "mlp.onnx", REPO / "models" / "data" / "fashion_mnist_test_1k.npz"
    if not model.exists() or not data.exists():
        pytest.skip("bundled models not present")
    policy = tmp_path / "pyproject.toml"
    policy.write_text(f"""
[project]
name = "demo"
[tool.speccert.gate]
eps = [0.05, 0.25]
[tool.speccert.gate.data]
path = "{data}"
limit = 100
[[tool.speccert.gate.rule]]
metric = "clean_accuracy"
min = 0.8
[[tool.speccert.gate.rule]]
metric = "certified_accuracy"
eps = 0.25
min = 0.5
""")
    p = run(model, "--policy", policy, "--json", tmp_path / "mlp.json", cwd=tmp_path)
    assert p.returncode == 1, p.stdout + p.stderr  # the plain MLP is not robust at 0.25
    doc = json.loads((tmp_path / "mlp.json").read_text())
    validate_gate(doc)
    assert [r["passed"] for r in doc["rules"]] == [True, False]
    assert (
        doc["report"]["model"]["sha256"]
        == json.loads((REPO / "models" / "manifest.json").read_text())["models"]["mlp"]["files"]["onnx"][
            "sha256"
        ]
    )


@pytest.mark.slow
def test_bundled_lipschitz_cnn_passes_a_robustness_policy(tmp_path: Path) -> None:
    model, data = REPO / "models" / "cnn_lip.onnx", REPO / "models" / "data" / "fashion_mnist_test_1k.npz"
    if not model.exists() or not data.exists():
        pytest.skip("bundled models not present")
    # models/measurements.json: certified accuracy 0.762 at eps 0.25 and L 6.321 on all 1000 points
    p = run(
        model,
        "--data",
        data,
        "--limit",
        "100",
        "--method",
        "fft",
        "--min-cra",
        "0.5@0.25",
        "--max-lipschitz",
        "8",
        "--junit",
        tmp_path / "lip.xml",
        cwd=tmp_path,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    assert junit_counts(tmp_path / "lip.xml")[:2] == (2, 0)


def _main_in(folder: Path, argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    from speccert.cli.app import main

    cwd = os.getcwd()
    os.chdir(folder)
    try:
        code = main(argv)
    finally:
        os.chdir(cwd)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_no_rules_names_the_tables_and_says_whether_a_policy_was_found(
    tmp_path: Path, tiny: dict[str, object], capsys: pytest.CaptureFixture[str]
) -> None:
    # before: "add [] tables or , or options" (rich ate the names) and no word on the policy file
    code, _, err = _main_in(tmp_path, ["gate", str(tiny["model"])], capsys)
    assert code == 2, err
    assert "[[gate.rule]]" in err and "[gate.no_regression]" in err
    assert "no policy file found" in err and "Traceback" not in err
    (tmp_path / "speccert.toml").write_text("[gate]\neps = [0.1]\n")
    code, _, err = _main_in(tmp_path, ["gate", str(tiny["model"])], capsys)
    assert code == 2 and "the policy speccert.toml has no rules" in err and "[[gate.rule]]" in err, err


@pytest.mark.parametrize("folder", ["[brackets]", "[", "[bold red]x[/]"])
def test_bracketed_paths_and_names_print_literally_and_keep_the_exit_code(
    tmp_path: Path, tiny: dict[str, object], capsys: pytest.CaptureFixture[str], folder: str
) -> None:
    # "[" + "/v2]model.onnx" puts "[/v2]" in the path: rich raised MarkupError -> exit 1 ("gate failed")
    where = tmp_path / folder / ("v2]" if folder == "[" else "")
    where.mkdir(parents=True)
    model = where / "net[best].onnx"
    shutil.copy(str(tiny["model"]), model)
    assert "[" in str(model)
    policy = where / "speccert.toml"
    for threshold, expected in ((tiny["max_norm"] * 1.001, 0), (tiny["max_norm"] * 0.5, 1)):
        policy.write_text(
            f'[gate]\n[gate.data]\npath = "{tiny["data"]}"\n[[gate.rule]]\nmetric = "max_layer_norm"\n'
            f'max = {threshold}\nname = "[bold]every layer[/] [/v2]"\n'
        )
        code, out, err = _main_in(where, ["gate", str(model), "--policy", str(policy)], capsys)
        assert code == expected, out + err
        assert str(model) in out.replace("\n", "")  # the title names the model as written
        assert "[bold]every layer[/] [/v2]" in out and "Traceback" not in err
    code, _, err = _main_in(where, ["gate", str(model), "--policy", str(where / "none[/v2].toml")], capsys)
    assert code == 4 and "none[/v2].toml" in err, err
