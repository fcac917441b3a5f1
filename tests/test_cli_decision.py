"""--decision argmin: certificates about the smallest output (ACAS Xu-style costs), exact by negation.

Ground truth: onnxruntime's argmin of the model's outputs, and the same model with its last layer
negated in the ONNX file (W -> -W, b -> -b) certified as argmax: radii must be identical, bit for bit.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from speccert.cli.app import main
from tests.test_certify_cli import onnx_classifier


def _negated(src: Path, dst: Path) -> Path:
    model = onnx.load(src)
    for init in model.graph.initializer:
        if init.name in ("w2", "b2"):
            init.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(init), init.name))
    onnx.save(model, dst)
    return dst


def _with_softmax(src: Path, dst: Path) -> Path:
    model = onnx.load(src)
    model.graph.node.append(helper.make_node("Softmax", ["logits"], ["probs"], axis=1))
    model.graph.output[0].name = "probs"
    onnx.save(model, dst)
    return dst


@pytest.fixture(scope="module")
def acas(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("argmin")
    model = onnx_classifier(d / "cost.onnx", n_out=5, seed=3)
    x = np.random.default_rng(1).random((60, 1, 4, 4), dtype=np.float32)
    out = ort.InferenceSession(str(model)).run(None, {"x": x})[0]
    np.savez(d / "d.npz", x=x, y=out.argmin(axis=1))  # labels: the decision the model really makes
    return {
        "dir": d,
        "model": model,
        "neg": _negated(model, d / "neg.onnx"),
        "softmax": _with_softmax(model, d / "cost_softmax.onnx"),
        "data": d / "d.npz",
    }


def _certify(capsys: pytest.CaptureFixture[str], model: Path, data: Path, *extra: str) -> dict:
    assert (
        main(["certify", str(model), "--data", str(data), "--eps", "0.01,0.05", "--json", "-", *extra]) == 0
    )
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("key", ["model", "softmax"])
def test_argmin_predictions_are_onnxruntime_argmin(
    acas: dict[str, Path], key: str, capsys: pytest.CaptureFixture[str]
) -> None:
    rep = _certify(capsys, acas[key], acas["data"], "--decision", "argmin")
    assert rep["model"]["decision"] == "argmin"
    assert rep["certificate"]["clean_accuracy"] == 1.0  # labels are onnxruntime's argmin
    as_argmax = _certify(capsys, acas[key], acas["data"])
    assert as_argmax["model"]["decision"] == "argmax"
    assert as_argmax["certificate"]["clean_accuracy"] < 0.5  # the wrong decision, before this option


def test_argmin_radii_equal_the_negated_model_exactly(
    acas: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    a = _certify(capsys, acas["model"], acas["data"], "--decision", "argmin")
    b = _certify(capsys, acas["neg"], acas["data"])
    assert a["lipschitz"]["upper"] == b["lipschitz"]["upper"]
    assert [s["radius"] for s in a["samples"]] == [s["radius"] for s in b["samples"]]
    assert [s["prediction"] for s in a["samples"]] == [s["prediction"] for s in b["samples"]]
    assert a["certificate"]["certified_accuracy"] == b["certificate"]["certified_accuracy"]
    assert max(s["radius"] or 0 for s in a["samples"]) > 0  # something was certified


def test_gate_decides_by_argmin(acas: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    args = ["gate", str(acas["model"]), "--data", str(acas["data"]), "--min-clean", "1.0"]
    assert main([*args, "--decision", "argmin", "--json", str(acas["dir"] / "g.json")]) == 0
    assert json.loads((acas["dir"] / "g.json").read_text())["report"]["model"]["decision"] == "argmin"
    assert main(args) == 1  # as argmax, the same model misses its own decisions
    capsys.readouterr()


@pytest.mark.parametrize("command", ["certify", "gate"])
def test_bad_decision_is_a_usage_error(
    acas: dict[str, Path], command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [command, str(acas["model"]), "--data", str(acas["data"]), "--decision", "max", "--min-clean", "0"][
            : 6 if command == "certify" else 8
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "--decision must be argmax or argmin" in err


def _ort(path: Path, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(str(path)).run(None, {"x": x})[0]


def test_finetune_trains_and_certifies_argmin_and_writes_the_model_without_negation(
    acas: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    d, data = acas["dir"], np.load(acas["data"])
    args = ["finetune", str(acas["model"]), "--data", str(acas["data"]), "--val", str(acas["data"])]
    args += ["--target", "lipschitz<=0.001", "--epochs", "3", "--lr", "0.05", "--batch-size", "20"]
    code = main([*args, "--decision", "argmin", "--out", str(d / "ft.onnx"), "--json", str(d / "ft.json")])
    assert code == 1  # the Lipschitz target is out of reach: the budget ends, the best epoch is written
    rep = json.loads((d / "ft.json").read_text())
    assert rep["report"]["model"]["decision"] == "argmin"
    # Trained on -logits: the written file still decides by argmin, and has no extra node.
    written = onnx.load(d / "ft.onnx")
    ops = [n.op_type for n in written.graph.node]
    assert len(ops) == len(onnx.load(acas["model"]).graph.node) and not {"Mul", "Neg", "Sub"} & set(ops), ops
    agree = float((_ort(d / "ft.onnx", data["x"]).argmin(1) == data["y"]).mean())
    assert agree >= 0.9 and rep["report"]["certificate"]["clean_accuracy"] == pytest.approx(agree)
    # The same run deciding by argmax learns the opposite rule (the option is what made the difference).
    assert main([*args, "--out", str(d / "ft_max.onnx")]) == 1
    assert float((_ort(d / "ft_max.onnx", data["x"]).argmin(1) == data["y"]).mean()) < 0.5
    capsys.readouterr()
