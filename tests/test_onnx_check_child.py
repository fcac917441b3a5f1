"""The faithfulness check's onnxruntime run in a child process (importers/ort_reference.py, ort_worker.py):
it still catches and localises a wrong conversion, its failures come back as one line (exit 5's
InternalError), and its frames carry numeric arrays only."""

from __future__ import annotations

import io
import json
import struct
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import helper

from speccert.errors import InternalError
from speccert.importers import onnx_check, onnx_import, ort_reference
from speccert.importers.onnx_import import load_onnx
from speccert.importers.onnx_ops import linear
from speccert.importers.onnx_ops.examples import model, randn
from speccert.importers.ort_reference import ReferenceRun
from speccert.importers.ort_worker import read_frame, write_frame


@pytest.fixture
def big(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(onnx_check, "BIG_MODEL_PARAMETERS", 10)  # every test model counts as big


def _mlp(tmp_path: Path) -> Path:
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="fc1", transB=1),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("Gemm", ["r", "w2"], ["y"], name="fc2", transB=1),
    ]
    inits = {"w1": randn(6, 6, seed=1), "b1": randn(6, seed=2), "w2": randn(3, 6, seed=3)}
    path = tmp_path / "mlp.onnx"
    onnx.save(model(nodes, (6,), inits, opset=13), path)
    return path


def test_the_child_reference_is_onnxruntime_in_process(tmp_path: Path) -> None:
    path = _mlp(tmp_path)
    x = np.random.default_rng(0).random((4, 6)).astype(np.float32)
    ref = ReferenceRun(path, "x", x, None).result()
    assert ref is not None and ref.error is None and ref.y is not None
    (direct,) = onnx_check._run_ort(path, "x", x, None, ["y"])
    assert ref.y.dtype == direct.dtype and np.array_equal(ref.y, direct)
    chunked = ReferenceRun(path, "x", x, 2).result()  # fed two at a time
    assert chunked is not None and chunked.y is not None and np.array_equal(chunked.y, direct)


def test_a_big_model_loads_through_the_child(tmp_path: Path, big: None) -> None:
    path = _mlp(tmp_path)
    g = load_onnx(path)
    x = torch.rand(3, 6)
    w = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}
    h = np.maximum(x.numpy() @ w["w1"].T + w["b1"], 0)
    np.testing.assert_allclose(g.forward(x).numpy(), h @ w["w2"].T, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("what", ["bias", "weight"])
def test_a_wrong_conversion_is_caught_and_localised(
    tmp_path: Path, big: None, monkeypatch: pytest.MonkeyPatch, what: str
) -> None:
    path = _mlp(tmp_path)
    off = lambda a: torch.from_numpy(np.array(a, np.float32) + 0.5)  # noqa: E731
    if what == "bias":
        monkeypatch.setattr(linear, "tensor", off)
    else:  # the weights handed over without a copy
        monkeypatch.setattr(onnx_import._Builder, "param", lambda self, a: off(a))
    with pytest.raises(InternalError, match="not faithful at node 'fc1'"):
        load_onnx(path)


def _worker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: str) -> None:
    script = tmp_path / "worker.py"
    script.write_text(body)
    monkeypatch.setattr(ort_reference, "WORKER", script)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            "import sys\nsys.stderr.write('boom\\n')\nsys.exit(3)\n",
            "onnxruntime's process exited with code 3: boom",
        ),
        (
            "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n",
            "onnxruntime's process was killed by signal 9",
        ),
        ("import sys\nsys.stdout.buffer.write(b'garbage')\n", "onnxruntime's process exited with code 0"),
    ],
)
def test_a_failing_child_is_one_line(
    tmp_path: Path, big: None, monkeypatch: pytest.MonkeyPatch, body: str, expected: str
) -> None:
    path = _mlp(tmp_path)
    _worker(tmp_path, monkeypatch, body)
    with pytest.raises(InternalError) as info:
        load_onnx(path)
    text = str(info.value)
    assert text == f"onnxruntime cannot run the model to check the import: {expected}"


def test_onnxruntime_s_own_error_is_one_line(tmp_path: Path) -> None:
    x = np.zeros((1, 6), np.float32)
    ref = ReferenceRun(tmp_path / "missing.onnx", "x", x, None).result()
    assert ref is not None and ref.y is None and ref.error and "\n" not in ref.error


def test_no_check_no_child(tmp_path: Path, big: None, monkeypatch: pytest.MonkeyPatch) -> None:
    _worker(tmp_path, monkeypatch, "import sys\nsys.exit(3)\n")
    load_onnx(_mlp(tmp_path), check=False)  # the failing child is never started


def _frame(header: dict, payload: bytes = b"") -> io.BytesIO:
    raw = json.dumps(header).encode()
    return io.BytesIO(struct.pack("<I", len(raw)) + raw + payload)


@pytest.mark.parametrize(
    "header",
    [
        {"dtype": "|O", "shape": [1], "nbytes": 8},  # objects: never unpickled
        {"dtype": "<f4", "shape": [3], "nbytes": 8},  # size disagrees
        {"dtype": "<f4", "shape": [-1], "nbytes": 4},
        {"dtype": "V8", "shape": [1], "nbytes": 8},
    ],
)
def test_frames_hold_numeric_arrays_only(header: dict) -> None:
    with pytest.raises((ValueError, TypeError)):
        read_frame(_frame(header, b"\0" * 16))


def test_frames_round_trip() -> None:
    a = np.arange(12, dtype=np.float64).reshape(3, 4)
    buf = io.BytesIO()
    write_frame(buf, {"input": "x"}, a)
    buf.seek(0)
    header, b = read_frame(buf)
    assert header["input"] == "x" and b is not None and b.dtype == a.dtype and np.array_equal(a, b)
    assert sys.executable  # the child runs under this interpreter
