"""Round trips: Graph -> save_pt2 -> load equals Graph.forward; torch model -> ONNX (torch.onnx, the
TorchScript-based exporter, which needs no onnxscript) -> speccert's ONNX import equals the torch import."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from speccert.importers import load
from speccert.importers.torch_import import from_module, save_pt2


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class ResNetLike(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor([0.5, 0.4]).view(2, 1, 1))
        self.conv0 = nn.Conv2d(2, 4, 3, stride=2, padding=1)
        self.conv1 = nn.Conv2d(4, 4, 3, padding=1, groups=2)
        self.bn1 = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 + 4 * 2 * 2, 3)
        g = torch.Generator().manual_seed(0)
        self.bn1.running_mean.copy_(torch.randn(4, generator=g))
        self.bn1.running_var.copy_(torch.rand(4, generator=g) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv0((x - self.mean) * 4.0))
        x = F.relu(x + self.bn1(self.conv1(x)))
        pooled = F.adaptive_avg_pool2d(x, 1).flatten(1)
        coarse = F.max_pool2d(x, 2).flatten(1)
        return self.fc(torch.cat([pooled, coarse], dim=1))


MODELS = {
    "resnet_like": (ResNetLike, (2, 8, 8)),
    "mlp_smooth": (
        lambda: nn.Sequential(
            nn.Linear(5, 7),
            nn.Softplus(),
            nn.Linear(7, 7),
            nn.Sigmoid(),
            nn.Linear(7, 2),
            nn.LogSoftmax(dim=1),
        ),
        (5,),
    ),
    "conv_elu": (
        lambda: nn.Sequential(
            nn.Conv2d(1, 3, 3, dilation=2, padding=2),
            nn.ELU(),
            nn.AvgPool2d(2),
            nn.Flatten(),
            nn.Linear(3 * 3 * 3, 2),
        ),
        (1, 6, 6),
    ),
}


def _model(name: str) -> tuple[nn.Module, tuple[int, ...]]:
    torch.manual_seed(5)
    factory, shape = MODELS[name]
    return factory().eval(), shape


@pytest.mark.parametrize("name", sorted(MODELS))
def test_graph_save_pt2_load_equals_graph(tmp_path: Path, name: str) -> None:
    model, shape = _model(name)
    graph = from_module(model, shape)
    path = save_pt2(graph, tmp_path / "g.pt2")
    again = load(path)
    assert again.input_shape == graph.input_shape
    assert [n.op_type for n in again.nodes] == [n.op_type for n in graph.nodes]
    for batch in (1, 4):  # the archive's batch axis is dynamic
        x = torch.randn(batch, *shape)
        torch.testing.assert_close(again.forward(x), graph.forward(x), rtol=1e-5, atol=1e-6)
    ep = torch.export.load(str(path))
    reloaded = ep.module()
    x = torch.randn(3, *shape)
    torch.testing.assert_close(reloaded(x), graph.forward(x), rtol=1e-5, atol=1e-6)
    # every weight stored once, as a parameter the exported graph reads (the non-strict tracer used to
    # store each a second time as a lifted constant and read that: twice the file, inert parameters)
    assert not [k for k, v in ep.constants.items() if isinstance(v, torch.Tensor) and v.numel() > 1]
    with torch.no_grad():
        for p in reloaded.parameters():
            p.mul_(2.0)
    assert not torch.allclose(reloaded(x), graph.forward(x))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_torch_to_onnx_import_equals_torch_import(tmp_path: Path, name: str) -> None:
    model, shape = _model(name)
    x = torch.randn(2, *shape)
    path = tmp_path / "m.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (x,),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["x"],
            output_names=["y"],
            dynamic_axes={"x": {0: "n"}, "y": {0: "n"}},
        )
    from_onnx = load(path)
    from_torch = from_module(model, shape)
    assert from_onnx.input_shape == from_torch.input_shape
    xs = torch.randn(5, *shape)
    torch.testing.assert_close(from_onnx.forward(xs), from_torch.forward(xs), rtol=1e-4, atol=1e-5)
    # both importers see the same weight layers (the ONNX exporter may fold BatchNorm into the conv)
    layers = [
        [n.op.weight.shape for n in g.nodes if n.op_type in ("Conv", "Linear")]  # type: ignore[attr-defined]
        for g in (from_onnx, from_torch)
    ]
    assert layers[0] == layers[1]


def test_pt2_keeps_layer_names_and_hostile_names_do_not_break_the_module(tmp_path: Path) -> None:
    """A graph's layers keep their names through save_pt2 -> load (each node's tensors live in a submodule
    at the node's name); names that would shadow the module's attributes, parameters or each other
    get a prefix or a suffix instead of failing."""
    from speccert.ir.graph import INPUT, Graph, GraphModule, Node
    from speccert.ir.ops import Activation, Linear

    gen = torch.Generator().manual_seed(0)
    names = ["a", "a.weight", "forward", "graph", "x.", "a.b.c", "a.b", "n_forward", "training", "/4/Gemm"]
    nodes, prev = [], INPUT
    for i, n in enumerate(names):
        nodes.append(
            Node(
                n,
                Linear(weight=torch.randn(3, 3, generator=gen), bias=torch.randn(3, generator=gen)),
                (prev,),
                (3,),
            )
        )
        nodes.append(Node(f"act{i}", Activation("tanh"), (n,), (3,)))
        prev = f"act{i}"
    g = Graph((3,), nodes, prev)
    module = GraphModule(g)
    assert len(list(module.parameters())) == 2 * len(names)
    x = torch.randn(4, 3)
    torch.testing.assert_close(module(x), g.forward(x))
    again = load(save_pt2(g, tmp_path / "g.pt2"))
    torch.testing.assert_close(again.forward(x), g.forward(x), rtol=1e-6, atol=1e-6)
    assert {"a", "a.b.c", "/4/Gemm"} <= {n.name for n in again.nodes}
