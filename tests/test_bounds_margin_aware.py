"""Margin-aware certificate: exact on affine networks (conv, BN, flatten, linear; no activation)."""

from __future__ import annotations

import numpy as np
import torch
from certify_nets import D, mlp
from hypothesis import given, settings
from hypothesis import strategies as st

from speccert.bounds import certify
from speccert.ir import INPUT, BatchNorm, Conv, Graph, Linear, Node, Reshape


def affine_net(
    seed: int, c_in: int, n: int, c_mid: int, k: int, stride: int, hidden: int, classes: int
) -> Graph:
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, dtype=D)

    conv = Conv(rnd(c_mid, c_in, k, k) / k, rnd(c_mid) * 0.1, (stride, stride), ((1, 1), (1, 1)), (1, 1))
    bn = BatchNorm(rnd(c_mid) * 0.1, rnd(c_mid).abs() + 0.5, rnd(c_mid) + 1.0, rnd(c_mid) * 0.1)
    g = Graph((c_in, n, n), [Node("conv", conv, (INPUT,)), Node("bn", bn, ("conv",))], dtype=D)
    flat = int(np.prod(g.output_shape))
    nodes = g.nodes + [
        Node("flat", Reshape((flat,)), ("bn",)),
        Node("fc1", Linear(rnd(hidden, flat) / flat**0.5, rnd(hidden)), ("flat",)),
        Node("fc2", Linear(rnd(classes, hidden) / hidden**0.5, rnd(classes)), ("fc1",)),
    ]
    return Graph((c_in, n, n), nodes, dtype=D)


def exact_distance(g: Graph, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """min_j |m_j(x)| / ||grad m_j||, by autograd in float64 on the unfolded graph (an affine map)."""
    xr = x.clone().requires_grad_(True)
    f = g.forward(xr)
    out = np.full(x.shape[0], np.inf)
    for j in range(f.shape[1]):
        m = f.gather(1, y[:, None])[:, 0] - f[:, j]
        (gm,) = torch.autograd.grad(m.sum(), xr, retain_graph=True)
        d = (m.abs() / gm.flatten(1).norm(dim=1)).detach().numpy()
        out = np.where(y.numpy() == j, out, np.minimum(out, d))
    return out


@settings(max_examples=12, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    c_in=st.integers(1, 3),
    n=st.integers(3, 7),
    c_mid=st.integers(1, 4),
    k=st.integers(1, 3),
    stride=st.integers(1, 2),
    hidden=st.integers(2, 12),
    classes=st.integers(2, 6),
)
def test_affine_network_radius_is_the_exact_boundary_distance(
    seed: int, c_in: int, n: int, c_mid: int, k: int, stride: int, hidden: int, classes: int
) -> None:
    g = affine_net(seed, c_in, n, c_mid, k, stride, hidden, classes)
    x = torch.randn(40, c_in, n, n, generator=torch.Generator().manual_seed(seed + 1), dtype=D)
    with torch.no_grad():
        y = g.forward(x).argmax(1)
    rep = certify(g, (x, y), eps=[0.1], lower_bound=False)
    want = exact_distance(g, x, y)
    got = rep.radii["margin"]
    assert np.all(got <= want), "a certified radius exceeds the exact distance to the boundary"
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert np.all(rep.radius >= got)


def test_margin_never_loses_to_pairwise_and_beats_it_below_the_last_layer() -> None:
    torch.manual_seed(3)
    g = mlp()
    nodes = g.nodes + [Node("l4", Linear(torch.randn(4, 5, dtype=D), torch.zeros(4, dtype=D)), ("l3",))]
    g2 = Graph(g.input_shape, nodes, dtype=D)
    x = torch.randn(200, 12, dtype=D)
    with torch.no_grad():
        y = g2.forward(x).argmax(1)
    rep = certify(g2, (x, y), eps=[0.1], lower_bound=False, audit=50)
    assert np.all(rep.radii["margin"] >= rep.radii["pairwise"] * (1 - 1e-9))
    assert np.median(rep.radii["margin"] / rep.radii["global"]) > 1.0


def test_conv_classifier_with_a_1x1_output_gets_the_margin_certificate() -> None:
    gen = torch.Generator().manual_seed(0)
    conv = Conv(torch.randn(3, 2, 4, 4, generator=gen, dtype=D), None, (1, 1), ((0, 0), (0, 0)), (1, 1))
    g = Graph((2, 4, 4), [Node("conv", conv, (INPUT,)), Node("flat", Reshape((3,)), ("conv",))], dtype=D)
    x = torch.randn(30, 2, 4, 4, generator=gen, dtype=D)
    with torch.no_grad():
        y = g.forward(x).argmax(1)
    rep = certify(g, (x, y), eps=[0.1], lower_bound=False)
    np.testing.assert_allclose(rep.radii["margin"], exact_distance(g, x, y), rtol=1e-6)
    np.testing.assert_allclose(rep.radii["pairwise"], rep.radii["margin"], rtol=1e-9)  # one-layer tail
