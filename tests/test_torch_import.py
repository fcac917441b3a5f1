"""PyTorch import through every route (.pt2, TorchScript script/trace, factory + state_dict, trusted
pickle): the imported graph must compute what the module computes, on fresh random inputs.

The models live in NETS_SOURCE, a small user package written to a temporary folder: the factory route
then imports it exactly as a user's `my_pkg.nets:SmallCNN` would be (from the working folder).
"""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from speccert.importers import load
from speccert.importers.torch_import import from_module, load_torch_file
from speccert.ir.graph import Graph

NETS_SOURCE = '''
import torch
from torch import nn
import torch.nn.functional as F


def _randomise_bn(model):
    g = torch.Generator().manual_seed(7)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.3)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model.eval()


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(2, 6, 3, padding=1)
        self.conv1 = nn.Conv2d(6, 6, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(6)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        x = F.relu(self.stem(x))
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        x = F.relu(x + y)
        return self.fc(torch.flatten(self.pool(x), 1))


class Concat(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(1, 3, 3, padding=1)
        self.b = nn.Conv2d(1, 2, 5, padding=2)
        self.fc = nn.Linear(5 * 6 * 6, 3)

    def forward(self, x):
        y = torch.cat([torch.tanh(self.a(x)), F.elu(self.b(x))], dim=1)
        return self.fc(y.view(y.size(0), -1))


class Normalised(nn.Module):
    """A model that normalises its own input: (x - mean) / std with per-channel buffers."""

    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1))
        self.conv = nn.Conv2d(3, 4, 3, stride=2)
        self.fc = nn.Linear(4 * 3 * 3, 2)

    def forward(self, x):
        x = (x - self.mean) / self.std
        x = F.leaky_relu(self.conv(x), 0.1)
        return F.log_softmax(self.fc(x.flatten(1)), dim=-1)


class Smooth(nn.Module):
    def __init__(self):
        super().__init__()
        self.l1 = nn.Linear(6, 8)
        self.l2 = nn.Linear(8, 8)
        self.l3 = nn.Linear(8, 8)
        self.l4 = nn.Linear(8, 3)

    def forward(self, x):
        x = F.gelu(self.l1(x))
        x = F.silu(self.l2(x)) * 0.5 + 1.0
        x = F.softplus(self.l3(x)) - torch.sigmoid(x)
        return torch.softmax(self.l4(x), dim=1)


def mlp():
    torch.manual_seed(1)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 3)).eval()


def cnn():
    torch.manual_seed(2)
    return _randomise_bn(nn.Sequential(
        nn.Conv2d(2, 4, 3, stride=2, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 8, 3, padding=2, dilation=2, groups=2), nn.ReLU(),
        nn.Conv2d(8, 8, 2, padding="same"), nn.MaxPool2d(2), nn.AvgPool2d(2, stride=1, padding=1),
        nn.Flatten(), nn.Linear(8 * 4 * 4, 5),
    ))


def residual():
    torch.manual_seed(3)
    return _randomise_bn(Residual())


def concat():
    torch.manual_seed(4)
    return Concat().eval()


def normalised():
    torch.manual_seed(5)
    return Normalised().eval()


def smooth():
    torch.manual_seed(6)
    return Smooth().eval()


def conv1d():
    torch.manual_seed(8)
    return _randomise_bn(nn.Sequential(
        nn.Conv1d(2, 4, 3, padding=1), nn.BatchNorm1d(4), nn.Tanh(), nn.MaxPool1d(2),
        nn.ConvTranspose1d(4, 3, 3, stride=2, padding=1, output_padding=1), nn.Flatten(), nn.Linear(3 * 8, 2),
    ))


def upsample():
    torch.manual_seed(9)
    return nn.Sequential(
        nn.ConvTranspose2d(2, 3, 3, stride=2, padding=1, output_padding=1), nn.Sigmoid(),
        nn.Conv2d(3, 2, 3, padding=1), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(8, 2),
    ).eval()
'''

INPUT_SHAPES: dict[str, tuple[int, ...]] = {
    "mlp": (3, 4),
    "cnn": (2, 12, 12),
    "residual": (2, 6, 6),
    "concat": (1, 6, 6),
    "normalised": (3, 8, 8),
    "smooth": (6,),
    "conv1d": (2, 8),
    "upsample": (2, 4, 4),
}


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny tensors: one intra-op thread avoids OpenMP spin contention on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def nets(tmp_path_factory: pytest.TempPathFactory) -> types.ModuleType:
    """The user package `userpkg_torch.nets`, written to a folder of its own and imported from there."""
    root = tmp_path_factory.mktemp("userpkg")
    (root / "userpkg_torch").mkdir()
    (root / "userpkg_torch" / "__init__.py").write_text("")
    (root / "userpkg_torch" / "nets.py").write_text(NETS_SOURCE)
    sys.path.insert(0, str(root))
    try:
        import userpkg_torch.nets as mod
    finally:
        sys.path.remove(str(root))
    mod.ROOT = root  # type: ignore[attr-defined]
    return mod


def assert_same(graph: Graph, module: nn.Module, input_shape: tuple[int, ...], seed: int = 123) -> None:
    """graph(x) == module(x) on a fresh batch (not the inputs the loader's own check used)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((5, *input_shape), generator=g) * 2
    with torch.no_grad():
        want = module.eval()(x)
        got = graph.forward(x)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def _write(kind: str, model: nn.Module, shape: tuple[int, ...], folder: Path) -> Path:
    x = torch.randn((2, *shape))
    if kind == "pt2":
        path = folder / "model.pt2"
        torch.export.save(torch.export.export(model, (x,)), str(path))
    elif kind == "script":
        path = folder / "model.ts"
        torch.jit.script(model).save(str(path))
    else:
        path = folder / "model.pt"  # TorchScript under a .pt name: told apart by its layout, not suffix
        torch.jit.trace(model, x).save(str(path))
    return path


@pytest.mark.parametrize("kind", ["pt2", "script", "trace"])
@pytest.mark.parametrize("name", sorted(INPUT_SHAPES))
def test_file_formats_match_the_module(nets: types.ModuleType, tmp_path: Path, name: str, kind: str) -> None:
    model, shape = getattr(nets, name)(), INPUT_SHAPES[name]
    path = _write(kind, model, shape, tmp_path)
    graph = load(path, None if kind == "pt2" else shape)
    assert graph.input_shape == shape
    assert graph.source is not None and graph.source.format == ("pt2" if kind == "pt2" else "torchscript")
    assert not graph.unsupported() or graph.output in {n.name for n in graph.unsupported()}
    assert_same(graph, model, shape)


@pytest.mark.parametrize("name", sorted(INPUT_SHAPES))
def test_factory_with_state_dict(
    nets: types.ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    trained = getattr(nets, name)()
    with torch.no_grad():  # weights differ from what the factory builds: they must come from the file
        for p in trained.parameters():
            p.add_(0.05 * torch.randn_like(p))
    weights = tmp_path / "w.pt"
    torch.save(trained.state_dict(), weights)
    monkeypatch.chdir(nets.ROOT)  # type: ignore[attr-defined]
    graph = load(f"userpkg_torch.nets:{name}", INPUT_SHAPES[name], weights=weights)
    assert graph.source is not None and graph.source.format == "state_dict"
    assert_same(graph, trained, INPUT_SHAPES[name])


def test_graph_structure_and_names(nets: types.ModuleType) -> None:
    g = from_module(nets.residual(), INPUT_SHAPES["residual"])
    types_ = [n.op_type for n in g.nodes]
    assert types_.count("BatchNorm") == 2 and types_.count("Add") == 1 and "GlobalAvgPool" in types_
    # nodes holding weights are named after their module: graph parameters match state_dict keys
    assert {"conv1.weight", "bn1.mean", "bn1.var", "fc.weight", "fc.bias"} <= set(g.parameters())
    g = from_module(nets.normalised(), INPUT_SHAPES["normalised"])
    affine = [n for n in g.nodes if n.op_type == "Affine"]
    assert len(affine) == 1  # (x - mean) / std is one elementwise affine map
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    # float64 from the module's float32 buffers: 1/std is the exact reciprocal, not a float32 rounding
    torch.testing.assert_close(affine[0].op.scale.flatten(), 1 / std.double(), rtol=0, atol=0)  # type: ignore[attr-defined]
    torch.testing.assert_close(affine[0].op.shift.flatten(), -mean.double() / std.double())  # type: ignore[attr-defined]
    assert g.nodes[-1].op_type == "Softmax" and g.nodes[-1].op.log  # type: ignore[attr-defined]


def test_cnn_attributes(nets: types.ModuleType) -> None:
    g = from_module(nets.cnn(), INPUT_SHAPES["cnn"])
    convs = [n.op for n in g.nodes if n.op_type == "Conv"]
    assert [c.stride for c in convs] == [(2, 2), (1, 1), (1, 1)]  # type: ignore[attr-defined]
    assert convs[1].dilation == (2, 2) and convs[1].groups == 2  # type: ignore[attr-defined]
    assert convs[2].padding == ((0, 1), (0, 1))  # type: ignore[attr-defined]  # 'same' with an even kernel


def test_graph_to_torch_shares_parameters(nets: types.ModuleType) -> None:
    g = from_module(nets.mlp(), INPUT_SHAPES["mlp"])
    module = g.to_torch()
    x = torch.randn(3, *g.input_shape)
    with torch.no_grad():
        for p in module.parameters():
            p.mul_(2.0)
    torch.testing.assert_close(module(x), g.forward(x))


def test_trusted_pickle_loads_and_default_refuses(nets: types.ModuleType, tmp_path: Path) -> None:
    from speccert.errors import InputError

    model = nets.smooth()
    path = tmp_path / "whole.pth"
    torch.save(model, path)
    with pytest.raises(InputError, match="--trust-pickle"):
        load_torch_file(path, INPUT_SHAPES["smooth"])
    sys.path.insert(0, str(nets.ROOT))  # type: ignore[attr-defined]
    try:
        graph = load_torch_file(path, INPUT_SHAPES["smooth"], trust_pickle=True)
    finally:
        sys.path.remove(str(nets.ROOT))  # type: ignore[attr-defined]
    assert graph.source is not None and graph.source.format == "pickle"
    assert_same(graph, model, INPUT_SHAPES["smooth"])


def test_functional_spellings() -> None:
    """The same maps written with functional calls, views and arithmetic all import."""

    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.randn(5, 4))
            self.c = nn.Parameter(torch.randn(4, 2, 3))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = F.conv1d(x.transpose(1, 2), self.c, padding=1)  # [N, 4, 6]
            y = y.permute(0, 2, 1).unsqueeze(1).squeeze(1)  # [N, 6, 4]
            y = 2.0 - F.relu(y) @ self.w.t() / 3.0  # [N, 6, 5]
            return F.pad(y, (1, 0)).reshape(-1, 36)

    m = Functional().eval()
    g = from_module(m, (6, 2))
    assert_same(g, m, (6, 2))
    assert {n.op_type for n in g.nodes} >= {"Transpose", "Conv", "Linear", "Affine", "Pad", "Reshape"}


@pytest.mark.parametrize("dtype", [torch.float64])
def test_double_precision_module(dtype: torch.dtype) -> None:
    m = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).to(dtype).eval()
    g = from_module(m, (3,))
    x = torch.randn(4, 3, dtype=dtype)
    torch.testing.assert_close(g.forward(x.float()).double(), m(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["module", "pt2", "script"])
def test_circular_padding_becomes_a_circular_conv(tmp_path: Path, kind: str) -> None:
    torch.manual_seed(0)
    m = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1, padding_mode="circular"),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(3 * 5 * 5, 2),
    ).eval()
    shape = (2, 5, 5)
    graph = from_module(m, shape) if kind == "module" else load(_write(kind, m, shape, tmp_path), shape)
    conv = graph.nodes[0].op
    assert conv.padding_mode == "circular" and conv.padding == ((1, 1), (1, 1))  # type: ignore[attr-defined]
    assert_same(graph, m, shape)


def test_circular_conv1d_with_dilation() -> None:
    m = nn.Sequential(nn.Conv1d(2, 3, 3, padding=2, dilation=2, padding_mode="circular"), nn.Tanh()).eval()
    g = from_module(m, (2, 7))
    assert g.nodes[0].op.padding_mode == "circular"  # type: ignore[attr-defined]
    assert_same(g, m, (2, 7))


def test_in_place_ops_are_functionalised_before_conversion() -> None:
    # torch >= 2.14 keeps relu_/hardtanh_/silu_/add_ in exported programs; a mutated tensor that is read
    # again (the residual here reads h after relu_ changed it in place) must be converted as computed.
    from speccert.importers.torch_import import _has_mutation, from_module

    class InPlace(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(2, 2, 3, padding=1)
            self.act = nn.ReLU6(inplace=True)
            self.silu = nn.SiLU(inplace=True)
            self.drop = nn.Dropout(0.3, inplace=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.conv(x)
            h.add_(1.0)
            y = self.silu(self.act(h * 4))
            return self.drop(y + h).flatten(1)

    m = InPlace().eval()
    x = torch.randn(2, 2, 5, 5)
    ep = torch.export.export(m, (x,), strict=False)
    g = from_module(m, (2, 5, 5))  # the faithfulness check compares with the module itself
    with torch.no_grad():
        torch.testing.assert_close(g.forward(x), m(x), rtol=1e-5, atol=1e-6)
    if _has_mutation(ep):  # torch >= 2.14: functionalising removes every in-place op
        assert not _has_mutation(ep.run_decompositions({}))
