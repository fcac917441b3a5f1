"""CROWN certificate: linear bounds that hold on the ball, radii below strong attacks, exact where the
network is affine on the ball, and a rounding allowance that is really added."""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from certify_nets import D
from hypothesis import given
from hypothesis import strategies as st
from test_bounds_local import (
    MLP_SHAPES,
    POOL_SHAPES,
    attack_distance,
    conv_pool_net,
    minimal_norm_distance,
    relu_mlp,
    residual_net,
    shapes,
    smooth_mlp,
)

from speccert.bounds import certify
from speccert.bounds.crown import Crown
from speccert.bounds.lipschitz import lipschitz_bound
from speccert.exporters import save_onnx
from speccert.ir import INPUT, Activation, BatchNorm, Conv, Graph, Linear, Node, Reshape


def check_crown(g: Graph, x: torch.Tensor, tmp_path: Path) -> dict[str, np.ndarray]:
    """Every crown radius is below the distance of PGD-L2 (restarts, bisection) and of a minimal-norm
    attack, both checked in onnxruntime (float32 deployment of the same weights)."""
    with torch.no_grad():
        y = g.forward(x).argmax(1)
    kinds = ["global", "pairwise", "crown"]
    rep = certify(g, (x, y), eps=[0.1], lower_bound=False, certificates=kinds, audit=x.shape[0])
    crown = rep.radii["crown"]
    onnx = save_onnx(g.to("cpu", torch.float32), tmp_path / "net.onnx")
    keep = crown > 0
    dist = attack_distance(g, x[keep], y[keep], torch.from_numpy(crown[keep]), onnx)
    assert np.all(crown[keep] <= dist), "PGD beat a crown radius: the certificate is wrong"
    dist = minimal_norm_distance(g, x, y, onnx)
    assert np.all(crown <= dist), "a minimal-norm attack beat a crown radius"
    assert np.all(crown <= rep.radius)
    return rep.radii


def sample_ball(x: torch.Tensor, r: torch.Tensor, count: int, seed: int) -> torch.Tensor:
    """[count, B, ...] points of B(x_b, r_b): half on the boundary sphere, half inside."""
    gen = torch.Generator().manual_seed(seed)
    d = torch.randn((count, *x.shape), generator=gen, dtype=D)
    d = d / d.flatten(2).norm(dim=2).reshape(count, x.shape[0], *[1] * (x.dim() - 1))
    scale = torch.rand((count, x.shape[0]), generator=gen, dtype=D)
    scale[: count // 2] = 1.0 - 1e-12
    rr = (r[None] * scale).reshape(count, x.shape[0], *[1] * (x.dim() - 1))
    return x[None] + d * rr


def check_linear_bounds(g: Graph, x: torch.Tensor, r: torch.Tensor) -> None:
    """The margins' linear bounds and every stage's interval hold at sampled points of the ball
    (float64 forward, far more accurate than the slack of 1e-9 allowed for its own rounding)."""
    crown = Crown(lipschitz_bound(g))
    y = g.forward(x).argmax(1)
    ball = crown.ball(x, r)
    final = crown.stages[-1]
    eye = torch.eye(math.prod(final.z_shape), dtype=D)
    lam = eye[y][:, None, :] - eye[None, :, :]
    a, n = crown.lower(len(crown.stages) - 1, lam, ball)
    pts = sample_ball(x, r, 64, 3)
    for p in pts:
        acts = crown.graph.activations(p)
        f = acts[crown.graph.output]
        m = f.gather(1, y[:, None]) - f
        dist = (p - x).flatten(1).norm(dim=1)[:, None]
        assert bool((m >= a - dist * n - 1e-9).all()), "a CROWN margin bound fails inside the ball"
        for k, st_ in enumerate(crown.stages[:-1]):
            z = acts[st_.z_name]
            lo, hi = ball.bb.z[k]
            assert bool((z >= lo - 1e-9).all() and (z <= hi + 1e-9).all()), f"stage {k} interval fails"


@shapes
@given(**MLP_SHAPES)
def test_crown_on_relu_mlps_is_sound_and_beats_pairwise(
    seed: int, d: int, widths: list[int], classes: int, tmp_path: Path
) -> None:
    g = relu_mlp(seed, d, widths, classes)
    x = torch.randn(10, d, generator=torch.Generator().manual_seed(seed + 1), dtype=D)
    radii = check_crown(g, x, tmp_path)
    assert np.median(radii["crown"]) >= np.median(radii["pairwise"])
    check_linear_bounds(g, x, torch.from_numpy(radii["crown"]).clamp_min(0.05) * 2)


@shapes
@given(**POOL_SHAPES)
def test_crown_on_conv_maxpool_nets_is_sound(
    seed: int, c: int, n: int, k: int, pool: int, tmp_path: Path
) -> None:
    g = conv_pool_net(seed, c, n, k, pool, 3)
    x = torch.randn(6, 1, n, n, generator=torch.Generator().manual_seed(seed + 1), dtype=D)
    radii = check_crown(g, x, tmp_path)
    check_linear_bounds(g, x, torch.from_numpy(radii["crown"]).clamp_min(0.05) * 2)


@shapes
@given(
    seed=st.integers(0, 10_000),
    c=st.integers(1, 3),
    n=st.integers(4, 7),
    act=st.sampled_from(["relu", "leaky_relu", "sigmoid", "tanh"]),
    downsample=st.booleans(),
)
def test_crown_on_residual_nets_is_sound(
    seed: int, c: int, n: int, act: str, downsample: bool, tmp_path: Path
) -> None:
    g = residual_net(seed, c, n, act, 3, downsample)
    x = torch.randn(6, 1, n, n, generator=torch.Generator().manual_seed(seed + 1), dtype=D)
    radii = check_crown(g, x, tmp_path)
    assert np.median(radii["crown"]) > 0, "crown proved nothing on a residual net"
    check_linear_bounds(g, x, torch.from_numpy(radii["crown"]).clamp_min(0.05) * 2)


@shapes
@given(
    seed=st.integers(0, 10_000),
    d=st.integers(2, 8),
    widths=st.lists(st.integers(3, 16), min_size=1, max_size=3),
    act=st.sampled_from(["sigmoid", "tanh", "softplus", "elu"]),
)
def test_crown_on_smooth_mlps_is_sound(
    seed: int, d: int, widths: list[int], act: str, tmp_path: Path
) -> None:
    g = smooth_mlp(seed, d, widths, 3, act)
    x = torch.randn(8, d, generator=torch.Generator().manual_seed(seed + 1), dtype=D)
    radii = check_crown(g, x, tmp_path)
    check_linear_bounds(g, x, torch.from_numpy(radii["crown"]).clamp_min(0.05) * 2)


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


def conv_chain(seed: int) -> Graph:
    """conv (stride 2, asymmetric padding) -> relu -> conv (groups 2, dilation 2) -> relu -> flatten
    -> linear -> relu -> linear."""
    gen = torch.Generator().manual_seed(seed)
    c1 = Conv(
        torch.randn(4, 2, 3, 3, generator=gen, dtype=D) / 3,
        torch.randn(4, generator=gen, dtype=D) * 0.1,
        (2, 2),
        ((1, 0), (0, 1)),
        (1, 1),
    )
    c2 = Conv(
        torch.randn(4, 2, 2, 2, generator=gen, dtype=D) / 2,
        torch.randn(4, generator=gen, dtype=D) * 0.1,
        (1, 1),
        ((1, 1), (1, 1)),
        (2, 2),
        groups=2,
    )
    nodes = [
        Node("c1", c1, (INPUT,)),
        Node("a1", Activation("relu"), ("c1",)),
        Node("c2", c2, ("a1",)),
        Node("a2", Activation("relu"), ("c2",)),
    ]
    g = Graph((2, 8, 8), nodes, dtype=D)
    flat = int(np.prod(g.output_shape))
    nodes += [
        Node("flat", Reshape((flat,)), ("a2",)),
        Node(
            "l1",
            Linear(torch.randn(10, flat, generator=gen, dtype=D) / flat**0.5, torch.randn(10, dtype=D) * 0.1),
            ("flat",),
        ),
        Node("a3", Activation("relu"), ("l1",)),
        Node("out", Linear(torch.randn(3, 10, generator=gen, dtype=D) / 3, torch.zeros(3, dtype=D)), ("a3",)),
    ]
    return Graph((2, 8, 8), nodes, dtype=D)


def dense_crown(
    crown: Crown,
    x: torch.Tensor,
    lam: torch.Tensor,
    r: float,
    given: list[tuple[torch.Tensor, torch.Tensor]] | None,
    top: int | None = None,
) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
    """Textbook CROWN on dense matrices (each stage's affine map materialised column by column), no
    rounding control; intermediate bounds `given`, or else by CROWN alone."""
    from speccert.bounds.local_stages import evaluate

    blocks = []
    for st_ in crown.stages:
        (src,) = st_.sources
        shape = crown.shapes[src.name]
        n = int(np.prod(shape))
        b = evaluate(st_, {src.name: torch.zeros((1, *shape), dtype=D)}).reshape(-1)
        cols = evaluate(st_, {src.name: torch.eye(n, dtype=D).reshape(n, *shape)}).reshape(n, -1) - b
        blocks.append((cols.T, b))
    x0 = x.reshape(-1)
    bounds: list[tuple[torch.Tensor, torch.Tensor]] = []

    def back(k: int, rows: torch.Tensor) -> torch.Tensor:
        c, rows = rows @ blocks[k][1], rows @ blocks[k][0]
        for j in range(k - 1, -1, -1):
            lo, hi = bounds[j]
            act, dead = lo >= 0, hi <= 0
            un = ~act & ~dead
            s = torch.where(un, hi / (hi - lo).clamp_min(1e-300), act.to(D))
            alpha = torch.where(un, (hi >= -lo).to(D), act.to(D))
            neg = rows.clamp_max(0)
            c = c + (neg * torch.where(un, -s * lo, torch.zeros_like(lo))).sum(1)
            rows = rows.clamp_min(0) * alpha + neg * s
            c, rows = c + rows @ blocks[j][1], rows @ blocks[j][0]
        return rows @ x0 + c - r * rows.norm(dim=1)

    top = len(blocks) - 1 if top is None else top
    for k in range(top):
        if given is not None:
            bounds.append((given[k][0].reshape(-1), given[k][1].reshape(-1)))
            continue
        eye = torch.eye(blocks[k][0].shape[0], dtype=D)
        bounds.append((back(k, eye), -back(k, -eye)))
    return back(top, lam), bounds


def test_crown_matches_textbook_crown_on_a_conv_chain() -> None:
    """With the same intermediate intervals, the margin bound is dense textbook CROWN's (to 1e-9 of
    the margin scale: only the rounding allowance differs), and every unstable unit's lower bound is
    at least textbook CROWN's from the same earlier intervals (equal, or tighter from the interval
    bounds it is intersected with). Ours are not compared with textbook CROWN's whole chain of
    intervals: the adaptive lower slope of an unstable ReLU (1 if u >= -l) can flip with tighter
    intervals, for better or worse."""
    g = conv_chain(3)
    crown = Crown(lipschitz_bound(g))
    x = torch.randn(3, 2, 8, 8, generator=torch.Generator().manual_seed(5), dtype=D)
    y = crown.graph.forward(x).argmax(1)
    eye = torch.eye(3, dtype=D)
    for r in (0.05, 0.2, 0.5):
        rr = torch.full((3,), r, dtype=D)
        ball = crown.ball(x, rr)
        a, n = crown.lower(len(crown.stages) - 1, (eye[y][:, None, :] - eye[None, :, :]), ball)
        for b in range(3):
            keep = [j for j in range(3) if j != y[b]]
            lam = torch.stack([eye[y[b]] - eye[j] for j in keep])
            ours = a[b, keep] - r * n[b, keep]
            same, _ = dense_crown(crown, x[b], lam, r, [(lo[b], hi[b]) for lo, hi in ball.bb.z])
            scale = 1.0 + float(same.abs().max())
            assert bool((ours <= same).all()), "the rounding allowance is missing"
            np.testing.assert_allclose(ours.numpy(), same.numpy(), rtol=0, atol=1e-9 * scale)
            # the hidden CROWN intervals are textbook CROWN's, taken with our (intersected) earlier
            # intervals, on every unit whose relaxation is not exact
            for k, (lo, hi) in enumerate(ball.bb.z[1:], start=1):
                un = ((lo[b] < 0) & (hi[b] > 0)).reshape(-1)
                given = [(lo_[b], hi_[b]) for lo_, hi_ in ball.bb.z[:k]]
                z_eye = torch.eye(un.numel(), dtype=D)[un]
                ref, _ = dense_crown(crown, x[b], torch.cat([z_eye, -z_eye]), r, given, top=k)
                count = int(un.sum())
                assert bool((lo[b].reshape(-1)[un] >= ref[:count] - 1e-9 * scale).all())
                assert bool((hi[b].reshape(-1)[un] <= -ref[count:] + 1e-9 * scale).all())


def test_relaxation_lines_hold_on_their_intervals() -> None:
    """Every line of `relax` is below / above the activation on a dense grid of its interval, ends
    included, for stable, unstable, one-sided and zero-crossing intervals (ReLU, leaky ReLU, sigmoid,
    tanh, softplus, ELU); and sigmoid's and tanh's lines across 0 are tighter than the constants f(lo), f(hi)."""
    from speccert.bounds.crown_relax import relax
    from speccert.bounds.local_slopes import _forward

    gen = torch.Generator().manual_seed(0)
    lo = -torch.rand(3000, generator=gen, dtype=D) * 8
    hi = torch.rand(3000, generator=gen, dtype=D) * 8
    lo[:500] = lo[:500] * 1e-3 - 1e-12  # barely crossing
    hi[500:1000] = hi[500:1000] * 1e-3
    lo[1000:1500] = hi[1000:1500] * 0.5  # positive
    hi[1500:2000] = lo[1500:2000] * 0.3  # negative
    t = torch.linspace(0, 1, 2001, dtype=D)[:, None]
    z = lo + (hi - lo) * t
    cases = [
        ("relu", 0.0),
        ("leaky_relu", 0.1),
        ("sigmoid", 0.0),
        ("tanh", 0.0),
        ("softplus", 0.0),
        ("elu", 0.7),
    ]
    for fn, alpha in cases:
        a_lo, b_lo, a_up, b_up = relax(fn, alpha, lo, hi)
        f = _forward(fn, alpha, z)
        slack = 1e-15 * (1.0 + z.abs())
        assert bool((a_lo * z + b_lo <= f + slack).all()), f"{fn}: lower line above f"
        assert bool((a_up * z + b_up >= f - slack).all()), f"{fn}: upper line below f"
        if fn not in ("sigmoid", "tanh"):
            continue
        cross = (lo < -0.5) & (hi > 0.5)
        gap = (a_up * z + b_up - a_lo * z - b_lo)[:, cross].amax(0)
        flat = _forward(fn, alpha, hi[cross]) - _forward(fn, alpha, lo[cross])
        assert bool((gap < flat).float().mean() > 0.9), f"{fn}: lines across 0 no tighter than constants"
