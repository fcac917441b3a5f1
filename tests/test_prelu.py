"""PReLU with a slope per channel (deel-torchlip's LPReLU exports as nn.PReLU): imports through ONNX and
.pt2 as one PRelu node (checked against onnxruntime / torch at load), and its rule max(1, max|slope|)
is never below the difference quotients found by gradient ascent, and is reached."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import speccert
from speccert.bounds import lipschitz_bound
from speccert.ir import INPUT, Graph, Node, PRelu

D = torch.float64


@settings(max_examples=12, deadline=None, derandomize=True)
@given(seed=st.integers(0, 1000), scale=st.sampled_from([0.3, 1.0, 2.5]))
def test_prelu_rule_covers_ascent_and_is_reached(seed: int, scale: float) -> None:
    gen = torch.Generator().manual_seed(seed)
    slope = scale * torch.randn(3, 1, generator=gen, dtype=D)
    g = Graph((3, 4), [Node("p", PRelu(slope), (INPUT,))], dtype=D)
    bound = lipschitz_bound(g, method="exact").upper
    assert bound == pytest.approx(max(1.0, float(slope.abs().max())), rel=1e-12)
    x = torch.randn(3, 4, generator=gen, dtype=D).requires_grad_(True)
    y = (x.detach() + 0.1 * torch.randn(3, 4, generator=gen, dtype=D)).requires_grad_(True)
    opt = torch.optim.Adam([x, y], lr=0.05)
    best = 0.0
    for _ in range(60):
        q = (g.forward(x[None]) - g.forward(y[None])).norm() / (x - y).norm()
        best = max(best, float(q))
        opt.zero_grad()
        (-q).backward()
        opt.step()
    assert best <= bound
    # both inputs below zero in the steepest channel only: the quotient equals the bound
    c = int(slope.abs().argmax()) if float(slope.abs().max()) > 1 else None
    a, b = torch.ones(1, 3, 4, dtype=D), torch.ones(1, 3, 4, dtype=D)
    if c is not None:
        a[0, c], b[0, c] = -1.0, -2.0
    else:
        b = 2 * a
    with torch.no_grad():
        q = float((g.forward(a) - g.forward(b)).norm() / (a - b).norm())
    assert q == pytest.approx(bound, rel=1e-12)


@pytest.mark.parametrize("route", ["onnx", "pt2"])
def test_per_channel_prelu_imports_as_one_node(route: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3), torch.nn.PReLU(4)).eval()
    with torch.no_grad():
        m[1].weight.copy_(torch.tensor([0.1, -0.5, 1.7, 0.3]))
    x = torch.randn(1, 2, 5, 5)
    p = tmp_path / f"m.{route}"
    if route == "onnx":
        torch.onnx.export(m, (x,), str(p), dynamo=False, opset_version=17)
    else:
        torch.export.save(torch.export.export(m, (x,)), str(p))
    g = speccert.load(p)
    assert [n.op_type for n in g.nodes] == ["Conv", "PRelu"]
    lb = lipschitz_bound(g, method="exact")
    assert lb.upper == pytest.approx(1.7 * lb.layers[0].upper.value, rel=1e-6)
