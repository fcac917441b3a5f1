"""CROWN certificate, exactness: the exact boundary distance where the network is affine on the ball
(no activation, or every ReLU stable), and a rounding allowance that is really added."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import torch
from certify_nets import D, dead_relu_net

from speccert.bounds import certify
from speccert.bounds.crown import Crown
from speccert.bounds.lipschitz import lipschitz_bound
from speccert.ir import INPUT, Activation, BatchNorm, Conv, Graph, Linear, Node, Reshape


def affine_net(seed: int) -> Graph:
    """conv -> BN -> flatten -> linear -> linear: no activation anywhere."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(3, 2, 3, 3, generator=gen, dtype=D) / 3
    bn = BatchNorm(
        torch.randn(3, generator=gen, dtype=D) * 0.1,
        torch.rand(3, generator=gen, dtype=D) + 0.5,
        torch.rand(3, generator=gen, dtype=D) + 0.5,
        torch.randn(3, generator=gen, dtype=D) * 0.1,
    )
    conv = Conv(w, torch.randn(3, generator=gen, dtype=D), (2, 2), ((1, 0), (1, 1)), (1, 1))
    nodes = [
        Node("conv", conv, (INPUT,)),
        Node("bn", bn, ("conv",)),
    ]
    g = Graph((2, 7, 7), nodes, dtype=D)
    flat = int(np.prod(g.output_shape))
    nodes += [
        Node("flat", Reshape((flat,)), ("bn",)),
        Node(
            "l1", Linear(torch.randn(9, flat, generator=gen, dtype=D) / 4, torch.randn(9, dtype=D)), ("flat",)
        ),
        Node("l2", Linear(torch.randn(4, 9, generator=gen, dtype=D) / 3, torch.randn(4, dtype=D)), ("l1",)),
    ]
    return Graph((2, 7, 7), nodes, dtype=D)


def exact_distance(g: Graph, x: torch.Tensor) -> tuple[torch.Tensor, np.ndarray]:
    """(labels, min_j m_j / ||grad m_j||): the exact boundary distance of a network affine on the ball."""
    xr = x.clone().requires_grad_(True)
    f = g.forward(xr)
    y = f.argmax(1)
    out = np.full(x.shape[0], np.inf)
    for j in range(f.shape[1]):
        m = f.gather(1, y[:, None])[:, 0] - f[:, j]
        (gm,) = torch.autograd.grad(m.sum(), xr, retain_graph=True)
        dj = (m / gm.flatten(1).norm(dim=1)).detach().numpy()
        out = np.where(y.numpy() == j, out, np.minimum(out, dj))
    return y, out


def test_crown_is_exact_on_affine_networks() -> None:
    for seed in range(3):
        g = affine_net(seed)
        x = torch.randn(12, 2, 7, 7, generator=torch.Generator().manual_seed(seed), dtype=D)
        y, exact = exact_distance(g, x)
        rep = certify(g, (x, y), eps=[0.1], lower_bound=False, certificates=["crown"])
        r = rep.radii["crown"]
        assert np.all(r <= exact), "crown above the exact boundary distance"
        np.testing.assert_allclose(r, exact, rtol=1e-6)


def test_crown_is_the_affine_distance_where_every_relu_is_stable() -> None:
    """Large positive biases keep every ReLU active far beyond the boundary: the network is affine on
    the ball, the radius is the affine distance (and never above it)."""
    gen = torch.Generator().manual_seed(7)
    w1 = torch.randn(16, 5, generator=gen, dtype=D) * 0.1
    w2 = torch.randn(12, 16, generator=gen, dtype=D) * 0.01
    w3 = torch.randn(3, 12, generator=gen, dtype=D)
    h = torch.relu(w2 @ torch.relu(torch.full((16,), 50.0, dtype=D)) + 50.0)
    b3 = -(w3 @ h) + torch.randn(3, generator=gen, dtype=D) * 0.3  # margins O(0.3) near x = 0
    nodes = [
        Node("l1", Linear(w1, torch.full((16,), 50.0, dtype=D)), (INPUT,)),
        Node("a1", Activation("relu"), ("l1",)),
        Node("l2", Linear(w2, torch.full((12,), 50.0, dtype=D)), ("a1",)),
        Node("a2", Activation("relu"), ("l2",)),
        Node("out", Linear(w3, b3), ("a2",)),
    ]
    g = Graph((5,), nodes, dtype=D)
    x = torch.randn(20, 5, generator=torch.Generator().manual_seed(8), dtype=D) * 0.1
    y, exact = exact_distance(g, x)
    # every ReLU stays active on B(x, 100): |w1 d| <= 100 max ||row|| < 50, and layer 2 likewise
    assert np.all(exact < 100.0) and float(w1.norm(dim=1).max()) * 100 < 45
    rep = certify(g, (x, y), eps=[0.1], lower_bound=False, certificates=["crown", "local"])
    r = rep.radii["crown"]
    assert np.all(r <= exact)
    np.testing.assert_allclose(r, exact, rtol=1e-6)


def test_the_rounding_allowance_is_added() -> None:
    """Logit weights of size 1e8 that cancel at x: the float64 value of Lam^T x + c (the bound without
    its rounding allowance) is above the exact margin for some points (exact rational arithmetic),
    while the bound crown returns never is."""
    over = 0
    for seed in range(40):
        gen = torch.Generator().manual_seed(seed)
        w = torch.randn(2, 30, generator=gen, dtype=D) * 1e8
        x = torch.randn(1, 30, generator=gen, dtype=D)
        b0 = -float((w[0] - w[1]) @ x[0])  # makes the margin ~0 at x, up to rounding
        bias = torch.tensor([b0, 0.0], dtype=D)
        g = Graph((30,), [Node("out", Linear(w, bias), (INPUT,))], dtype=D)
        crown = Crown(lipschitz_bound(g))
        ball = crown.ball(x, torch.zeros(1, dtype=D))
        lam = torch.tensor([[[1.0, -1.0]]], dtype=D)
        a, _ = crown.lower(0, lam, ball)
        fr = [[Fraction(float(v)) for v in row] for row in w]
        xf = [Fraction(float(v)) for v in x[0]]
        exact = sum((fr[0][i] - fr[1][i]) * xf[i] for i in range(30)) + Fraction(b0)
        assert Fraction(float(a[0, 0])) <= exact, "the crown bound is above the exact margin"
        lam_x = (w[0] - w[1]).reshape(1, -1)
        naive = float((lam_x * x).sum()) + b0
        over += Fraction(naive) > exact
    assert over > 0, "the construction never overstates without the allowance: the test is too weak"


def test_crown_certifies_a_margin_that_is_constant_near_x() -> None:
    """Every ReLU dead at x (biases -5): the logits are the output bias on the ball of radius
    d = min_i (-z_i) / ||w_i||, so ||Lam|| ~ 0 and the first-order value is ~ a / 1e-300. The search
    must still test sensible radii: each point gets a radius of at least d / 10 (and never above the
    distance where the logits can first change, the attack ceiling being far beyond)."""
    g, x, dead = dead_relu_net()
    y = torch.zeros(8, dtype=torch.int64)
    rep = certify(g, (x, y), eps=[0.1], lower_bound=False, certificates=["crown"])
    assert np.all(rep.radii["crown"] >= dead / 10), "crown gave up on a locally constant margin"
