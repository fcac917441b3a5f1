"""The bundled model zoo (models/*.onnx, models/*.pt2) and data subset against models/manifest.json.

Every figure compared here is one the training script measured and wrote to the manifest; these tests
recompute it from the committed files (onnxruntime, torch.export.load, speccert.load) and compare.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "models"
MANIFEST = json.loads((MODELS / "manifest.json").read_text())
SUBSET = MODELS / MANIFEST["subset"]["path"]
NAMES = sorted(MANIFEST["models"])
# (model, format) for every file the manifest lists; robust versions from `speccert finetune` are ONNX only
FILES = [(n, f) for n in NAMES for f in sorted(MANIFEST["models"][n]["files"])]
# Accuracy on 1,000 images may differ by a few flipped near-ties across onnxruntime builds and CPUs
# (logits agree to ~1e-5); 0.003 = 3 images.
ACC_TOL = 0.003
MAX_BYTES = 5_000_000


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def subset() -> tuple[np.ndarray, np.ndarray]:
    with np.load(SUBSET) as z:
        return z["x"], z["y"]


def _ort_logits(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def _acc(logits: np.ndarray, y: np.ndarray) -> float:
    return float((logits.argmax(1) == y).mean())


def test_zoo_has_the_four_architectures() -> None:
    archs = {m["architecture"] for m in MANIFEST["models"].values()}
    assert {"mlp", "cnn", "resnet", "smooth_cnn"} <= archs


@pytest.mark.parametrize("name", NAMES)
def test_model_files_match_manifest(name: str) -> None:
    for fmt, entry in MANIFEST["models"][name]["files"].items():
        path = MODELS / entry["path"]
        assert path.suffix == f".{fmt}" and path.is_file(), path
        assert path.stat().st_size == entry["bytes"] <= MAX_BYTES
        assert _sha256(path) == entry["sha256"], f"{path} changed since train.py wrote the manifest"


def test_subset_is_stratified_pixel_space(subset: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = subset
    assert _sha256(SUBSET) == MANIFEST["subset"]["sha256"]
    assert x.shape == (1000, 1, 28, 28) and x.dtype == np.float32
    assert y.shape == (1000,) and y.dtype == np.int64
    assert x.min() >= 0.0 and x.max() <= 1.0
    # pixels are uint8 / 255 exactly (no normalisation baked into the data)
    assert np.array_equal(np.round(x * 255) / np.float32(255), x)
    assert np.bincount(y, minlength=10).tolist() == [100] * 10
    with np.load(SUBSET) as z:
        index = z["index"]
    assert np.all(np.diff(index) > 0) and index.min() >= 0 and index.max() < 10_000


def _fashion_data():  # noqa: ANN202 - the module models/fashion_data.py
    spec = importlib.util.spec_from_file_location("fashion_data", MODELS / "fashion_data.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def full_test() -> tuple[np.ndarray, np.ndarray]:
    """The full 10,000-image Fashion-MNIST test set (Debian's dataset-fashion-mnist), else a skip."""
    fd = _fashion_data()
    root = fd.data_root()
    if not (root / "t10k-labels-idx1-ubyte.gz").exists() and not (root / "t10k-labels-idx1-ubyte").exists():
        pytest.skip(f"Fashion-MNIST IDX files not at {root} (apt-get install dataset-fashion-mnist)")
    return fd.load_split("test")


def test_subset_is_the_indexed_test_images(
    subset: tuple[np.ndarray, np.ndarray], full_test: tuple[np.ndarray, np.ndarray]
) -> None:
    x_full, y_full = full_test
    with np.load(SUBSET) as z:
        index = z["index"]
    assert np.array_equal(subset[0], x_full[index]) and np.array_equal(subset[1], y_full[index])


def test_idx_reader_round_trip(tmp_path: Path) -> None:
    import gzip

    fd = _fashion_data()
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    raw = bytes([0, 0, 0x08, 3]) + b"".join(d.to_bytes(4, "big") for d in arr.shape) + arr.tobytes()
    (tmp_path / "a-idx3-ubyte").write_bytes(raw)
    with gzip.open(tmp_path / "b-idx3-ubyte.gz", "wb") as f:
        f.write(raw)
    assert np.array_equal(fd.read_idx(tmp_path / "a-idx3-ubyte"), arr)
    assert np.array_equal(fd.read_idx(tmp_path / "b-idx3-ubyte.gz"), arr)
    (tmp_path / "bad").write_bytes(b"PK\x03\x04" + raw)
    with pytest.raises(ValueError, match="not an IDX file"):
        fd.read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes(raw[:-1])
    with pytest.raises(ValueError, match="header says"):
        fd.read_idx(tmp_path / "short")


@pytest.mark.parametrize("name", NAMES)
def test_onnx_reaches_recorded_accuracy(name: str, subset: tuple[np.ndarray, np.ndarray]) -> None:
    entry = MANIFEST["models"][name]
    x, y = subset
    acc = _acc(_ort_logits(MODELS / entry["files"]["onnx"]["path"], x), y)
    assert abs(acc - entry["subset_accuracy"]) <= ACC_TOL
    # the subset is a fair sample: its accuracy is near the full test set's (binomial sd ~0.01 at n=1000)
    assert abs(acc - entry["test_accuracy"]) <= 0.04


@pytest.mark.parametrize("name", NAMES)
def test_onnx_reaches_recorded_full_test_accuracy(
    name: str, full_test: tuple[np.ndarray, np.ndarray]
) -> None:
    """The manifest's test accuracy (all 10,000 images) is the committed file's: models/README.md quotes it."""
    entry = MANIFEST["models"][name]
    x, y = full_test
    acc = _acc(_ort_logits(MODELS / entry["files"]["onnx"]["path"], x), y)
    assert entry["test_examples"] == len(y) == 10_000
    # train.py measured with torch, finetune.py with onnxruntime: a few near-ties may flip (5 = 0.0005)
    assert abs(acc - entry["test_accuracy"]) <= 0.0005


@pytest.mark.parametrize("name", [n for n, f in FILES if f == "pt2"])
def test_pt2_matches_onnx(name: str, subset: tuple[np.ndarray, np.ndarray]) -> None:
    entry = MANIFEST["models"][name]
    x, y = subset
    module = torch.export.load(str(MODELS / entry["files"]["pt2"]["path"])).module()
    with torch.no_grad():
        pt2 = module(torch.from_numpy(x)).numpy()
    ref = _ort_logits(MODELS / entry["files"]["onnx"]["path"], x)
    np.testing.assert_allclose(pt2, ref, rtol=0, atol=1e-3 * max(1.0, float(np.abs(ref).max())))
    assert abs(_acc(pt2, y) - entry["subset_accuracy"]) <= ACC_TOL


def _speccert_load(path: Path):  # noqa: ANN202 - speccert.ir.Graph
    if path.suffix == ".pt2" and importlib.util.find_spec("speccert.importers.torch_import") is None:
        pytest.skip("speccert.importers.torch_import (the .pt2 importer) is not in this checkout yet")
    from speccert.importers import load

    return load(path)


@pytest.mark.parametrize(("name", "fmt"), FILES)
def test_speccert_imports_model(name: str, fmt: str, subset: tuple[np.ndarray, np.ndarray]) -> None:
    entry = MANIFEST["models"][name]
    x, y = subset
    graph = _speccert_load(MODELS / entry["files"][fmt]["path"])
    assert tuple(graph.input_shape) == tuple(entry["input_shape"])
    with torch.no_grad():
        ir = graph.forward(torch.from_numpy(x)).float().numpy()
    ref = _ort_logits(MODELS / entry["files"]["onnx"]["path"], x)
    np.testing.assert_allclose(ir, ref, rtol=0, atol=1e-3 * max(1.0, float(np.abs(ref).max())))
    assert abs(_acc(ir, y) - entry["subset_accuracy"]) <= ACC_TOL
