"""deel-torchlip's 1-Lipschitz layers beyond GroupSort (issue 15): LayerCentering (IR `Center`), the
L2-norm pool (IR `L2Pool`) and the HouseHolder activation (IR `Householder`). Each rule is checked against the truth (a dense Jacobian's norm, or
difference quotients pushed up by gradient ascent), and the layer, written in plain torch the way the
library writes it (no test dependency on deel), imports through legacy ONNX (opset 17, and 18 where
ReduceMean takes its axes as an input, as the dynamo exporter writes it) and `.pt2` as one IR node,
checked against onnxruntime / torch at load."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st
from quotient_ascent import ascent

import speccert
from speccert.bounds import lipschitz_bound
from speccert.errors import UnsupportedModelError
from speccert.ir import INPUT, Center, Graph, Householder, L2Pool, Linear, Node, Reshape

D = torch.float64


def _jacobian_norm(f, shape: tuple[int, ...]) -> float:  # noqa: ANN001
    x = torch.randn(shape, dtype=D, generator=torch.Generator().manual_seed(3))
    jac = torch.autograd.functional.jacobian(f, x).reshape(-1, x.numel())
    return float(torch.linalg.matrix_norm(jac, ord=2))


# ---- Center ------------------------------------------------------------------------------------------
@settings(max_examples=10, deadline=None, derandomize=True)
@given(seed=st.integers(0, 1000), axes=st.sampled_from([(0,), (1, 2), (0, 1, 2), (2,)]))
def test_center_is_exactly_1_lipschitz_and_the_bound_is_the_product(seed: int, axes: tuple[int, ...]) -> None:
    shape = (3, 4, 2)
    g = Graph(shape, [Node("c", Center(axes), (INPUT,))], dtype=D)
    assert _jacobian_norm(lambda z: g.forward(z[None])[0], shape) == pytest.approx(1.0, rel=1e-12)
    gen = torch.Generator().manual_seed(seed)
    w1 = torch.randn(24, 5, generator=gen, dtype=D)
    w2 = torch.randn(3, 24, generator=gen, dtype=D)
    net = Graph(
        (5,),
        [
            Node("l1", Linear(w1, None), (INPUT,)),
            Node("r1", Reshape(shape), ("l1",)),
            Node("c", Center(axes), ("r1",)),
            Node("r2", Reshape((24,)), ("c",)),
            Node("l2", Linear(w2, None), ("r2",)),
        ],
        dtype=D,
    )
    lb = lipschitz_bound(net, method="exact")
    s1, s2 = (float(torch.linalg.matrix_norm(w, ord=2)) for w in (w1, w2))
    assert lb.upper == pytest.approx(s1 * s2, rel=1e-9)  # factor 1, not 2 (x plus the broadcast mean)
    x0 = torch.randn(5, generator=gen, dtype=D)
    assert ascent(lambda z: net.forward(z[None])[0], x0) <= lb.upper
    # the truth: the whole net's Jacobian (it is linear) never exceeds the bound
    assert _jacobian_norm(lambda z: net.forward(z[None])[0], (5,)) <= lb.upper


class TorchCentering(nn.Module):  # deel-torchlip's LayerCentering: x - mean over dims + a bias
    def __init__(self, channels: int, dims: tuple[int, ...]) -> None:
        super().__init__()
        self.dims = dims
        self.bias = nn.Parameter(torch.linspace(-1, 1, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=self.dims, keepdim=True)
        return x - mean + self.bias.view(1, -1, 1, 1)


def _export(m: nn.Module, route: str, tmp_path: Path, shape: tuple[int, ...]) -> Path:
    x = torch.randn(1, *shape)
    if route == "pt2":
        p = tmp_path / "m.pt2"
        torch.export.save(torch.export.export(m, (x,)), str(p))
    else:
        p = tmp_path / f"m_{route}.onnx"
        torch.onnx.export(m, (x,), str(p), dynamo=False, opset_version=int(route.removeprefix("onnx")))
    return p


@pytest.mark.parametrize("route", ["onnx17", "onnx18", "pt2"])
@pytest.mark.parametrize("dims", [(-2, -1), (1,), (1, 2, 3)])
def test_layer_centering_imports_as_one_center(route: str, dims: tuple[int, ...], tmp_path: Path) -> None:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), TorchCentering(4, dims), nn.Flatten()).eval()
    g = speccert.load(_export(m, route, tmp_path, (2, 5, 5)))  # the faithfulness check runs at load
    kinds = [n.op_type for n in g.nodes]
    assert kinds.count("Center") == 1 and "Add" not in kinds and "GlobalAvgPool" not in kinds
    center = next(n.op for n in g.nodes if isinstance(n.op, Center))
    assert center.axes == tuple(sorted(d % 4 - 1 for d in dims))
    x = torch.randn(4, 2, 5, 5)
    with torch.no_grad():
        assert torch.allclose(g.forward(x), m(x), atol=1e-5)
    lb = lipschitz_bound(g, method="exact")
    assert lb.upper == pytest.approx(math.prod(r.upper.value for r in lb.layers), rel=1e-9)


def test_a_mean_of_another_tensor_is_not_a_centering(tmp_path: Path) -> None:
    # x - mean(relu(x)) is no projection: it stays refused (shapes differ, no Center), never fused.
    class NotCentering(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x - torch.relu(x).mean(dim=(2, 3), keepdim=True)

    m = nn.Sequential(nn.Conv2d(2, 4, 3), NotCentering()).eval()
    for route in ("onnx17", "pt2"):
        with pytest.raises(UnsupportedModelError, match="shape"):
            speccert.load(_export(m, route, tmp_path, (2, 5, 5)))


# ---- L2Pool ------------------------------------------------------------------------------------------
@settings(max_examples=16, deadline=None, derandomize=True)
@given(
    seed=st.integers(0, 1000),
    kernel=st.sampled_from([(2, 2), (3, 2), (2, 3)]),
    overlap=st.booleans(),
    ceil_mode=st.booleans(),
    size=st.sampled_from([(5, 5), (6, 7), (4, 6)]),
)
def test_l2pool_rule_covers_ascent_and_is_reached(
    seed: int, kernel: tuple[int, int], overlap: bool, ceil_mode: bool, size: tuple[int, int]
) -> None:
    stride = (1, 1) if overlap else kernel
    op = L2Pool(kernel, stride, ceil_mode, float(kernel[0] * kernel[1]))
    g = Graph((2, *size), [Node("p", op, (INPUT,))], dtype=D)
    bound = lipschitz_bound(g, method="exact").upper
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.randn(2, *size, generator=gen, dtype=D)
    assert ascent(lambda z: g.forward(z[None])[0], x0) <= bound
    # positively homogeneous: the quotient of x and 2x is ||f(x)|| / ||x||, which reaches
    # sqrt(K / n_w) on an x living in the smallest window only
    x = torch.zeros(1, 2, *size, dtype=D)
    x[0, 0, -1, -1] = 1.0
    with torch.no_grad():
        q = float(g.forward(x).norm() / x.norm())
    assert q <= bound
    if not overlap and not ceil_mode:  # full, disjoint windows: exactly 1 (gradient-norm preserving)
        assert bound == pytest.approx(1.0, rel=1e-12)
        x = torch.randn(1, 2, *size, generator=gen, dtype=D)
        used = [(size[i] // kernel[i]) * kernel[i] for i in range(2)]
        x[..., used[0] :, :] = 0
        x[..., :, used[1] :] = 0
        with torch.no_grad():
            assert float(g.forward(x).norm() / x.norm()) == pytest.approx(1.0, rel=1e-12)
    if ceil_mode and not overlap and any(n % k for n, k in zip(size, kernel, strict=True)):
        assert bound > 1.0 and q > 1.0  # a cut window is scaled up by K / n_w: the rule sees it


class ScaledL2Pool(nn.Module):  # deel-torchlip's ScaledL2NormPool2d: LPPool2d(2) times its coefficient
    def __init__(self, kernel: int, stride: int | None, ceil_mode: bool, coef: float) -> None:
        super().__init__()
        self.pool = nn.LPPool2d(2, kernel, stride, ceil_mode=ceil_mode)
        self.coef = coef

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(x) * self.coef


@pytest.mark.parametrize("route", ["onnx17", "onnx18", "pt2"])
@pytest.mark.parametrize(
    ("kernel", "stride", "ceil_mode", "coef"), [(2, None, False, 1.0), (3, 1, True, 0.5)]
)
def test_l2_norm_pool_imports_as_one_l2pool(
    route: str, kernel: int, stride: int | None, ceil_mode: bool, coef: float, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    m = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), ScaledL2Pool(kernel, stride, ceil_mode, coef), nn.Flatten()
    )
    m = m.eval()
    g = speccert.load(_export(m, route, tmp_path, (2, 7, 7)))  # the faithfulness check runs at load
    kinds = [n.op_type for n in g.nodes]
    assert kinds.count("L2Pool") == 1 and "Opaque" not in kinds
    pool = next(n.op for n in g.nodes if isinstance(n.op, L2Pool))
    assert pool.kernel == (kernel, kernel) and pool.multiplier == kernel * kernel
    x = torch.randn(4, 2, 7, 7)
    with torch.no_grad():
        assert torch.allclose(g.forward(x), m(x), atol=1e-5)
    lb = lipschitz_bound(g, method="exact")
    conv = lb.layers[0].upper.value
    if stride is None:  # disjoint full windows: the pool adds nothing beyond the coefficient
        assert lb.upper == pytest.approx(conv * coef, rel=1e-6)
    else:  # 3x3 windows at stride 1 hold each pixel up to 9 times: sqrt(9)
        assert lb.upper == pytest.approx(conv * coef * 3.0, rel=1e-6)


# ---- Householder -------------------------------------------------------------------------------------
@settings(max_examples=12, deadline=None, derandomize=True)
@given(seed=st.integers(0, 1000), pairs=st.integers(1, 3))
def test_householder_is_gradient_norm_preserving_and_1_lipschitz(seed: int, pairs: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    theta = 4 * torch.rand(pairs, generator=gen, dtype=D) - 2
    op = Householder(theta)
    shape = (2 * pairs, 3)
    g = Graph(shape, [Node("h", op, (INPUT,))], dtype=D)
    assert 1.0 <= lipschitz_bound(g, method="exact").upper <= 1.0 + 1e-14
    for k in range(3):  # the Jacobian is orthogonal almost everywhere: every singular value is 1
        x = torch.randn(shape, generator=torch.Generator().manual_seed(seed + k), dtype=D)
        jac = torch.autograd.functional.jacobian(lambda z: g.forward(z[None])[0], x).reshape(x.numel(), -1)
        assert torch.allclose(torch.linalg.svdvals(jac), torch.ones(x.numel(), dtype=D), atol=1e-12)
    x0 = torch.randn(shape, generator=gen, dtype=D)
    assert ascent(lambda z: g.forward(z[None])[0], x0) <= 1.0 + 1e-12
    # continuous across the selector's boundary s = 0, where the two branches meet
    v = torch.stack([torch.sin(theta / 2), -torch.cos(theta / 2)])  # [2, pairs]: s = v . (x, y)
    on = torch.stack([v[1], -v[0]])[:, :, None].expand(2, pairs, 3).reshape(1, *shape)  # v . z = 0
    step = 1e-9 * v[:, :, None].expand(2, pairs, 3).reshape(1, *shape)
    with torch.no_grad():
        jump = (g.forward(on + step) - g.forward(on - step)).norm() / (2 * step).norm()
    assert float(jump) <= 1.0 + 1e-6


class TorchHouseholder(nn.Module):  # deel-torchlip's HouseHolder, written out in plain torch
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.theta = nn.Parameter(torch.linspace(-2.5, 2.0, channels // 2))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        theta = self.theta.view(1, -1, 1, 1)
        x, y = z.split(z.shape[1] // 2, 1)
        selector = x * torch.sin(0.5 * theta) - y * torch.cos(0.5 * theta)
        a_2 = x * torch.cos(theta) + y * torch.sin(theta)
        b_2 = x * torch.sin(theta) - y * torch.cos(theta)
        a = x * (selector <= 0) + a_2 * (selector > 0)
        b = y * (selector <= 0) + b_2 * (selector > 0)
        return torch.cat([a, b], dim=1)


@pytest.mark.parametrize("route", ["onnx17", "onnx11", "pt2"])
def test_householder_imports_as_one_node(route: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(2, 6, 3, padding=1), TorchHouseholder(6), nn.Flatten()).eval()
    g = speccert.load(_export(m, route, tmp_path, (2, 5, 5)))  # compared with onnxruntime / torch at load
    kinds = [n.op_type for n in g.nodes]
    assert kinds.count("Householder") == 1 and "Opaque" not in kinds and "Add" not in kinds
    op = next(n.op for n in g.nodes if isinstance(n.op, Householder))
    assert torch.equal(op.theta, m[1].theta.detach())
    x = torch.randn(8, 2, 5, 5)
    with torch.no_grad():
        assert torch.allclose(g.forward(x), m(x), atol=1e-5)
    lb = lipschitz_bound(g, method="exact")
    assert lb.upper == pytest.approx(lb.layers[0].upper.value, rel=1e-9)  # the activation adds nothing


def test_householder_with_stored_sines_is_refused_naming_it(tmp_path: Path) -> None:
    import onnx

    from speccert.importers.onnx_ops.householder import _example

    p = tmp_path / "dynamo_form.onnx"
    onnx.save(_example(precomputed=True)(), str(p))
    with pytest.raises(UnsupportedModelError) as info:
        speccert.load(p)
    assert "HouseHolder activation with its sines and cosines stored" in str(info.value)
    assert "Mul" not in str(info.value)  # one line for the activation, not its parts


@pytest.mark.parametrize("layer", ["center", "l2pool", "householder"])
def test_new_ops_export_to_onnx_and_reload_identically(layer: str, tmp_path: Path) -> None:
    # finetune saves in the input's format: each op must round-trip through ONNX as the same one node
    from speccert.exporters import save_onnx

    torch.manual_seed(1)
    make = {
        "center": lambda: TorchCentering(4, (1,)),
        "l2pool": lambda: nn.LPPool2d(2, 2),
        "householder": lambda: TorchHouseholder(4),
    }
    m = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), make[layer](), nn.Flatten()).eval()
    g = speccert.load(_export(m, "pt2", tmp_path, (2, 6, 6)))
    back = speccert.load(save_onnx(g, tmp_path / "back.onnx"))  # checked against onnxruntime at load
    kind = {"center": "Center", "l2pool": "L2Pool", "householder": "Householder"}[layer]
    assert [n.op_type for n in back.nodes].count(kind) == 1
    assert lipschitz_bound(back, method="exact").upper == pytest.approx(
        lipschitz_bound(g, method="exact").upper, rel=1e-12
    )


def test_certify_layer_table_shows_each_new_op_with_its_factor(tmp_path: Path) -> None:
    from speccert.bounds import certify

    torch.manual_seed(3)
    m = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        TorchHouseholder(4),
        TorchCentering(4, (2, 3)),
        nn.LPPool2d(2, 3, 1),  # overlapping 3x3 windows: factor sqrt(9) = 3
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 3),
    ).eval()
    g = speccert.load(_export(m, "pt2", tmp_path, (1, 6, 6)))
    x = torch.rand(6, 1, 6, 6)
    with torch.no_grad():
        y = g.forward(x).argmax(1)
    rows = certify(g, (x.numpy(), y.numpy()), eps=[0.01], lower_bound=False).to_dict()["layers"]
    rules = {r["op"].split()[0]: r["upper"] for r in rows if r["method"] == "rule"}
    assert set(rules) == {"Householder", "Center", "L2Pool"}
    assert rules["Householder"] == rules["Center"] == 1.0
    assert rules["L2Pool"] == pytest.approx(3.0, rel=1e-12) and rules["L2Pool"] >= 3.0


def test_a_householder_lookalike_with_a_stored_factor_is_not_fused(tmp_path: Path) -> None:
    # Sin/Cos factors mixed with a stored number compute something else: no Householder (which would
    # fail the load's comparison, exit 5); the parts are refused as usual (exit 3).
    import numpy as np
    import onnx

    from speccert.importers.onnx_ops.householder import _example

    m = _example(precomputed=False)()
    mul = next(n for n in m.graph.node if n.op_type == "Mul" and list(n.input) == ["x0", "sh"])
    mul.input[1] = "stored"
    m.graph.initializer.append(onnx.numpy_helper.from_array(np.full((1, 2, 1), 0.3, np.float32), "stored"))
    p = tmp_path / "lookalike.onnx"
    onnx.save(m, str(p))
    with pytest.raises(UnsupportedModelError) as info:
        speccert.load(p)
    assert "Householder" not in str(info.value) and "LessOrEqual" in str(info.value)
