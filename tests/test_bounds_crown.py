"""CROWN certificate: linear bounds and hidden intervals that hold on the ball, radii below strong
attacks (random ReLU, max-pool, residual and smooth nets), relaxation lines valid on their intervals.
Exactness and the rounding allowance: test_bounds_crown_exact.py; against a dense textbook CROWN:
test_bounds_crown_textbook.py; max-pool lines: test_bounds_crown_pool.py."""

from __future__ import annotations

import math
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
from speccert.ir import Graph


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
