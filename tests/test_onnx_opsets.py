"""The shape sub-graphs exporters write, at every opset 9-21: constant folding runs each node with the
model's own opset (opset-9 `Unsqueeze(axes=...)` used to fail under the opset-13 kernel), and the
result matches onnxruntime. Also: one report line per kind of unsupported node."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import helper

from speccert.errors import UnsupportedModelError
from speccert.importers.onnx_import import load_onnx
from speccert.importers.onnx_ops.examples import model, randn

OPSETS = list(range(9, 22))


def _axes_node(op: str, x: str, out: str, axes: list[int], opset: int, inits: dict) -> onnx.NodeProto:
    if opset >= 13:
        name = f"{out}_axes"
        inits[name] = np.array(axes, np.int64)
        return helper.make_node(op, [x, name], [out])
    return helper.make_node(op, [x], [out], axes=axes)


def _slice_node(x: str, out: str, start: int, end: int, axis: int, opset: int, inits: dict) -> onnx.NodeProto:
    if opset >= 10:
        for k, v in (("s", start), ("e", end), ("a", axis)):
            inits[f"{out}_{k}"] = np.array([v], np.int64)
        return helper.make_node("Slice", [x, f"{out}_s", f"{out}_e", f"{out}_a"], [out])
    return helper.make_node("Slice", [x], [out], starts=[start], ends=[end], axes=[axis])


def shape_ops_model(opset: int) -> onnx.ModelProto:
    """x [N, 2, 3, 4] -> Unsqueeze/Squeeze round trip -> x.view(x.size(0), -1) (Shape, Gather,
    Unsqueeze, Concat, Reshape) -> Slice of the features -> Flatten -> MatMul."""
    inits: dict = {"zero": np.array(0, np.int64), "minus1": np.array([-1], np.int64), "w": randn(12, 5)}
    nodes = [
        _axes_node("Unsqueeze", "x", "u", [2], opset, inits),  # [N, 2, 1, 3, 4]
        _axes_node("Squeeze", "u", "q", [2], opset, inits),  # [N, 2, 3, 4]
        helper.make_node("Shape", ["q"], ["s"]),
        helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
        _axes_node("Unsqueeze", "n", "n1", [0], opset, inits),
        helper.make_node("Concat", ["n1", "minus1"], ["target"], axis=0),
        helper.make_node("Reshape", ["q", "target"], ["flat"]),  # [N, 24]
        _slice_node("flat", "half", 6, 18, 1, opset, inits),  # [N, 12]
        helper.make_node("Flatten", ["half"], ["f"], axis=1),
        helper.make_node("MatMul", ["f", "w"], ["y"]),
    ]
    return model(nodes, (2, 3, 4), inits, opset)


@pytest.mark.parametrize("opset", OPSETS)
def test_shape_ops_fold_at_every_opset(opset: int, tmp_path: Path) -> None:
    m = shape_ops_model(opset)
    p = tmp_path / f"shape{opset}.onnx"
    onnx.save(m, str(p))
    g = load_onnx(p)  # its faithfulness check runs onnxruntime too
    x = np.random.default_rng(opset).standard_normal((3, 2, 3, 4)).astype(np.float32)
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    want = sess.run(None, {"x": x})[0]
    np.testing.assert_allclose(g.forward(torch.from_numpy(x)).numpy(), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("opset", [9, 11, 13, 17])
def test_torch_legacy_flatten_export_loads(opset: int, tmp_path: Path) -> None:
    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 2, 3)
            self.fc = torch.nn.Linear(2 * 4 * 4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = torch.relu(self.conv(x))
            return self.fc(h.view(h.size(0), -1))

    torch.manual_seed(0)
    p = tmp_path / f"flat{opset}.onnx"
    x = torch.randn(2, 1, 6, 6)
    try:
        torch.onnx.export(
            Net().eval(),
            (x,),
            str(p),
            dynamo=False,
            opset_version=opset,
            input_names=["x"],
            dynamic_axes={"x": {0: "N"}},
        )
    except Exception as exc:  # noqa: BLE001 - an exporter without the legacy route
        pytest.skip(f"legacy ONNX export unavailable: {exc}")
    g = load_onnx(p)
    assert [n.op_type for n in g.nodes][-1] == "Linear"


def test_repeated_products_are_reported_once_per_kind(tmp_path: Path) -> None:
    # 12 squeeze-excitation gates and 5 attention MatMuls: two lines, not 17.
    nodes, inits = [], {}
    cur = "x"
    for i in range(12):
        nodes += [
            helper.make_node("GlobalAveragePool", [cur], [f"p{i}"]),
            helper.make_node("Sigmoid", [f"p{i}"], [f"s{i}"]),
            helper.make_node("Mul", [cur, f"s{i}"], [f"m{i}"], name=f"gate{i}"),
        ]
        cur = f"m{i}"
    nodes.append(helper.make_node("Reshape", [cur, "shape"], ["t"]))
    inits["shape"] = np.array([0, 4, 9], np.int64)
    cur = "t"
    for i in range(5):
        nodes += [
            helper.make_node("Transpose", [cur], [f"tt{i}"], perm=[0, 2, 1]),
            helper.make_node("MatMul", [cur, f"tt{i}"], [f"a{i}"], name=f"attn{i}"),
            helper.make_node("MatMul", [f"a{i}", cur], [f"o{i}"], name=f"av{i}"),
        ]
        cur = f"o{i}"
    nodes.append(helper.make_node("Identity", [cur], ["y"]))
    p = tmp_path / "prod.onnx"
    onnx.save(model(nodes, (4, 3, 3), inits, 13), str(p))
    with pytest.raises(UnsupportedModelError) as info:
        load_onnx(p)
    problems = info.value.problems
    assert [op for op, _, _ in problems] == ["Mul ×12", "MatMul ×10"]
    assert "squeeze-excitation" in problems[0][2] and "attention" in problems[1][2]
    assert problems[0][1] == "gate0, gate1, gate2 and 9 more"
    assert len(str(info.value)) < 600


def test_opset9_attention_export_is_refused_in_one_line_naming_attention(tmp_path: Path) -> None:
    class Attention(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.qkv = torch.nn.Linear(8, 24)
            self.head = torch.nn.Linear(8 * 4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            t = x.view(x.size(0), 4, 8)
            q, k, v = self.qkv(t).chunk(3, dim=-1)
            a = torch.softmax(q @ k.transpose(1, 2), dim=-1)
            return self.head((a @ v).view(x.size(0), -1))

    p = tmp_path / "attn9.onnx"
    try:
        torch.onnx.export(
            Attention().eval(),
            (torch.randn(2, 32),),
            str(p),
            dynamo=False,
            opset_version=9,
            input_names=["x"],
            dynamic_axes={"x": {0: "N"}},
        )
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"legacy ONNX export unavailable: {exc}")
    with pytest.raises(UnsupportedModelError) as info:
        load_onnx(p)
    text = str(info.value)
    assert "attention" in text and "NoneType" not in text and len(text) < 800
    assert all("×" in op or op in ("MatMul", "Softmax") for op, _, _ in info.value.problems), (
        info.value.problems
    )
