"""`speccert inspect`: the table, the JSON report, exit 3 with the table for unsupported nodes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import helper
from torch import nn

from speccert.cli.app import main
from speccert.importers.onnx_import import load_onnx
from speccert.importers.onnx_ops.examples import model, randn

REPO = Path(__file__).resolve().parents[1]


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(args))
    cap = capsys.readouterr()
    return code, cap.out, cap.err


@pytest.fixture()
def cnn(tmp_path: Path) -> Path:
    nodes = [
        helper.make_node("Sub", ["x", "mean"], ["c"], name="centre"),
        helper.make_node("Conv", ["c", "w", "b"], ["h"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["h"], ["r"], name="relu1"),
        helper.make_node("MaxPool", ["r"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["p"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "fw", "fb"], ["y"], name="fc", transB=1),
    ]
    inits = {
        "mean": np.float32(0.5),
        "w": randn(4, 1, 3, 3),
        "b": randn(4, seed=1),
        "fw": randn(10, 4 * 4 * 4, seed=2),
        "fb": randn(10, seed=3),
    }
    p = tmp_path / "cnn.onnx"
    onnx.save(model(nodes, (1, 8, 8), inits, 13), str(p))
    return p


def test_table_lists_every_node_with_shapes_params_and_support(
    cnn: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "inspect", str(cnn))
    assert code == 0, err
    for name in ("centre", "conv1", "relu1", "pool", "flat", "fc"):
        assert name in out
    assert "Conv 1->4 3x3" in out and "[1, 8, 8] -> [4, 8, 8]" in out and "[64] -> [10]" in out
    assert "Lipschitz-supported?" in out and "no:" not in out and out.count("│ yes") == 6
    sha = hashlib.sha256(cnn.read_bytes()).hexdigest()
    assert f"sha256 {sha[:16]}" in out and "input [1, 8, 8]" in out
    assert f"params {4 * 9 + 4 + 640 + 10 + 2:,}" in out  # + the Affine's scale and shift


def test_json_report_matches_the_graph(cnn: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "report.json"
    code, out, _ = run(capsys, "inspect", str(cnn), "--json", str(target))
    assert code == 0 and "conv1" in out  # the table is still printed
    report = json.loads(target.read_text())
    g = load_onnx(cnn)
    assert report["schema"] == "speccert.inspect/1"
    assert report["format"] == "onnx" and report["sha256"] == hashlib.sha256(cnn.read_bytes()).hexdigest()
    assert [r["name"] for r in report["nodes"]] == [n.name for n in g.nodes]
    assert [r["output_shape"] for r in report["nodes"]] == [list(n.shape) for n in g.nodes]
    assert report["total_params"] == sum(t.numel() for t in g.parameters().values())
    assert report["unsupported"] == [] and all(r["lipschitz_supported"] for r in report["nodes"])

    code, out, _ = run(capsys, "inspect", str(cnn), "--json", "-")
    assert code == 0 and json.loads(out) == report  # stdout holds the JSON only


def test_unsupported_nodes_are_marked_and_exit_3(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    nodes = [
        helper.make_node("Gemm", ["x", "w"], ["h"], name="fc1", transB=1),
        helper.make_node("Sign", ["h"], ["s"], name="binarise"),
        helper.make_node("Gemm", ["s", "w2"], ["y"], name="fc2", transB=1),
    ]
    p = tmp_path / "bnn.onnx"
    onnx.save(model(nodes, (5,), {"w": randn(6, 5), "w2": randn(3, 6)}, 13), str(p))
    code, out, err = run(capsys, "inspect", str(p))
    assert code == 3
    assert "fc1" in out and "fc2" in out and "binarise" in out and "Sign (unsupported)" in out
    assert "no: discontinuous" in out
    assert err.count("\n") == 1 and "Sign node 'binarise'" in err
    code, out, _ = run(capsys, "inspect", str(p), "--json", "-")
    assert code == 3
    report = json.loads(out)
    assert report["unsupported"] == [
        {"op": "Sign", "node": "binarise", "reason": report["nodes"][1]["reason"]}
    ]


def test_help_is_the_module_docstring(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "inspect", "--help")
    assert code == 0 and "Lipschitz" in out and "--input-shape" in out and "--json" in out


def test_bad_input_shape_text(cnn: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "inspect", str(cnn), "--input-shape", "a,b")
    assert code == 2 and "--input-shape" in err


def test_pytorch_files_work_too(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("speccert.importers.torch_import", reason="torch importer not in this checkout yet")
    pt2 = REPO / "models" / "mlp.pt2"
    if not pt2.exists():
        pytest.skip("models/mlp.pt2 not built")
    code, out, err = run(capsys, "inspect", str(pt2))
    assert code == 0, err
    assert "Linear" in out and "format pt2" in out


def test_help_does_not_load_torch() -> None:
    """`speccert --help` (and each command's --help) must not pay for importing torch (~1-3 s)."""
    import subprocess
    import sys

    code = (
        "import sys; from speccert.cli.app import main; rc = main(['--help']); "
        "rc = main(['certify', '--help']) if rc == 0 else rc; "
        "print('torch' in sys.modules, rc)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert res.stdout.strip().splitlines()[-1] == "False 0", res.stdout + res.stderr


@pytest.mark.parametrize(
    ("values", "finite"),
    [
        ([1.0, -2.0, 0.5], True),
        ([3e38, 3e38, 3e38], True),  # the sum overflows; every entry is finite
        ([1.0, float("nan"), 2.0], False),
        ([1.0, float("inf"), float("-inf")], False),  # inf - inf: a NaN sum
        ([-3e38, float("-inf")], False),
    ],
)
def test_the_non_finite_scan_is_exact(values: list[float], finite: bool) -> None:
    import torch

    from speccert.ir.graph import all_finite

    t = torch.tensor(values, dtype=torch.float32)
    assert all_finite(t) is finite
    assert all_finite(t.repeat(3, 1).t()) is finite  # non-contiguous


def test_a_factory_model_is_named_with_its_weights(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A 'module:factory' model's table is titled with the factory and its weights file (it was titled with
    the weights file alone), and the JSON says both; an upsampling in it is named fixed."""
    w = tmp_path / "w.pt"
    torch.save(_upsampling().state_dict(), w)
    spec = "tests.test_cli_inspect:_upsampling"
    code, out, err = run(capsys, "inspect", spec, "--weights", str(w), "--input-shape", "1,4,4")
    assert code == 0, err
    assert out.splitlines()[0].strip() == f"{spec} (weights {w})"
    assert "ConvTranspose 1->1 2x2 s2,2 fixed" in out
    code, out, _ = run(capsys, "inspect", spec, "--weights", str(w), "--input-shape", "1,4,4", "--json", "-")
    report = json.loads(out)
    assert (report["factory"], report["model"]) == (spec, str(w))


def _upsampling() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Upsample(scale_factor=2), nn.Flatten(), nn.Linear(64, 3))
