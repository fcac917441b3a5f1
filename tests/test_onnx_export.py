"""IR -> ONNX export: the exported file computes Graph.forward (onnxruntime), re-imports to an equal
graph, keeps the original input/output names; and torch -> ONNX -> speccert equals the torch module."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from speccert.errors import UnsupportedModelError, UsageError
from speccert.exporters import graph_to_onnx, save_onnx
from speccert.importers.onnx_import import load_onnx
from speccert.importers.onnx_ops import ONNX_OPS
from speccert.ir import (
    Activation,
    Add,
    Affine,
    AvgPool,
    BatchNorm,
    Concat,
    Conv,
    ConvTranspose,
    GlobalAvgPool,
    Graph,
    Linear,
    MaxPool,
    Node,
    Opaque,
    Pad,
    Reshape,
    Softmax,
    Transpose,
)
from tests.conftest import corpus_models

EXAMPLES = [
    pytest.param(key, i, id=f"{conv.op_type}-ex{i}")
    for key, conv in ONNX_OPS.items()
    for i in range(len(conv.examples))
]


def ort_run(path: Path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def assert_round_trip(g: Graph, tmp_path: Path, opset: int = 17, batch: int = 3) -> Graph:
    p = save_onnx(g, tmp_path / "out.onnx", opset=opset)
    x = np.random.default_rng(3).standard_normal((batch, *g.input_shape)).astype(np.float32)
    with torch.no_grad():
        want = g.forward(torch.from_numpy(x).to(g.dtype)).double().numpy()
    np.testing.assert_allclose(ort_run(p, x), want, rtol=1e-5, atol=1e-5)
    g2 = load_onnx(p)  # runs its own faithfulness check against onnxruntime too
    assert g2.input_shape == g.input_shape and g2.output_shape == g.output_shape
    with torch.no_grad():
        np.testing.assert_allclose(
            g2.forward(torch.from_numpy(x)).double().numpy(), want, rtol=1e-5, atol=1e-5
        )
    return g2


@pytest.mark.parametrize(("key", "index"), EXAMPLES)
def test_imported_examples_round_trip(key: tuple, index: int, tmp_path: Path) -> None:
    m = ONNX_OPS.get(key).examples[index]()
    onnx.save(m, str(tmp_path / "in.onnx"))
    g = load_onnx(tmp_path / "in.onnx")
    g2 = assert_round_trip(g, tmp_path, opset=21 if any(n.op_type == "Gelu" for n in m.graph.node) else 17)
    assert [n.op_type for n in g2.nodes] == [n.op_type for n in g.nodes]


def _ir_graph() -> Graph:
    t = torch.randn
    nodes = [
        Node("norm", Affine(torch.tensor([2.0, 0.5, 4.0]).reshape(3, 1, 1), t(3, 1, 1)), ("input",)),
        Node("c1", Conv(t(6, 3, 3, 3), t(6), (1, 1), ((1, 0), (2, 1)), (1, 1)), ("norm",)),  # [6, 6, 7]
        Node("bn", BatchNorm(t(6).abs(), t(6).abs() + 0.5, t(6), t(6)), ("c1",)),
        Node("act", Activation("silu"), ("bn",)),
        Node(
            "ct", ConvTranspose(t(6, 3, 2, 2), t(6), (2, 2), (1, 1), (1, 0), (1, 1), groups=2), ("act",)
        ),  # [6, 11, 12]
        Node("mp", MaxPool((2, 2), (2, 2), ((0, 1), (0, 0)), (1, 1)), ("ct",)),  # [6, 6, 6]
        Node("g", Activation("gelu"), ("mp",)),
        # (onnxruntime's optimiser fuses Pad into the next pool and then rejects pads >= kernel: keep them small)
        Node("pad", Pad(((0, 0), (1, 1), (1, 1))), ("g",)),  # [6, 8, 8]
        Node("ap", AvgPool((2, 2), (1, 1), ((0, 0), (0, 0))), ("pad",)),  # [6, 7, 7]
        Node("gp", GlobalAvgPool(), ("ap",)),  # [6, 1, 1]
        Node("tr", Transpose((1, 2, 0)), ("ap",)),
        Node("tr2", Transpose((2, 0, 1)), ("tr",)),
        Node("sum", Add(), ("tr2", "ap")),
        Node("cat", Concat(axis=0), ("sum", "ap")),  # [12, 7, 7]
        Node("flat", Reshape((-1,)), ("cat",)),  # [588]
        Node("gp_flat", Reshape((6,)), ("gp",)),
        Node("cat2", Concat(axis=0), ("flat", "gp_flat")),  # [594]
        Node("fc", Linear(t(5, 594) * 0.05, t(5)), ("cat2",)),
        Node("out", Softmax(log=True), ("fc",)),
    ]
    return Graph((3, 7, 6), nodes)


def test_ir_graph_with_every_op_round_trips(tmp_path: Path) -> None:
    g = _ir_graph()
    assert {type(n.op) for n in g.nodes} >= {
        Affine,
        Conv,
        BatchNorm,
        Activation,
        ConvTranspose,
        MaxPool,
        Pad,
        AvgPool,
        GlobalAvgPool,
        Transpose,
        Add,
        Concat,
        Reshape,
        Linear,
        Softmax,
    }
    assert_round_trip(g, tmp_path)


def test_linear_on_a_3d_tensor_and_identity_graph(tmp_path: Path) -> None:
    g = Graph(
        (4, 5),
        [
            Node("lin", Linear(torch.randn(3, 5), torch.randn(3)), ("input",)),
            Node("r", Activation("elu", 0.7), ("lin",)),
        ],
    )
    assert_round_trip(g, tmp_path)
    assert_round_trip(Graph((4,), []), tmp_path)


def test_input_and_output_names_are_kept(corpus_dir: Path, tmp_path: Path) -> None:
    if "marabou_cifar10_small" not in corpus_models():
        pytest.skip("marabou_cifar10_small not in the corpus")
    src = corpus_dir / "marabou_cifar10_small" / "model.onnx"
    g = load_onnx(src)
    m = graph_to_onnx(g)
    orig = onnx.load(str(src))
    assert m.graph.input[0].name == orig.graph.input[0].name
    assert m.graph.output[0].name == orig.graph.output[0].name
    assert m.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
    assert_round_trip(g, tmp_path, batch=2)


def test_unexportable_graphs_are_refused(tmp_path: Path) -> None:
    g = Graph((3,), [Node("s", Opaque(source_op="Sign", fn=torch.sign), ("input",))])
    with pytest.raises(UnsupportedModelError, match="Sign"):
        save_onnx(g, tmp_path / "x.onnx")
    circ = Graph(
        (1, 5, 5),
        [
            Node(
                "c",
                Conv(
                    torch.randn(1, 1, 3, 3), None, (1, 1), ((1, 1), (1, 1)), (1, 1), padding_mode="circular"
                ),
                ("input",),
            )
        ],
    )
    with pytest.raises(UnsupportedModelError, match="circular"):
        save_onnx(circ, tmp_path / "x.onnx")
    with pytest.raises(UsageError):
        save_onnx(Graph((3,), [Node("r", Activation("relu"), ("input",))]), tmp_path / "x.onnx", opset=11)
    assert not (tmp_path / "x.onnx").exists()


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm_mean = torch.tensor([0.5, 0.4]).reshape(1, 2, 1, 1)
        self.conv = nn.Conv2d(2, 6, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.block = nn.Sequential(nn.Conv2d(6, 6, 3, padding=1, groups=2), nn.LeakyReLU(0.1))
        self.pool = nn.AvgPool2d(2)
        self.fc = nn.Linear(6 * 2 * 2, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn(self.conv((x - self.norm_mean) / 0.25)))
        h = h + self.block(h)
        return self.fc(torch.flatten(self.pool(h), 1))


def test_torch_module_exported_by_torch_imports_equal(tmp_path: Path) -> None:
    net = _Net().eval()
    with torch.no_grad():
        net.bn.running_mean.uniform_(-1, 1)
        net.bn.running_var.uniform_(0.5, 2)
    x = torch.rand(2, 2, 8, 8)
    p = tmp_path / "net.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net,
            (x,),
            str(p),
            dynamo=False,
            input_names=["img"],
            output_names=["logits"],
            dynamic_axes={"img": {0: "N"}, "logits": {0: "N"}},
            opset_version=13,
        )
    g = load_onnx(p)
    xs = torch.rand(5, 2, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(g.forward(xs), net(xs), rtol=1e-5, atol=1e-5)
    assert_round_trip(g, tmp_path)
