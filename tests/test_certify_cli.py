"""`speccert certify` through the real console entry point (subprocess): output, JSON, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from speccert.bounds.schema import validate_report


def onnx_classifier(path: Path, n_out: int = 3, seed: int = 0) -> Path:
    """Flatten -> Gemm(16->8) -> Relu -> Gemm(8->n_out) on a [N, 1, 4, 4] input."""
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(rng.normal(size=(8, 16)).astype(np.float32) / 2, "w1"),
        numpy_helper.from_array(rng.normal(size=8).astype(np.float32) / 4, "b1"),
        numpy_helper.from_array(rng.normal(size=(n_out, 8)).astype(np.float32) / 2, "w2"),
        numpy_helper.from_array(rng.normal(size=n_out).astype(np.float32), "b2"),
    ]
    nodes = [
        helper.make_node("Flatten", ["x"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "w1", "b1"], ["h"], transB=1),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Gemm", ["r", "w2", "b2"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 4, 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", n_out])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "speccert", "certify", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("cli")
    rng = np.random.default_rng(0)
    x = rng.random((40, 1, 4, 4), dtype=np.float32)
    np.savez(d / "ok.npz", x=x, y=rng.integers(0, 3, 40))
    np.savez(d / "flat.npz", x=x.reshape(40, 16), y=rng.integers(0, 3, 40))
    np.savez(d / "shape.npz", x=rng.random((5, 1, 5, 5)), y=np.zeros(5, dtype=int))
    np.savez(d / "labels.npz", x=x[:5], y=np.array([0, 1, 2, 3, 9]))
    np.savez(d / "empty.npz", x=np.zeros((0, 1, 4, 4)), y=np.zeros(0, dtype=int))
    return {
        "model": onnx_classifier(d / "m.onnx"),
        "scalar": onnx_classifier(d / "s.onnx", n_out=1),
        "dir": d,
        **{k: d / f"{k}.npz" for k in ("ok", "flat", "shape", "labels", "empty")},
    }


def test_certify_tables_json_and_plot(files: dict[str, Path]) -> None:
    """One real run: tables on stdout, the JSON report (validated against the schema), the PNG."""
    plot = pytest.importorskip("matplotlib") is not None
    png, out_json = files["dir"] / "cra.png", files["dir"] / "r.json"
    res = run(
        files["model"],
        "--data",
        files["flat"],
        "--eps",
        "0.01,0.05,0.2",
        "--audit",
        "10",
        "--json",
        out_json,
        *(["--plot", png] if plot else []),
    )
    assert res.returncode == 0, res.stderr
    assert "Lipschitz bound" in res.stdout and "clean accuracy" in res.stdout and "median" in res.stdout
    report = json.loads(out_json.read_text())
    validate_report(report)
    cert = report["certificate"]
    assert cert["n"] == 40 and len(report["samples"]) == 40 and cert["eps"] == [0.01, 0.05, 0.2]
    assert cert["certified_accuracy"] == sorted(cert["certified_accuracy"], reverse=True)
    assert cert["certified_accuracy"][0] <= cert["clean_accuracy"]
    assert report["model"]["format"] == "onnx" and len(report["model"]["sha256"]) == 64
    assert report["lipschitz"]["lower"] <= report["lipschitz"]["upper"]
    assert report["audit"]["successes"] == 0 and report["audit"]["points"] <= 10
    assert png.read_bytes().startswith(b"\x89PNG")


def test_lower_points_sets_the_witness_search(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    from speccert.cli.app import main

    assert (
        main(
            ["certify", str(files["model"]), "--data", str(files["ok"]), "--lower-points", "7", "--json", "-"]
        )
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert "first 7 points" in report["lipschitz"]["lower_method"]
    assert 0 < report["lipschitz"]["lower"] <= report["lipschitz"]["upper"]


def test_json_dash_keeps_stdout_parseable(files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    from speccert.cli.app import main

    assert (
        main(
            [
                "certify",
                str(files["model"]),
                "--data",
                str(files["ok"]),
                "--mean",
                "0.5",
                "--std",
                "0.25",
                "--limit",
                "20",
                "--json",
                "-",
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    validate_report(report)
    assert report["certificate"]["n"] == 20 and report["data"]["mean"] == [0.5]
    assert "Certified accuracy" in captured.err


BAD = {  # case: (model key, data key, extra args, exit code, message)
    "shape": ("model", "shape", [], 4, "shape"),
    "labels": ("model", "labels", [], 4, "out of range"),
    "empty": ("model", "empty", [], 4, "empty"),
    "missing": ("model", "missing", [], 4, "not found"),
    "scalar": ("scalar", "ok", [], 2, "classifier"),
    "eps": ("model", "ok", ["--eps", "0.1,abc"], 2, "--eps"),
    "std": ("model", "ok", ["--mean", "0.1,0.2", "--std", "0.3,0.4"], 2, "channels"),
    "lower_points": ("model", "ok", ["--lower-points", "0"], 2, "--lower-points"),
    "crc": ("model", "ok", ["--crc-steps", "5"], 2, "--crc-steps"),
    "crown_steps": ("model", "ok", ["--crown-steps", "-1"], 2, "--crown-steps"),
}
# Each subprocess pays the torch import (seconds on a loaded machine): these go through the real
# console script; the others through the same entry point in-process (speccert.cli.app.main).
SUBPROCESS = ("labels", "scalar")


def _args(files: dict[str, Path], case: str) -> tuple[list[str], int, str]:
    model, data, extra, code, message = BAD[case]
    path = files["dir"] / "nope.npz" if data == "missing" else files[data]
    return [str(files[model]), "--data", str(path), *extra], code, message


@pytest.mark.parametrize("case", SUBPROCESS)
def test_bad_input_exit_codes_subprocess(files: dict[str, Path], case: str) -> None:
    args, code, message = _args(files, case)
    res = run(*args)
    assert res.returncode == code, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in res.stderr


@pytest.mark.parametrize("case", sorted(set(BAD) - set(SUBPROCESS)))
def test_bad_input_exit_codes_in_process(
    files: dict[str, Path], case: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from speccert.cli.app import main

    args, code, message = _args(files, case)
    assert main(["certify", *args]) == code
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in err
