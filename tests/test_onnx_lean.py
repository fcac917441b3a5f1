"""The lean ONNX reader (importers/onnx_lean.py) gives exactly onnx.load's values and structure, falls
back to read_onnx (and its errors) for files it does not handle, and the import hands a weight read by
one node to that node without a copy while tied weights stay separate."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import helper, numpy_helper
from test_onnx_memory import _mlp as mlp_with_weights

from speccert.errors import InputError
from speccert.importers import onnx_lean
from speccert.importers.onnx_import import load_onnx
from speccert.importers.onnx_lean import read_onnx_lean
from speccert.importers.onnx_ops import pattern
from speccert.importers.onnx_ops.examples import model, randn
from speccert.ir.ops import Conv, Linear

ROOT = Path(__file__).resolve().parents[1]
FILES = sorted((ROOT / "models").glob("*.onnx"))


@pytest.fixture
def read_everything(monkeypatch: pytest.MonkeyPatch) -> None:
    # every initializer goes the lean way and stays an array (fusions read no constants then)
    monkeypatch.setattr(onnx_lean, "BIG_RAW_BYTES", 0)
    monkeypatch.setattr(onnx_lean, "SMALL", 0)
    monkeypatch.setattr(pattern, "SMALL", 0)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_values_and_structure_are_exactly_onnx_loads(path: Path, read_everything: None) -> None:
    ref = onnx.load(str(path))
    lean, arrays = read_onnx_lean(path)
    assert arrays  # the lean path was taken
    expected = {t.name: numpy_helper.to_array(t) for t in ref.graph.initializer}
    for name, a in arrays.items():
        assert a.dtype == expected[name].dtype and a.shape == expected[name].shape
        assert a.tobytes() == expected[name].tobytes()  # bit for bit
    for t in lean.graph.initializer:
        if t.name in arrays:
            assert not t.raw_data and list(t.dims) == list(arrays[t.name].shape)
        else:
            assert (
                t.SerializeToString()
                == next(r for r in ref.graph.initializer if r.name == t.name).SerializeToString()
            )
    strip = onnx.ModelProto()
    strip.CopyFrom(ref)
    for t in strip.graph.initializer:
        if t.name in arrays:
            t.ClearField("raw_data")
    assert lean.SerializeToString() == strip.SerializeToString()


def _mlp(tmp_path: Path, shared: bool = False, **save: object) -> Path:
    """x -> Gemm(w1, b1) -> Relu -> Gemm(w2 or w1 again): test_onnx_memory's model."""
    return Path(mlp_with_weights(tmp_path, shared, **save)[0])


def _spy_reads(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Initializer name -> address of the array the lean reader read it into."""
    seen: dict[str, int] = {}
    real = onnx_lean._read_array

    def spy(f, offset, length, dtype, dims):  # noqa: ANN001, ANN202
        a = real(f, offset, length, dtype, dims)
        seen[str(len(seen))] = a.ctypes.data
        return a

    monkeypatch.setattr(onnx_lean, "_read_array", spy)
    return seen


@pytest.mark.parametrize("shared", [False, True])
def test_a_weight_read_by_one_node_is_not_copied_tied_ones_are(
    tmp_path: Path, shared: bool, read_everything: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _mlp(tmp_path, shared)
    ref = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}
    reads = _spy_reads(monkeypatch)
    g = load_onnx(path)
    fc1, fc2 = (n.op for n in g.nodes if isinstance(n.op, Linear))
    assert torch.equal(fc1.weight, torch.tensor(ref["w1"]))
    assert torch.equal(fc2.weight, torch.tensor(ref["w1" if shared else "w2"]))
    assert fc1.weight.data_ptr() != fc2.weight.data_ptr()  # training updates one op in place
    # a weight read by one Gemm stays the array read from the file; w1 read by both is copied for each
    in_place = [w.data_ptr() in reads.values() for w in (fc1.weight, fc2.weight)]
    assert in_place == ([False, False] if shared else [True, True])


def test_a_conv_weight_is_not_copied(
    tmp_path: Path, read_everything: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = randn(4, 3, 3, 3, seed=4)
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[1, 1, 1, 1])]
    path = tmp_path / "conv.onnx"
    onnx.save(model(nodes, (3, 8, 8), {"w": w}, opset=13), path)
    reads = _spy_reads(monkeypatch)
    (conv,) = (n.op for n in load_onnx(path).nodes if isinstance(n.op, Conv))
    assert torch.equal(conv.weight, torch.tensor(w)) and conv.weight.data_ptr() in reads.values()


def _external(tmp_path: Path) -> Path:
    return _mlp(tmp_path, save_as_external_data=True, all_tensors_to_one_file=True, size_threshold=0)


def test_external_data_is_read_exactly(tmp_path: Path, read_everything: None) -> None:
    path = _external(tmp_path)
    ref = onnx.load(str(path))  # onnx loads the external data too
    lean, arrays = read_onnx_lean(path)
    assert sorted(arrays) == ["b1", "w1", "w2"]
    for t in ref.graph.initializer:
        assert arrays[t.name].tobytes() == numpy_helper.to_array(t).tobytes()
    load_onnx(path)


def _point_external(path: Path, location: str, **extra: str) -> None:
    m = onnx.load(str(path), load_external_data=False)
    for t in m.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = location
            elif e.key in extra:
                e.value = extra[e.key]
    onnx.save(m, path)


@pytest.mark.parametrize(
    ("location", "extra", "match"),
    [
        ("../outside.data", {}, "outside the model's folder"),
        ("/etc/passwd", {}, "relative path"),
        ("missing.data", {}, "not found"),
        ("weights.data", {"offset": "1000000"}, "external data"),  # past the end of the file
        ("weights.data", {"offset": "x"}, "external data"),
    ],
)
def test_external_data_is_checked_before_it_is_read(
    tmp_path: Path, read_everything: None, location: str, extra: dict[str, str], match: str
) -> None:
    path = _external(tmp_path)
    (tmp_path / "outside.data").write_bytes(b"\0" * 4096)
    data = next(p for p in tmp_path.iterdir() if p.suffix != ".onnx" and p.name != "outside.data")
    data.rename(tmp_path / "weights.data")
    _point_external(path, location, **extra)
    with pytest.raises(InputError, match=match):
        load_onnx(path)


@pytest.mark.parametrize("cut", [0.2, 0.5, 0.8, 0.95])
def test_a_truncated_file_is_an_input_error(tmp_path: Path, cut: float, read_everything: None) -> None:
    path = _mlp(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * cut)])
    with pytest.raises(InputError):
        load_onnx(path)


def test_dims_that_disagree_with_the_data_are_named(tmp_path: Path, read_everything: None) -> None:
    path = _mlp(tmp_path)
    m = onnx.load(str(path))
    m.graph.initializer[0].dims[0] = 7  # 7x6 declared, 6x6 stored
    onnx.save(m, path)
    with pytest.raises(InputError, match="declares dims"):
        load_onnx(path)


def test_non_raw_tensors_stay_in_the_structure(tmp_path: Path, read_everything: None) -> None:
    w = np.arange(12, dtype=np.float32).reshape(3, 4)
    t = helper.make_tensor("w", onnx.TensorProto.FLOAT, [3, 4], w.ravel().tolist())  # float_data
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")]
    m = model(nodes, (3,), {}, opset=13)
    m.graph.initializer.append(t)
    path = tmp_path / "fd.onnx"
    onnx.save(m, path)
    lean, arrays = read_onnx_lean(path)
    assert arrays == {} and list(lean.graph.initializer[0].float_data) == w.ravel().tolist()
    load_onnx(path)


@pytest.mark.parametrize("external", [False, True])
def test_small_initializers_keep_their_bytes_in_the_structure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, external: bool
) -> None:
    # the fusions read constants of at most pattern.SMALL entries from the structure (to_array)
    monkeypatch.setattr(onnx_lean, "BIG_RAW_BYTES", 0)
    monkeypatch.setattr(onnx_lean, "SMALL", 20)  # w1, w2: 36 entries (arrays); b1: 6 (structure)
    path = _external(tmp_path) if external else _mlp(tmp_path)
    lean, arrays = read_onnx_lean(path)
    assert sorted(arrays) == ["w1", "w2"]
    ref = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}
    for t in lean.graph.initializer:
        assert t.data_location == onnx.TensorProto.DEFAULT and not t.external_data
        if t.name == "b1":
            assert numpy_helper.to_array(t).tobytes() == ref["b1"].tobytes()
    load_onnx(path)
