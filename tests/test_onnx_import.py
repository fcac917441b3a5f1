"""ONNX import: bad input gives one clear error with the right exit code; the real corpus imports and
matches onnxruntime on its own test points; the binarised gtsrb model is refused by name."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from speccert.cli.app import main as app_main
from speccert.errors import InputError, UnsupportedModelError, UsageError
from speccert.importers import load
from speccert.importers.onnx_import import load_onnx
from speccert.importers.onnx_ops.examples import model, randn
from tests.conftest import corpus_models


def mlp(batch: int | str = "N", x_shape: tuple = (6,)) -> onnx.ModelProto:
    nodes = [
        helper.make_node("Flatten", ["x"], ["f"]),
        helper.make_node("Gemm", ["f", "w1", "b1"], ["h"], transB=1),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Gemm", ["r", "w2"], ["y"], transB=1),
    ]
    d = int(np.prod([s if isinstance(s, int) else 2 for s in x_shape]))
    inits = {"w1": randn(16, d, seed=1), "b1": randn(16, seed=2), "w2": randn(3, 16, seed=3)}
    return model(nodes, x_shape, inits, 13, batch=batch)


def cli(*args: str) -> subprocess.CompletedProcess:
    """The real console entry point in a fresh interpreter (slow on a busy machine: used sparingly)."""
    return subprocess.run(
        [sys.executable, "-m", "speccert", *args], capture_output=True, text=True, timeout=300
    )


def main(capsys: pytest.CaptureFixture[str], *args: str) -> subprocess.CompletedProcess:
    """The same entry point (`speccert.cli.app.main`) in this process."""
    capsys.readouterr()
    code = app_main(list(args))
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(list(args), code, captured.out, captured.err)


def assert_one_clean_line(proc: subprocess.CompletedProcess, code: int, *words: str) -> None:
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    for w in words:
        assert w in lines[0]


# ---- bad input through the real CLI ----------------------------------------------------------------
def test_cli_missing_file(tmp_path: Path) -> None:
    assert_one_clean_line(cli("inspect", str(tmp_path / "absent.onnx")), 4, "not found")


def test_cli_truncated_and_corrupt_files(tmp_path: Path) -> None:
    data = mlp().SerializeToString()
    (tmp_path / "trunc.onnx").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.onnx").write_bytes(np.random.default_rng(0).bytes(3000))
    assert_one_clean_line(cli("inspect", str(tmp_path / "trunc.onnx")), 4, "trunc.onnx")
    with pytest.raises(InputError, match="not a readable ONNX model"):
        load_onnx(tmp_path / "junk.onnx")
    (tmp_path / "empty.onnx").write_bytes(b"")
    with pytest.raises(InputError):
        load_onnx(tmp_path / "empty.onnx")


def test_cli_several_inputs_and_dynamic_dims(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    m = mlp()
    m.graph.input.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 2]))
    onnx.save(m, str(tmp_path / "two.onnx"))
    assert_one_clean_line(main(capsys, "inspect", str(tmp_path / "two.onnx")), 2, "2 inputs")
    onnx.save(mlp(x_shape=(2, "H")), str(tmp_path / "dyn.onnx"))
    assert_one_clean_line(main(capsys, "inspect", str(tmp_path / "dyn.onnx")), 2, "dynamic", "--input-shape")
    assert_one_clean_line(
        main(capsys, "inspect", str(tmp_path / "dyn.onnx"), "--input-shape", "3,2"), 2, "does not match"
    )
    ok = main(capsys, "inspect", str(tmp_path / "dyn.onnx"), "--input-shape", "2,2", "--json", "-")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["input_shape"] == [2, 2]


def test_wrong_input_shape(tmp_path: Path) -> None:
    p = tmp_path / "m.onnx"
    onnx.save(mlp(x_shape=(2, 3)), str(p))
    for shape in [(3, 2), (6,), (2, 3, 1)]:
        with pytest.raises(UsageError, match="does not match"):
            load(p, shape)
    assert load(p, (2, 3)).input_shape == (2, 3)


# ---- external data ---------------------------------------------------------------------------------
def _external(tmp_path: Path, location: str) -> Path:
    folder = tmp_path / "model"
    folder.mkdir(exist_ok=True)
    p = folder / "m.onnx"
    onnx.save(mlp(), str(p), save_as_external_data=True, location="weights.bin", size_threshold=0)
    m = onnx.load(str(p), load_external_data=False)
    for t in m.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = location
    onnx.save(m, str(p))
    return p


def test_external_data_inside_the_folder_loads(tmp_path: Path) -> None:
    g = load_onnx(_external(tmp_path, "weights.bin"))
    assert g.input_shape == (6,)


@pytest.mark.parametrize("where", ["absolute", "dotdot", "missing"])
def test_external_data_escaping_the_folder_is_refused(
    tmp_path: Path, where: str, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = tmp_path / "secret.bin"
    p = _external(tmp_path, "weights.bin")
    secret.write_bytes((p.parent / "weights.bin").read_bytes())  # a readable file outside the folder
    loc = {"absolute": str(secret), "dotdot": "../secret.bin", "missing": "nothing.bin"}[where]
    p = _external(tmp_path, loc)
    with pytest.raises(InputError, match="outside|relative path|not found") as info:
        load_onnx(p)
    assert info.value.exit_code == 4
    if where == "dotdot":
        assert_one_clean_line(main(capsys, "inspect", str(p)), 4, "external data")


# ---- NaN / Inf weights -----------------------------------------------------------------------------
def test_nan_weights_are_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    m = mlp()
    w = numpy_helper.to_array(m.graph.initializer[0]).copy()
    w[0, 0] = np.nan
    m.graph.initializer[0].CopyFrom(numpy_helper.from_array(w, "w1"))
    p = tmp_path / "nan.onnx"
    onnx.save(m, str(p))
    g = load_onnx(p)
    with pytest.raises(InputError, match="NaN or Inf") as info:
        g.check_finite()
    assert ".weight" in str(info.value)
    proc = main(capsys, "inspect", str(p), "--json", "-")
    assert proc.returncode == 0
    assert json.loads(proc.stdout)["non_finite_parameters"] and "NaN" in proc.stderr


# ---- the real corpus ---------------------------------------------------------------------------------
@pytest.mark.corpus
@pytest.mark.parametrize("name", [m for m in corpus_models() if m != "gtsrb_bnn_48"] or ["(none)"])
def test_corpus_model_matches_onnxruntime(corpus_dir: Path, name: str) -> None:
    folder = corpus_dir / name
    g = load_onnx(folder / "model.onnx")
    assert not g.unsupported()
    x = np.load(folder / "x.npy").astype(np.float32)
    x = x.reshape(-1, *g.input_shape)[:8]
    sess = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    fixed = inp.shape[0] if isinstance(inp.shape[0], int) else None
    chunk = fixed or len(x)
    ref = np.concatenate(
        [
            sess.run(
                None,
                {inp.name: x[i : i + chunk].reshape(chunk, *inp.shape[1:]) if fixed else x[i : i + chunk]},
            )[0].reshape(chunk, -1)
            for i in range(0, len(x), chunk)
        ]
    )
    with torch.no_grad():
        got = g.forward(torch.from_numpy(x)).reshape(len(x), -1).numpy()
    scale = max(1.0, float(np.abs(ref).max()))
    assert np.abs(got - ref).max() <= 1e-4 * scale
    assert (got.argmax(1) == ref.argmax(1)).all()


@pytest.mark.corpus
def test_gtsrb_binarised_model_is_refused_naming_sign_nodes(corpus_dir: Path) -> None:
    path = corpus_dir / "gtsrb_bnn_48" / "model.onnx"
    with pytest.raises(UnsupportedModelError) as info:
        load_onnx(path)
    problems = info.value.problems
    # All 8 Sign nodes are one kind: one line with the count and the first names.
    assert [op for op, _, _ in problems] == ["Sign ×8"]
    assert problems[0][1].startswith("sequential_1/") and problems[0][1].endswith("and 5 more")
    assert info.value.exit_code == 3
    proc = cli("inspect", str(path))
    assert proc.returncode == 3
    assert "Sign (unsupported)" in proc.stdout and "Lipschitz" in proc.stdout
    assert "Sign ×8 nodes (sequential_1/" in proc.stderr and "and 5 more):" in proc.stderr
    assert "node '" not in proc.stderr and "Traceback" not in proc.stderr


def test_external_data_through_a_symlink_leaving_the_folder_is_refused(tmp_path: Path) -> None:
    p = _external(tmp_path, "weights.bin")
    outside = tmp_path / "elsewhere.bin"
    (p.parent / "weights.bin").rename(outside)
    (p.parent / "weights.bin").symlink_to(outside)
    with pytest.raises(InputError, match="outside"):
        load_onnx(p)


def test_fixed_batch_model_loads_and_runs_any_batch(tmp_path: Path) -> None:
    p = tmp_path / "b1.onnx"
    onnx.save(mlp(batch=1), str(p))
    g = load_onnx(p)
    x = np.random.default_rng(0).random((4, 6)).astype(np.float32)
    sess = ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
    ref = np.concatenate([sess.run(None, {"x": x[i : i + 1]})[0] for i in range(4)])
    np.testing.assert_allclose(g.forward(torch.from_numpy(x)).detach().numpy(), ref, rtol=1e-5, atol=1e-6)
