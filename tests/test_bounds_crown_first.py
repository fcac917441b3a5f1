"""CROWN's convex first layer (speccert.bounds.crown_first): the bound alone holds at sampled points,
at PGD's worst points and on a dense grid of a 2-d ball; per row with CROWN it never lowers a
radius; the rounding allowances of M and q are really added (exact rational arithmetic); the
verivital corpus model's radii stay below PGD-L2 with restarts."""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from certify_nets import D
from test_bounds_crown import sample_ball
from test_bounds_local import conv_pool_net, relu_mlp

from speccert.bounds import certify
from speccert.bounds.audit import pgd_l2
from speccert.bounds.crown import Crown
from speccert.bounds.crown_first import FirstPlan, build_plan, q_upper
from speccert.bounds.crown_slopes import score
from speccert.bounds.lipschitz import lipschitz_bound
from speccert.ir import INPUT, Activation, Conv, Graph, Linear, MaxPool, Node, Reshape

CORPUS = Path("/work/shared/onnx-corpus/verivital_maxpool")


def tied_pool_net(seed: int) -> Graph:
    """conv -> ReLU -> tiling max-pool -> linear on 1 x 6 x 6 inputs: a constant background ties
    the windows (the case the convex layer is for)."""
    gen = torch.Generator().manual_seed(seed)
    conv = Conv(
        torch.randn(3, 1, 2, 2, generator=gen, dtype=D) / 2,
        torch.zeros(3, dtype=D),
        (1, 1),
        ((0, 0), (0, 0)),
        (1, 1),
    )
    head = torch.randn(4, 3 * 2 * 2, generator=gen, dtype=D)
    nodes = [
        Node("conv", conv, (INPUT,)),
        Node("relu", Activation("relu"), ("conv",)),
        Node("pool", MaxPool((2, 2), (2, 2), ((0, 0), (0, 0)), (1, 1)), ("relu",)),
        Node("flat", Reshape((12,)), ("pool",)),
        Node("out", Linear(head, torch.randn(4, generator=gen, dtype=D)), ("flat",)),
    ]
    return Graph((1, 5, 5), nodes, dtype=D)


def plane_pool_net(seed: int) -> Graph:
    """A 2-d input: 1x1 conv to 4 channels of 1 x 2, ReLU, max-pool over the pair, linear."""
    gen = torch.Generator().manual_seed(seed)
    conv = Conv(
        torch.randn(4, 1, 1, 1, generator=gen, dtype=D),
        torch.randn(4, generator=gen, dtype=D) * 0.3,
        (1, 1),
        ((0, 0), (0, 0)),
        (1, 1),
    )
    nodes = [
        Node("conv", conv, (INPUT,)),
        Node("relu", Activation("relu"), ("conv",)),
        Node("pool", MaxPool((1, 2), (1, 2), ((0, 0), (0, 0)), (1, 1)), ("relu",)),
        Node("flat", Reshape((4,)), ("pool",)),
        Node(
            "out",
            Linear(torch.randn(3, 4, generator=gen, dtype=D), torch.randn(3, generator=gen, dtype=D)),
            ("flat",),
        ),
    ]
    return Graph((1, 1, 2), nodes, dtype=D)


def margins(g: Graph, p: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    f = g.forward(p)
    return f.gather(1, y[:, None]) - f


def bounds(
    g: Graph, x: torch.Tensor, y: torch.Tensor, r: torch.Tensor, mode: str
) -> tuple[torch.Tensor, torch.Tensor]:
    crown = Crown(lipschitz_bound(g))
    crown.first_layer = mode
    return crown.margin_bounds(x, y, r)


def check_alone(g: Graph, x: torch.Tensor, r: torch.Tensor) -> int:
    """The convex layer's bound alone is below every margin at sampled points and PGD's worst
    point; returns how many rows it beats CROWN's own bound at (so the check is not vacuous)."""
    y = g.forward(x).argmax(1)
    a, n = bounds(g, x, y, r, "only")
    a0, n0 = bounds(g, x, y, r, "off")
    own = torch.isinf(a)  # the own class: +inf, n = 0
    a, a0 = a.masked_fill(own, -math.inf), a0.masked_fill(own, -math.inf)
    for p in sample_ball(x, r, 256, 5):
        dist = (p - x).flatten(1).norm(dim=1)[:, None]
        assert bool((margins(g, p, y) >= a - dist * n - 1e-9).all()), "the convex layer's bound fails"
    rr = r[:, None]
    for j in range(a.shape[1]):
        target = torch.full_like(y, j)
        keep = y != j
        if not bool(keep.any()):
            continue
        # PGD towards class j: the smallest margin m_j it finds on the ball
        res = pgd_l2(g, x[keep], y[keep], r[keep] * (1 - 1e-9), steps=60, restarts=4, seed=j)
        worst = margins(g, x[keep] + res.delta, y[keep]).gather(1, target[keep][:, None])[:, 0]
        assert bool((worst >= (a - rr * n)[keep, j] - 1e-9).all()), "PGD beat the convex layer's bound"
    return int(((a - rr * n) > (a0 - rr * n0) + 1e-12)[~own].sum())


def test_convex_layer_holds_on_tied_pools_and_relu_mlps() -> None:
    wins = 0
    for seed in range(3):
        g = tied_pool_net(seed)
        x = torch.rand(6, 1, 5, 5, generator=torch.Generator().manual_seed(seed), dtype=D) * 0.2
        x[:3] = 0.1  # a constant background: every window tied
        wins += check_alone(g, x, torch.full((6,), 0.3, dtype=D))
        g = conv_pool_net(seed, 3, 6, 2, 2, 4)
        x = torch.randn(6, 1, 6, 6, generator=torch.Generator().manual_seed(seed), dtype=D)
        wins += check_alone(g, x, torch.full((6,), 0.5, dtype=D))
        g = relu_mlp(seed, 5, [12, 8], 3)
        x = torch.randn(6, 5, generator=torch.Generator().manual_seed(seed), dtype=D)
        wins += check_alone(g, x, torch.full((6,), 0.4, dtype=D))
    assert wins > 0, "the convex layer never beat CROWN: the check tests nothing"


def test_convex_layer_holds_on_a_dense_grid_of_a_disk() -> None:
    """2-d inputs: the bound at radius r is below the minimum margin over a dense polar grid of the
    disk (MaxPool + ReLU composite and a plain ReLU MLP)."""
    rad = torch.linspace(0, 1, 60, dtype=D)
    ang = torch.linspace(0, 2 * math.pi, 240, dtype=D)
    disk = torch.stack([torch.outer(rad, ang.cos()), torch.outer(rad, ang.sin())], -1).reshape(-1, 2)
    for seed in range(4):
        for g in (plane_pool_net(seed), relu_mlp(seed, 2, [10], 3)):
            x = torch.randn(4, *g.input_shape, generator=torch.Generator().manual_seed(seed), dtype=D)
            y = g.forward(x).argmax(1)
            r = torch.full((4,), 0.8, dtype=D)
            a, n = bounds(g, x, y, r, "only")
            low = (a.masked_fill(torch.isinf(a), -math.inf) - 0.8 * n).numpy()
            for b in range(4):
                pts = x[b] + 0.8 * disk.reshape(-1, *g.input_shape)
                m = margins(g, pts, y[b].repeat(pts.shape[0])).amin(0).numpy()
                assert np.all(low[b] <= m + 1e-12), "the convex layer's bound is above the grid's minimum"


def test_best_of_both_never_lowers_a_radius() -> None:
    for seed in range(3):
        for g, x in (
            (tied_pool_net(seed), torch.full((5, 1, 5, 5), 0.1, dtype=D)),
            (
                relu_mlp(seed, 6, [16], 4),
                torch.randn(5, 6, generator=torch.Generator().manual_seed(seed), dtype=D),
            ),
        ):
            y = g.forward(x).argmax(1)
            for rv in (0.05, 0.3, 1.0):
                r = torch.full((5,), rv, dtype=D)
                best = score(*bounds(g, x, y, r, "best")).amin(1).clamp(max=rv)
                own = score(*bounds(g, x, y, r, "off")).amin(1).clamp(max=rv)
                assert bool((best >= own).all())


def _cancelling_plan(seed: int, scale: float) -> tuple[Graph, FirstPlan, torch.Tensor]:
    """A Linear -> ReLU first layer with rows ~`scale` nearly orthogonal to one another (at 1e8 their
    float dot products cancel catastrophically)."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(1, 8, generator=gen, dtype=D) * scale
    w = base + torch.randn(6, 8, generator=gen, dtype=D)
    w[:, -1] = -(w[:, :-1] @ base[0, :-1]) / base[0, -1]  # rows nearly orthogonal to base
    head = torch.randn(3, 6, generator=gen, dtype=D)
    nodes = [
        Node("l", Linear(w, torch.zeros(6, dtype=D)), (INPUT,)),
        Node("a", Activation("relu"), ("l",)),
        Node("out", Linear(head, torch.zeros(3, dtype=D)), ("a",)),
    ]
    g = Graph((8,), nodes, dtype=D)
    crown = Crown(lipschitz_bound(g))
    plan = build_plan(crown.graph, crown.stages)
    assert plan is not None
    return g, plan, w


def test_the_allowances_of_m_and_q_are_added() -> None:
    """M >= max(0, a_i^T a_k) and q >= |lam| (-2 g^T a_i + (M lam)_u) in exact rational arithmetic,
    while the plain float values fall below the exact ones somewhere (so a dropped or flipped
    allowance fails this test)."""
    under_m = under_q = 0
    for seed in range(6):
        g, plan, w = _cancelling_plan(seed, 1e8)
        wf = [[Fraction(float(v)) for v in row] for row in w]
        for i in range(6):
            for k in range(6):
                exact = max(Fraction(0), sum(p * q for p, q in zip(wf[i], wf[k], strict=True)))
                assert Fraction(float(plan.m[i, k])) >= exact, "M below an exact Gram entry"
                under_m += Fraction(float(w[i] @ w[k])) < exact
        # moderate rows and a huge g nearly orthogonal to all of them: g^T a_i cancels (M |lam| is
        # small, so q's allowance is the product's, not M's)
        gen = torch.Generator().manual_seed(seed + 100)
        g, plan, w = _cancelling_plan(seed, 1.0)
        crown = Crown(lipschitz_bound(g))
        wf = [[Fraction(float(v)) for v in row] for row in w]
        null = torch.linalg.svd(w).Vh[-2:]
        gv = (null + 1e-9 * torch.randn(2, 8, generator=gen, dtype=D))[None] * 1e8
        lam_s = torch.rand(1, 2, 6, generator=gen, dtype=D)
        q = q_upper(plan, crown.graph, crown.stages[0], gv, lam_s)
        mf = [[Fraction(float(v)) for v in row] for row in plan.m]
        for row in range(2):
            lf = [Fraction(float(v)) for v in lam_s[0, row]]
            gf = [Fraction(float(v)) for v in gv[0, row]]
            for u in range(6):
                ga = sum(p * q for p, q in zip(gf, wf[u], strict=True))
                ml = sum(mf[u][v] * lf[v] for v in range(6))
                exact = lf[u] * (-2 * ga + ml)
                assert Fraction(float(q[0, row, u, 0])) >= exact, "q below its exact value"
                naive = float(lam_s[0, row, u] * (-2 * (gv[0, row] @ w[u]) + plan.m[u] @ lam_s[0, row]))
                under_q += Fraction(naive) < exact
    assert under_m > 0 and under_q > 0, "no cancellation: the construction is too weak"


@pytest.mark.skipif(not CORPUS.exists(), reason="the VNN-COMP corpus is not on this machine")
def test_verivital_radii_resist_pgd_and_gain_over_crown() -> None:
    import speccert

    g = speccert.load(str(CORPUS / "model.onnx"))
    x = torch.tensor(np.load(CORPUS / "x.npy")[:2], dtype=D).reshape(2, *g.input_shape)
    y = torch.tensor(np.load(CORPUS / "y.npy")[:2]).long()
    rep = certify(g, (x, y), eps=[0.1], lower_bound=False, certificates=["crown"])
    r = torch.from_numpy(rep.radii["crown"])
    assert bool((r > 0).all())
    res = pgd_l2(g.to("cpu", D), x, y, r, steps=100, restarts=8)
    assert not bool(res.success.any()), "PGD beat a crown radius on verivital"
    crown = Crown(lipschitz_bound(g))
    ys = g.to("cpu", D).forward(x).argmax(1)
    with_first = score(*crown.margin_bounds(x, ys, r)).amin(1)
    crown.first_layer = "off"
    plain = score(*crown.margin_bounds(x, ys, r)).amin(1)
    assert bool((with_first >= r * (1 - 1e-9)).all()), "the found radii no longer pass at their r"
    assert bool((plain < r).all()), "plain CROWN certifies these radii too: nothing gained"
