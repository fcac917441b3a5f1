"""Messages say what is wrong, once, on one line, with the documented exit code (issue 16 "smaller"
items and issue 17 item 8)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

import speccert
from speccert.cli.app import main
from tests.test_certify_cli import onnx_classifier

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def f(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("messages")
    rng = np.random.default_rng(0)
    np.savez(d / "d.npz", x=rng.random((40, 1, 4, 4), dtype=np.float32), y=rng.integers(0, 3, 40))
    model = onnx_classifier(d / "m.onnx")
    bad = onnx.load(model)
    for init in bad.graph.initializer:
        if init.name == "w1":
            w = numpy_helper.to_array(init).copy()
            w[0, 0] = np.inf
            init.CopyFrom(numpy_helper.from_array(w, "w1"))
    onnx.save(bad, d / "inf.onnx")
    ts = torch.jit.trace(nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval(), torch.rand(2, 1, 4, 4))
    torch.jit.save(ts, d / "ts.pt")
    return {"dir": d, "data": d / "d.npz", "model": model, "inf": d / "inf.onnx", "ts": d / "ts.pt"}


def _run(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def _error(err: str) -> str:
    """The whole of stderr must be one 'error:' line: no blank line before it, no warning, no traceback."""
    assert err.startswith("error: ") and err.count("\n") == 1, repr(err)
    return err


def test_crc_steps_without_second_order_names_the_missing_flag(
    f: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = _run(capsys, "certify", f["model"], "--data", f["data"], "--crc-steps", "20")
    assert code == 2 and "add --second-order" in _error(err) and "must be >= 0" not in err


def test_tiny_std_blames_the_std_not_the_weights(
    f: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = _run(capsys, "certify", f["model"], "--data", f["data"], "--std", "1e-300")
    assert code == 2 and "--std" in _error(err) and "weights" not in err


@pytest.mark.parametrize("command", ["certify", "norms"])
def test_negative_exact_max_dim_is_a_usage_error(
    f: dict[str, Path], command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    data = ["--data", f["data"]] if command == "certify" else []
    code, _, err = _run(capsys, command, f["model"], *data, "--exact-max-dim", "-1")
    assert code == 2 and "--exact-max-dim must be >= 0" in _error(err)


@pytest.mark.parametrize("command", ["certify", "gate"])
def test_eps_zero_is_refused_by_certify_and_gate_alike(
    f: dict[str, Path], command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    extra = ["--min-clean", "0"] if command == "gate" else []
    code, _, err = _run(capsys, command, f["model"], "--data", f["data"], "--eps", "0", *extra)
    assert code == 2 and "> 0" in _error(err)


@pytest.mark.parametrize("command", ["certify", "norms"])
def test_inf_weights_give_one_line_and_no_numpy_warning(
    f: dict[str, Path], command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    data = ["--data", f["data"]] if command == "certify" else []
    code, _, err = _run(capsys, command, f["inf"], *data)
    assert code == 4 and "NaN or Inf weights" in _error(err) and "RuntimeWarning" not in err


def test_dense_skip_note_is_printed_once(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(capsys, "norms", REPO / "models" / "cnn.onnx", "--method", "dense")
    notes = [ln for ln in err.splitlines() if "dense skipped" in ln]
    assert code == 0 and notes and len(notes) == len(set(notes))


def test_opportunistic_second_order_leaves_no_note(f: dict[str, Path]) -> None:
    from speccert.data import load_data
    from speccert.training.evaluate import certifier_evaluator

    m = certifier_evaluator(load_data(str(f["data"]), "test", None), [0.1])(speccert.load(f["model"]))
    assert m.report is not None and not [n for n in m.report.notes if "second_order" in n]


def test_finetune_tables_and_report_share_stdout(
    f: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    out_model = f["dir"] / "ft" / "o.onnx"
    code, out, err = _run(
        capsys,
        "finetune",
        f["model"],
        "--data",
        f["data"],
        "--out",
        out_model,
        "--target",
        "clean>=0.0",
        "--epochs",
        "0",
    )
    assert code == 0, err
    assert "epoch 0 (input model)" in out and "Certify report of the output model" in out
    assert "epoch 0" not in err and "Certified accuracy" not in err


def test_finetune_refuses_torchscript_before_loading_it(
    f: dict[str, Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import speccert.importers.torch_import as ti

    def never(*a: object, **k: object) -> None:
        raise AssertionError("the TorchScript model was loaded before the refusal")

    monkeypatch.setattr(ti, "load_torch_file", never)
    code, _, err = _run(
        capsys, "finetune", f["ts"], "--data", f["data"], "--out", f["dir"] / "o.pt", "--target", "clean>=0.1"
    )
    assert code == 2 and "cannot write torchscript" in _error(err) and ".pt2" in err


def test_bench_without_corpus_says_what_it_skipped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SPECCERT_CORPUS", str(tmp_path / "no_corpus"))
    code, _, err = _run(capsys, "bench", "norms", "--no-resnet")
    assert code == 4 and "ONNX corpus not found at" in err and "SPECCERT_CORPUS" in err and "nothing" in err
    code, _, err = _run(capsys, "bench", "certify", "--no-bundled")
    assert code == 4 and "ONNX corpus not found at" in err and "running the 0 bundled models only" in err


def test_a_model_onnxruntime_calls_invalid_is_an_input_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Gemm without its C input at opset 9 (optional only from opset 11): speccert's converter reads it,
    onnxruntime refuses the file; that is the file's fault (exit 4, one line), not an internal error."""
    rng = np.random.default_rng(0)
    g = onnx.helper.make_graph(
        [
            onnx.helper.make_node("Flatten", ["x"], ["f"]),
            onnx.helper.make_node("Gemm", ["f", "w"], ["y"], transB=1),
        ],
        "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 2, 2])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array(rng.standard_normal((3, 4)).astype(np.float32), "w")],
    )
    path = tmp_path / "gemm9.onnx"
    onnx.save(
        onnx.helper.make_model(g, opset_imports=[onnx.helper.make_opsetid("", 9)], ir_version=8), str(path)
    )
    code = main(["norms", str(path)])
    err = capsys.readouterr().err
    assert code == 4 and "invalid ONNX" in err and "Traceback" not in err
