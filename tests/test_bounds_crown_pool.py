"""Max-pool lines of the CROWN certificate: valid on every box (checked exactly, in fractions, at the
vertices where a line is tightest, and at sampled points), routed like a dense reference, and sound
end to end on nets whose windows overlap, are padded, and tie over a constant background."""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from certify_nets import D
from hypothesis import given
from hypothesis import strategies as st
from test_bounds_crown import check_crown, check_linear_bounds
from test_bounds_local import shapes

from speccert.bounds.crown_pool import pool_lines, route
from speccert.bounds.local_bounds import _pool_windows, pool_fixed
from speccert.ir import INPUT, Activation, Conv, Graph, Linear, MaxPool, Node, Reshape


def random_boxes(seed: int, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Intervals [lo, hi] with whole channels tied (identical intervals, as over a constant image
    background), point intervals, wide and narrow ones."""
    gen = torch.Generator().manual_seed(seed)
    centre = torch.randn(shape, generator=gen, dtype=D)
    half = torch.rand(shape, generator=gen, dtype=D) * torch.rand((shape[0], shape[1], 1, 1), generator=gen)
    tied = torch.rand((shape[0], shape[1], 1, 1), generator=gen) < 0.4
    centre = torch.where(tied, centre[:, :, :1, :1].expand(shape), centre)
    half = torch.where(tied, half[:, :, :1, :1].expand(shape), half)
    half = torch.where(torch.rand(shape, generator=gen, dtype=D) < 0.1, 0.0, half)
    return centre - half, centre + half


def _windows(op: MaxPool, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return _pool_windows(op, lo), _pool_windows(op, hi)


POOLS = [
    MaxPool((2, 2), (2, 2), ((0, 0), (0, 0)), (1, 1)),
    MaxPool((3, 3), (2, 2), ((1, 1), (1, 1)), (1, 1)),  # overlapping and padded
    MaxPool((3, 2), (1, 2), ((1, 0), (0, 1)), (1, 1)),
    MaxPool((2, 2), (1, 1), ((0, 0), (0, 0)), (2, 2)),  # dilated
]


@given(seed=st.integers(0, 10_000), which=st.integers(0, len(POOLS) - 1))
def test_pool_lines_hold_exactly_at_every_vertex(seed: int, which: int) -> None:
    """For 0 <= s <= 1 the line sum_j s_j x_j + B is above max_i x_i on the box iff, for every i,
    (1 - s_i) u_i - sum_{j != i} s_j l_j <= B (max - line is convex: its maximum is at a vertex, and
    for x_i to be the max there the others sit at their lower ends); checked in exact fractions. The
    lower line is a convex combination (sum exactly 1), hence below the max."""
    op = POOLS[which]
    lo, hi = random_boxes(seed, (2, 3, 6, 5))
    fixed, winner = pool_fixed(op, lo, hi)
    lines = pool_lines(op, lo, hi, fixed, winner)
    lw, hw = _windows(op, lo, hi)
    assert bool((lines.up >= 0).all() and (lines.up <= 1).all() and (lines.low >= 0).all())
    real = torch.isfinite(lw)
    assert bool((lines.low[~real] == 0).all() and (lines.up[~real] == 0).all()), "a padding tap is used"
    b, c, k, n_win = lw.shape
    for bi in range(b):
        for ci in range(c):
            for w in range(n_win):
                taps = [i for i in range(k) if bool(real[bi, ci, i, w])]
                t = [Fraction(float(lines.low[bi, ci, i, w])) for i in taps]
                assert sum(t) == 1, "the lower line is not a convex combination"
                s = {i: Fraction(float(lines.up[bi, ci, i, w])) for i in taps}
                l_ = {i: Fraction(float(lw[bi, ci, i, w])) for i in taps}
                u_ = {i: Fraction(float(hw[bi, ci, i, w])) for i in taps}
                big_b = Fraction(float(lines.b_up[bi, ci, w]))
                for i in taps:
                    worst = (1 - s[i]) * u_[i] - sum(s[j] * l_[j] for j in taps if j != i)
                    assert worst <= big_b, "the upper line is below the max at a vertex of the box"
                if bool(fixed[bi, ci, w]):
                    p = int(winner[bi, ci, w])
                    assert s[p] == 1 and big_b == 0 and t[taps.index(p)] == 1, "a fixed window is not exact"


def test_pool_lines_hold_at_sampled_points_and_tighten_tied_and_split_windows() -> None:
    """At random points of the boxes: lower <= max <= upper (float64, slack far above rounding). Tied
    windows take the mean of a power of two of candidates; windows with one clear top candidate get an
    upper line below the constant largest upper bound at the box's centre."""
    op = POOLS[1]
    lo, hi = random_boxes(5, (2, 4, 7, 7))
    fixed, winner = pool_fixed(op, lo, hi)
    lines = pool_lines(op, lo, hi, fixed, winner)
    lw, hw = _windows(op, lo, hi)
    real = torch.isfinite(lw)
    gen = torch.Generator().manual_seed(1)
    for _ in range(200):
        x = lo + (hi - lo) * torch.rand(lo.shape, generator=gen, dtype=D)
        xw = _pool_windows(op, x)
        top = xw.amax(2)
        xz = torch.where(real, xw, 0.0)
        low = (lines.low * xz).sum(2)
        up = (lines.up * xz).sum(2) + lines.b_up
        assert bool((low <= top + 1e-12).all() and (top <= up + 1e-12).all())
    ties = (lw == lw.amax(2, keepdim=True)).sum(2)
    mean_used = (lines.low > 0).sum(2)
    tied = ~fixed & (ties >= 2)
    assert bool(tied.any())
    assert bool((mean_used[tied] == 2 ** torch.floor(torch.log2(ties[tied].to(D)))).all())
    centre = torch.where(real, (lw + hw) / 2, 0.0)
    at_centre = (lines.up * centre).sum(2) + lines.b_up
    u_sorted = hw.sort(2, descending=True).values
    split = ~fixed & (u_sorted[:, :, 0] > u_sorted[:, :, 1])
    assert bool(split.any())
    assert bool((at_centre[split] < hw.amax(2)[split]).all()), "the upper line is no better than u*"


def test_route_matches_a_dense_reference() -> None:
    """route's fold puts lam_w t_i (lam_w >= 0) or lam_w s_i (lam_w < 0) on the input under tap i of
    window w, summed over overlapping windows: compared with an explicit loop."""
    op = POOLS[1]
    lo, hi = random_boxes(9, (2, 3, 7, 6))
    fixed, winner = pool_fixed(op, lo, hi)
    lines = pool_lines(op, lo, hi, fixed, winner)
    out_shape = op.forward(lo).shape
    lam = torch.randn((2, 4, *out_shape[1:]), generator=torch.Generator().manual_seed(2), dtype=D)
    got = route(op, lam, lines, tuple(lo.shape[1:]))
    index = torch.arange(math.prod(lo.shape[1:]), dtype=D).reshape(1, *lo.shape[1:])
    pos = _pool_windows(op, index)[0]  # [C, K, L] flat input index of every tap (-inf: padding)
    want = torch.zeros((2, 4, math.prod(lo.shape[1:])), dtype=D)
    flat = lam.reshape(2, 4, lo.shape[1], -1)
    for b in range(2):
        for c in range(lo.shape[1]):
            for i in range(pos.shape[1]):
                for w in range(pos.shape[2]):
                    if not math.isfinite(float(pos[c, i, w])):
                        continue
                    v = flat[b, :, c, w]
                    coef = torch.where(v >= 0, lines.low[b, c, i, w], lines.up[b, c, i, w])
                    want[b, :, int(pos[c, i, w])] += v * coef
    assert torch.allclose(got.reshape(2, 4, -1), want, rtol=1e-13, atol=1e-13)


def pool_net(seed: int, c: int, n: int, hidden: bool) -> Graph:
    """conv (padded) -> ReLU -> overlapping, padded max-pool -> [Linear -> ReLU] -> Linear."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(c, 1, 2, 2, generator=gen, dtype=D) / 2
    pool = MaxPool((3, 3), (2, 2), ((1, 1), (1, 1)), (1, 1))
    nodes = [
        Node(
            "conv",
            Conv(w, torch.randn(c, generator=gen, dtype=D) * 0.1, (1, 1), ((1, 1), (1, 1)), (1, 1)),
            (INPUT,),
        ),
        Node("relu", Activation("relu"), ("conv",)),
        Node("pool", pool, ("relu",)),
    ]
    g = Graph((1, n, n), nodes, dtype=D)
    flat = int(np.prod(g.output_shape))
    nodes.append(Node("flat", Reshape((flat,)), ("pool",)))
    last, width = "flat", flat
    if hidden:
        fc = Linear(
            torch.randn(8, flat, generator=gen, dtype=D) / flat**0.5,
            torch.randn(8, generator=gen, dtype=D) * 0.1,
        )
        nodes += [Node("fc", fc, ("flat",)), Node("relu2", Activation("relu"), ("fc",))]
        last, width = "relu2", 8
    head = torch.randn(3, width, generator=gen, dtype=D) / width**0.5
    nodes.append(Node("out", Linear(head, torch.zeros(3, dtype=D)), (last,)))
    return Graph((1, n, n), nodes, dtype=D)


@shapes
@given(seed=st.integers(0, 10_000), c=st.integers(1, 3), n=st.integers(4, 7), hidden=st.booleans())
def test_crown_with_pool_lines_is_sound_on_tied_backgrounds(
    seed: int, c: int, n: int, hidden: bool, tmp_path: Path
) -> None:
    """Inputs zero outside a random blob (tied windows over the background): PGD-L2 and minimal-norm
    attacks never beat a radius, and the linear bounds and intervals hold at sampled points."""
    g = pool_net(seed, c, n, hidden)
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.zeros(6, 1, n, n, dtype=D)
    x[:, :, 1:3, 1:3] = torch.randn(6, 1, 2, 2, generator=gen, dtype=D)
    radii = check_crown(g, x, tmp_path)
    check_linear_bounds(g, x, torch.from_numpy(radii["crown"]).clamp_min(0.05) * 2)
