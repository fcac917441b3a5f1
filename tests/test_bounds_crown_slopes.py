"""Optimised lower ReLU slopes of the crown certificate: never worse than the adaptive slopes, sound for
ANY slopes passed (clamped to [alpha, 1]), radii still below strong attacks."""

from __future__ import annotations

import inspect
import math
from pathlib import Path

import numpy as np
import torch
from certify_nets import D
from hypothesis import given
from test_bounds_crown import sample_ball
from test_bounds_local import (
    MLP_SHAPES,
    attack_distance,
    minimal_norm_distance,
    relu_mlp,
    residual_net,
    shapes,
)

from speccert.bounds import certify
from speccert.bounds.crown import Ball, Crown
from speccert.bounds.crown_slopes import score
from speccert.bounds.lipschitz import lipschitz_bound
from speccert.bounds.options import CROWN_STEPS
from speccert.exporters import save_onnx
from speccert.ir import Graph


def test_the_cli_default_is_the_options_default() -> None:
    from speccert.cli import certify_cmd

    for fn in (certify_cmd._certify_options, certify_cmd.command):
        assert inspect.signature(fn).parameters["crown_steps"].default == CROWN_STEPS


def margin_rows(crown: Crown, y: torch.Tensor) -> torch.Tensor:
    """lam = e_y - e_j for every class j: [B, C, C]."""
    eye = torch.eye(math.prod(crown.stages[-1].z_shape), dtype=D)
    return eye[y][:, None, :] - eye[None, :, :]


def test_optimised_margin_bounds_are_never_worse_and_gain_somewhere() -> None:
    g = relu_mlp(0, 10, [32, 32, 32], 5)
    x = torch.randn(8, 10, generator=torch.Generator().manual_seed(0), dtype=D)
    y = g.forward(x).argmax(1)
    crown = Crown(lipschitz_bound(g))
    crown.first_layer = "off"  # the slopes' own gain (the convex first layer is another per-row choice)
    r = torch.full((8,), 0.5, dtype=D)
    a0, n0 = crown.margin_bounds(x, y, r)
    crown.steps = 20
    a1, n1 = crown.margin_bounds(x, y, r)
    s0, s1 = score(a0, n0), score(a1, n1)
    assert bool((s1 >= s0).all()), "the optimised slopes made a margin bound worse"
    # the optimisation does something: some rows get strictly better (the adaptive slopes are a fixed
    # heuristic; a gradient that did not reach the earlier layers would leave every row as it was)
    # (2 rows per point are optimised: 16 rows here, 7 gain over 1 %; none without the gradient
    # through stage_vjp's create_graph)
    assert int(((s1 - s0) > 0.01 * s0.abs()).sum()) >= 5


def _unstable_net() -> tuple[Graph, torch.Tensor, torch.Tensor, float]:
    """A leaky-ReLU residual net (alpha = 0.1 in the test nets) with points and a radius that leaves many
    units unstable."""
    g = residual_net(7, 2, 6, "leaky_relu", 3, True)
    x = torch.randn(4, 1, 6, 6, generator=torch.Generator().manual_seed(8), dtype=D)
    alphas = {float(n.op.alpha) for n in g.nodes if getattr(n.op, "fn", "") == "leaky_relu"}
    assert len(alphas) == 1
    return g, x, torch.full((4,), 0.3, dtype=D), alphas.pop()


def test_any_slopes_give_a_valid_bound_they_are_clamped_to_alpha_one() -> None:
    g, x, r, alpha = _unstable_net()
    crown = Crown(lipschitz_bound(g))
    y = g.forward(x).argmax(1)
    lam = margin_rows(crown, y)
    ball: Ball = crown.ball(x, r)
    top = len(crown.stages) - 1
    a0, _ = crown.lower(top, lam, ball)
    free = {j: u for j, (u, _) in ball.free.items() if bool(u.any())}
    assert free, "no unstable unit: the test would check nothing"
    gen = torch.Generator().manual_seed(1)
    wild = {
        j: torch.rand((4, lam.shape[1], *u.shape[1:]), generator=gen, dtype=D) * 8 - 4
        for j, u in free.items()
    }
    clamped = {j: s.clamp(alpha, 1.0) for j, s in wild.items()}
    a_w, n_w = crown.lower(top, lam, ball, wild)
    a_c, n_c = crown.lower(top, lam, ball, clamped)
    assert torch.equal(a_w, a_c) and torch.equal(n_w, n_c), "out-of-range slopes were not clamped"
    # the slopes are really used: all-alpha and all-one slopes give different bounds from the adaptive
    lows = {j: torch.full_like(s, alpha) for j, s in wild.items()}
    ones = {j: torch.ones_like(s) for j, s in wild.items()}
    assert not torch.equal(crown.lower(top, lam, ball, lows)[0], a0)
    assert not torch.equal(crown.lower(top, lam, ball, ones)[0], a0)
    for slopes in (wild, lows, ones):
        a, n = crown.lower(top, lam, ball, slopes)
        for p in sample_ball(x, r, 64, 5):
            f = crown.graph.forward(p)
            m = f.gather(1, y[:, None]) - f
            dist = (p - x).flatten(1).norm(dim=1)[:, None]
            assert bool((m >= a - dist * n - 1e-9).all()), "a bound with chosen slopes fails in the ball"


@shapes
@given(**MLP_SHAPES)
def test_optimised_crown_radii_are_below_attacks(
    seed: int, d: int, widths: list[int], classes: int, tmp_path: Path
) -> None:
    g = relu_mlp(seed, d, widths, classes)
    x = torch.randn(10, d, generator=torch.Generator().manual_seed(seed + 1), dtype=D)
    y = g.forward(x).argmax(1)
    kinds = ["global", "crown"]
    rep0 = certify(g, (x, y), eps=[0.1], lower_bound=False, certificates=kinds, crown_steps=0)
    rep = certify(g, (x, y), eps=[0.1], lower_bound=False, certificates=kinds, crown_steps=30, audit=10)
    crown, adaptive = rep.radii["crown"], rep0.radii["crown"]
    # at any radius the optimised bound certifies at least what the adaptive slopes give there (the
    # search may then test other radii, so the final radii may differ either way: not compared)
    model = Crown(lipschitz_bound(g))
    r = torch.from_numpy(adaptive).clamp_min(0.01)
    plain = score(*model.margin_bounds(x, y, r)).amin(1)
    model.steps = 30
    optimised = score(*model.margin_bounds(x, y, r)).amin(1)
    assert bool((optimised >= plain).all())
    onnx = save_onnx(g.to("cpu", torch.float32), tmp_path / "net.onnx")
    keep = crown > 0
    dist = attack_distance(g, x[keep], y[keep], torch.from_numpy(crown[keep]), onnx)
    assert np.all(crown[keep] <= dist), "PGD beat an optimised crown radius"
    assert np.all(crown <= minimal_norm_distance(g, x, y, onnx)), "a minimal-norm attack beat a crown radius"
