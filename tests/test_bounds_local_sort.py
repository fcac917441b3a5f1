"""MaxMin (Sort over pairs) in the local and crown certificates: the relaxation's lines hold at sampled
points of the box, the cross-term bound of the first layer holds at the vertices of its delta box,
and on random MaxMin nets no strong attack (PGD-L2 with restarts, a minimal-norm attack, both checked
in onnxruntime) beats a local or crown radius; where every pair's order is fixed the local bound is
the gradient norm."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from certify_nets import D
from hypothesis import given
from hypothesis import strategies as st
from test_bounds_crown import check_linear_bounds, sample_ball
from test_bounds_local import attack_distance, minimal_norm_distance, shapes, smooth_mlp

from speccert.bounds import certify
from speccert.bounds.certificate import CertContext, NotApplicable
from speccert.bounds.certificates.local import LocalModel
from speccert.bounds.crown import Crown
from speccert.bounds.crown_relax import relax
from speccert.bounds.crown_sort import relax_sort
from speccert.bounds.lipschitz import lipschitz_bound
from speccert.bounds.local_first import FirstTerm, first_bound
from speccert.bounds.local_slopes import _forward
from speccert.bounds.local_sort import difference_box
from speccert.bounds.local_stages import build_stages
from speccert.exporters import save_onnx
from speccert.ir import INPUT, Activation, Affine, Concat, Conv, Graph, Linear, Node, Reshape, Sort


def maxmin_mlp(seed: int, d: int, widths: list[int], classes: int, strided: bool, descending: bool) -> Graph:
    """Linear -> MaxMin -> ... -> Linear; halves (strided: [2, w/2]) or neighbours ([w/2, 2])."""
    gen = torch.Generator().manual_seed(seed)
    nodes, prev, n_in = [], INPUT, d
    for i, w in enumerate(widths):
        w = 2 * w
        weight = torch.randn(w, n_in, generator=gen, dtype=D) * (2.0 / n_in) ** 0.5
        split, axis = ((2, w // 2), 0) if strided else ((w // 2, 2), 1)
        nodes += [
            Node(f"l{i}", Linear(weight, torch.randn(w, generator=gen, dtype=D) * 0.3), (prev,)),
            Node(f"p{i}", Reshape(split), (f"l{i}",)),
            Node(f"s{i}", Sort(axis=axis, descending=descending), (f"p{i}",)),
            Node(f"f{i}", Reshape((w,)), (f"s{i}",)),
        ]
        prev, n_in = f"f{i}", w
    head = torch.randn(classes, n_in, generator=gen, dtype=D) / n_in**0.5
    nodes.append(Node("out", Linear(head, torch.zeros(classes, dtype=D)), (prev,)))
    return Graph((d,), nodes, dtype=D)


def maxmin_cnn(seed: int, c: int, n: int, classes: int) -> Graph:
    """Conv (2c channels) -> MaxMin over channel halves -> flatten -> Linear -> MaxMin -> Linear."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(2 * c, 1, 3, 3, generator=gen, dtype=D) / 3
    conv = Conv(w, torch.randn(2 * c, generator=gen, dtype=D) * 0.2, (1, 1), ((1, 1), (1, 1)), (1, 1))
    flat = 2 * c * n * n
    hidden = torch.randn(8, flat, generator=gen, dtype=D) * (2.0 / flat) ** 0.5
    head = torch.randn(classes, 8, generator=gen, dtype=D) / 8**0.5
    nodes = [
        Node("conv", conv, (INPUT,)),
        Node("pairs", Reshape((2, c, n, n)), ("conv",)),
        Node("mm", Sort(axis=0, descending=True), ("pairs",)),
        Node("back", Reshape((flat,)), ("mm",)),
        Node("fc", Linear(hidden, torch.randn(8, generator=gen, dtype=D) * 0.2), ("back",)),
        Node("pairs2", Reshape((2, 4)), ("fc",)),
        Node("mm2", Sort(axis=0, descending=True), ("pairs2",)),
        Node("back2", Reshape((8,)), ("mm2",)),
        Node("out", Linear(head, torch.zeros(classes, dtype=D)), ("back2",)),
    ]
    return Graph((1, n, n), nodes, dtype=D)


def check_sound(g: Graph, x: torch.Tensor, tmp_path: Path) -> dict[str, np.ndarray]:
    """No PGD-L2 (restarts, bisection) nor minimal-norm attack, checked in onnxruntime, beats a local
    or crown radius; both kinds ran (not skipped as unsupported)."""
    with torch.no_grad():
        y = g.forward(x).argmax(1)
    kinds = ["global", "pairwise", "local", "crown"]
    rep = certify(g, (x, y), eps=[0.1], lower_bound=False, certificates=kinds, audit=x.shape[0])
    assert "local" in rep.radii and "crown" in rep.radii, "a MaxMin net was not bounded by local/crown"
    onnx = save_onnx(g.to("cpu", torch.float32), tmp_path / "net.onnx")
    best = np.maximum(rep.radii["local"], rep.radii["crown"])
    keep = best > 0
    dist = attack_distance(g, x[keep], y[keep], torch.from_numpy(best[keep]), onnx)
    assert np.all(best[keep] <= dist), "PGD beat a local/crown radius of a MaxMin net"
    assert np.all(best <= minimal_norm_distance(g, x, y, onnx)), "a minimal-norm attack beat a radius"
    return rep.radii


@shapes
@given(
    seed=st.integers(0, 10_000),
    d=st.integers(2, 8),
    widths=st.lists(st.integers(2, 8), min_size=1, max_size=3),
    strided=st.booleans(),
    descending=st.booleans(),
)
def test_local_and_crown_on_maxmin_mlps_are_sound(
    seed: int, d: int, widths: list[int], strided: bool, descending: bool, tmp_path: Path
) -> None:
    g = maxmin_mlp(seed, d, widths, 3, strided, descending)
    x = torch.randn(8, d, generator=torch.Generator().manual_seed(seed + 1), dtype=D)
    radii = check_sound(g, x, tmp_path)
    assert np.median(radii["local"]) >= np.median(radii["pairwise"]) * 0.99
    check_linear_bounds(g, x, torch.from_numpy(radii["crown"]).clamp_min(0.05) * 2)


@shapes
@given(seed=st.integers(0, 10_000), c=st.integers(1, 3), n=st.integers(3, 6))
def test_local_and_crown_on_maxmin_convnets_are_sound(seed: int, c: int, n: int, tmp_path: Path) -> None:
    g = maxmin_cnn(seed, c, n, 3)
    x = torch.randn(6, 1, n, n, generator=torch.Generator().manual_seed(seed + 1), dtype=D)
    radii = check_sound(g, x, tmp_path)
    check_linear_bounds(g, x, torch.from_numpy(radii["crown"]).clamp_min(0.05) * 2)


@pytest.mark.parametrize("descending", [True, False])
def test_pair_intervals_hold_on_the_ball(descending: bool) -> None:
    """Every pair's difference d = a - b stays in its proven interval at sampled points of the ball,
    for the local model's intervals and crown's (intersected)."""
    g = maxmin_mlp(5, 6, [6, 5], 3, True, descending)
    x = torch.randn(6, 6, generator=torch.Generator().manual_seed(6), dtype=D)
    r = torch.full((6,), 0.4, dtype=D)
    bound = lipschitz_bound(g)
    local = LocalModel(CertContext(bound, bound.folded, torch.device("cpu")))
    crown = Crown(bound, local.stages)
    crown.unit_lipschitz = local.unit_lipschitz
    ball = crown.ball(x, r)
    for p in sample_ball(x, r, 64, 7):
        acts = crown.graph.activations(p)
        for k, stage in enumerate(crown.stages[:-1]):
            lo, hi = ball.bb.pairs[k]
            assert stage.act is not None and isinstance(stage.act.op, Sort)
            d, _ = difference_box(acts[stage.z_name], acts[stage.z_name], stage.act.op.axis + 1)
            assert bool((d >= lo - 1e-9).all() and (d <= hi + 1e-9).all()), f"pair interval {k} fails"
    # crown's intervals of d are never looser than the boxes' difference
    for k in ball.bb.pairs:
        box = difference_box(*ball.bb.z[k], 1)
        assert bool((ball.bb.pairs[k][0] >= box[0]).all() and (ball.bb.pairs[k][1] <= box[1]).all())


@given(
    seed=st.integers(0, 10_000),
    pairs=st.integers(1, 6),
    rows=st.integers(1, 4),
    spread=st.sampled_from([0.01, 0.5, 3.0]),
)
@shapes
def test_maxmin_lines_hold_on_the_box(seed: int, pairs: int, rows: int, spread: float) -> None:
    """lam^T sort(z) >= mu^T z + const - err at sampled z of the box (its corners included), for
    pairs whose order is fixed and pairs whose order is free."""
    gen = torch.Generator().manual_seed(seed)
    centre = torch.randn(1, 2, pairs, generator=gen, dtype=D)
    rad = torch.rand(1, 2, pairs, generator=gen, dtype=D) * spread
    lo, hi = centre - rad, centre + rad
    for descending in (True, False):
        op = Sort(axis=0, descending=descending)
        lam = torch.randn(1, rows, 2, pairs, generator=gen, dtype=D)
        h_abs = torch.maximum(op.forward(lo).abs(), op.forward(hi).abs())
        mu, const, err = relax_sort(op, lam, difference_box(lo, hi, 1), (lo, hi), h_abs)
        corners = torch.tensor(list(itertools.product([0.0, 1.0], repeat=2 * pairs)), dtype=D)
        t = torch.cat([corners, torch.rand(256, 2 * pairs, generator=gen, dtype=D)]).reshape(-1, 2, pairs)
        z = lo + (hi - lo) * t
        value = (lam[0][None] * op.forward(z)[:, None]).flatten(2).sum(2)
        line = (mu[0][None] * z[:, None]).flatten(2).sum(2) + const - err
        assert bool((value >= line - 1e-12).all()), "a MaxMin line is above the function"
        fixed = difference_box(lo, hi, 1)
        if bool(((fixed[0] >= 0) | (fixed[1] <= 0)).all()):  # a fixed permutation: exact
            assert float((value - line).max()) <= 1e-9


@shapes
@given(
    seed=st.integers(0, 10_000),
    n=st.integers(2, 6),
    units=st.integers(1, 5),
    rows=st.integers(1, 3),
    sort=st.booleans(),
    scaled=st.booleans(),
)
def test_first_layer_cross_term_bound_holds_at_every_vertex(
    seed: int, n: int, units: int, rows: int, sort: bool, scaled: bool
) -> None:
    """||a + sum_i delta_i c_i r_i|| <= first_bound for every delta in {-1, 1}^units (the maximum of a
    convex function over the box is at a vertex), per row and as a matrix; r_i the rows of the first
    layer (ReLU units) or the differences of its pairs (MaxMin); one Linear (its product and
    Cauchy-Schwarz rounding) or a scaling before it (the box pass)."""
    gen = torch.Generator().manual_seed(seed)
    width = 2 * units if sort else units
    w = torch.randn(width, n, generator=gen, dtype=D)
    scale = torch.rand(n, generator=gen, dtype=D) + 0.5 if scaled else torch.ones(n, dtype=D)
    pre = Node("scale", Affine(scale, torch.randn(n, generator=gen, dtype=D)), (INPUT,))
    first = Node("l", Linear(w, torch.randn(width, generator=gen, dtype=D)), ("scale",))
    w = w * scale  # the stage's linear map
    if sort:
        nodes = [pre, first, Node("p", Reshape((2, units)), ("l",)), Node("s", Sort(axis=0), ("p",))]
        nodes.append(Node("f", Reshape((width,)), ("s",)))
        r = w[:units] - w[units:]
    else:
        nodes = [pre, first, Node("f", Activation("relu"), ("l",))]
        r = w
    nodes.append(Node("out", Linear(torch.randn(2, width, generator=gen, dtype=D), None), ("f",)))
    g = Graph((n,), nodes, dtype=D)
    stage = build_stages(lipschitz_bound(g))[0]
    a = torch.randn(1, rows, n, generator=gen, dtype=D)
    coeff = torch.rand(1, rows, units, generator=gen, dtype=D)
    e_norm = (coeff * r.norm(dim=1)).sum(2) * (1 + 1e-12)  # >= ||e|| (triangle)
    per_row = first_bound(g, a, [FirstTerm(stage, coeff, e_norm)], a.norm(dim=2) * (1 + 1e-12), False)
    spec_e = (coeff.norm(dim=1) * r.norm(dim=1)).sum(1) * (1 + 1e-12)
    spec_a = torch.linalg.matrix_norm(a, ord=2) * (1 + 1e-12)
    matrix = first_bound(g, a, [FirstTerm(stage, coeff, spec_e)], spec_a, True)
    for signs in itertools.product([-1.0, 1.0], repeat=units):
        delta = torch.tensor(signs, dtype=D)
        full = a + (coeff * delta)[..., None].mul(r).sum(2)
        assert bool((full.norm(dim=2) <= per_row).all())
        assert float(torch.linalg.matrix_norm(full, ord=2)[0]) <= float(matrix[0])
    assert bool((per_row <= a.norm(dim=2) + e_norm + 1e-9).all()), "never worse than the triangle"


def test_local_is_the_gradient_norm_where_every_pair_is_fixed() -> None:
    g = maxmin_mlp(11, 5, [4, 4], 3, False, True)
    x = torch.randn(12, 5, generator=torch.Generator().manual_seed(2), dtype=D)
    bound = lipschitz_bound(g)
    model = LocalModel(CertContext(bound, bound.folded, torch.device("cpu")))
    y = g.forward(x).argmax(1)
    lip = model.lipschitz(x, y, torch.full((12,), 1e-7, dtype=D))
    xr = x.clone().requires_grad_(True)
    f = g.forward(xr)
    for j in range(3):
        (grad,) = torch.autograd.grad((f.gather(1, y[:, None])[:, 0] - f[:, j]).sum(), xr, retain_graph=True)
        exact = grad.norm(dim=1)
        assert bool((lip[:, j] >= exact).all())
        assert torch.allclose(lip[:, j], exact, rtol=1e-6, atol=1e-9)


def test_groups_of_more_than_two_are_refused_in_one_line() -> None:
    g = Graph(
        (6,),
        [
            Node("l", Linear(torch.randn(6, 6, dtype=D), None), (INPUT,)),
            Node("p", Reshape((2, 3)), ("l",)),
            Node("s", Sort(axis=1, descending=True), ("p",)),
            Node("f", Reshape((6,)), ("s",)),
            Node("out", Linear(torch.randn(3, 6, dtype=D), None), ("f",)),
        ],
        dtype=D,
    )
    with pytest.raises(NotApplicable, match=r"only Sort over groups of two .*node 's'"):
        build_stages(lipschitz_bound(g))
    assert math.isfinite(lipschitz_bound(g).upper)


def concat_net(seed: int, d: int, a: int, b: int, act: str, skip: bool) -> Graph:
    """Two branches (or a branch and the input itself: a dense skip) concatenated, then a hidden
    layer and the logits."""
    gen = torch.Generator().manual_seed(seed)
    nodes = [
        Node(
            "la",
            Linear(torch.randn(a, d, generator=gen, dtype=D), torch.randn(a, generator=gen, dtype=D)),
            (INPUT,),
        ),
        Node("aa", Activation(act), ("la",)),
        Node(
            "lb",
            Linear(torch.randn(b, d, generator=gen, dtype=D), torch.randn(b, generator=gen, dtype=D)),
            (INPUT,),
        ),
        Node("ab", Activation("relu"), ("lb",)),
        Node("cat", Concat(0), ("aa", INPUT if skip else "ab")),
    ]
    width = a + (d if skip else b)
    nodes += [
        Node("lc", Linear(torch.randn(6, width, generator=gen, dtype=D) / width**0.5, None), ("cat",)),
        Node("ac", Activation("relu"), ("lc",)),
        Node("out", Linear(torch.randn(3, 6, generator=gen, dtype=D), None), ("ac",)),
    ]
    return Graph((d,), nodes, dtype=D)


@shapes
@given(
    seed=st.integers(0, 10_000),
    d=st.integers(2, 6),
    a=st.integers(2, 8),
    b=st.integers(2, 8),
    act=st.sampled_from(["relu", "tanh", "sigmoid"]),
    skip=st.booleans(),
)
def test_local_and_crown_on_concat_nets_are_sound(
    seed: int, d: int, a: int, b: int, act: str, skip: bool, tmp_path: Path
) -> None:
    g = concat_net(seed, d, a, b, act, skip)
    x = torch.randn(8, d, generator=torch.Generator().manual_seed(seed + 1), dtype=D)
    radii = check_sound(g, x, tmp_path)
    assert np.median(radii["local"]) >= np.median(radii["pairwise"]) * 0.99
    check_linear_bounds(g, x, torch.from_numpy(radii["crown"]).clamp_min(0.05) * 2)


def test_concat_stage_bounds_cover_the_dense_jacobian() -> None:
    """Per stage and source, the path bound (root sum of squares at a Concat) and every row-norm bound
    are >= the dense Jacobian's norms; a source reaching a Concat through both inputs included."""
    gen = torch.Generator().manual_seed(3)
    nodes = [
        Node("la", Linear(torch.randn(5, 4, generator=gen, dtype=D), None), (INPUT,)),
        Node("lb", Linear(torch.randn(3, 4, generator=gen, dtype=D), None), (INPUT,)),
        Node("cat", Concat(0), ("la", "lb")),
        Node("act", Activation("relu"), ("cat",)),
        Node("lc", Linear(torch.randn(2, 8, generator=gen, dtype=D), None), ("act",)),
    ]
    g = Graph((4,), nodes, dtype=D)
    stage = build_stages(lipschitz_bound(g))[0]
    (source,) = stage.sources
    jac = torch.cat([g.node("la").op.weight, g.node("lb").op.weight])  # type: ignore[attr-defined]
    assert source.upper >= float(torch.linalg.matrix_norm(jac, ord=2))
    assert bool((source.rownorm >= jac.norm(dim=1) * (1 - 1e-12)).all())


@pytest.mark.parametrize("fn", ["silu", "gelu", "gelu_tanh"])
def test_silu_gelu_lines_hold_and_are_tight(fn: str) -> None:
    """The piecewise-bounded chord lines of SiLU / GELU hold on a dense grid of stable, crossing,
    tiny and wide intervals (ends and critical points included), and their intercepts are within the
    pieces' allowance of the best intercepts for that slope."""
    gen = torch.Generator().manual_seed(1)
    lo = -torch.rand(3000, generator=gen, dtype=D) * 8
    hi = torch.rand(3000, generator=gen, dtype=D) * 8
    lo[:500] = lo[:500] * 1e-3 - 1e-12
    hi[500:1000] = hi[500:1000] * 1e-3
    lo[1000:1500] = hi[1000:1500] * 0.5
    hi[1500:2000] = lo[1500:2000] * 0.3
    lo[2000:2100], hi[2000:2100] = -2.3993573 - 1e-9, -2.3993573 + 1e-9  # at silu's critical point
    lo[2100:2200] = hi[2100:2200]  # one point
    t = torch.linspace(0, 1, 2001, dtype=D)[:, None]
    z = torch.cat([lo + (hi - lo) * t, torch.full((1, 3000), -1.4142135623730951, dtype=D).clamp(lo, hi)])
    a_lo, b_lo, a_up, b_up = relax(fn, 0.0, lo, hi)
    f = _forward(fn, 0.0, z)
    slack = 1e-15 * (1.0 + z.abs())
    assert bool((a_lo * z + b_lo <= f + slack).all()), f"{fn}: lower line above f"
    assert bool((a_up * z + b_up >= f - slack).all()), f"{fn}: upper line below f"
    # the intercepts' gap is the spread of g = f - a z (the best any lines of slope a can do) plus at
    # most 2 max |f' - a| (hi - lo) / 32 from the pieces (|f'| <= 1.13, |a| <= 1.13)
    g = f - a_lo * z
    spread = g.amax(0) - g.amin(0)
    assert bool((b_up - b_lo <= spread + 2 * 2.26 * (hi - lo) / 32 + 1e-9).all()), f"{fn}: loose lines"


@shapes
@given(
    seed=st.integers(0, 10_000),
    d=st.integers(2, 8),
    widths=st.lists(st.integers(3, 12), min_size=1, max_size=2),
    act=st.sampled_from(["silu", "gelu"]),
)
def test_crown_on_silu_gelu_mlps_is_sound(
    seed: int, d: int, widths: list[int], act: str, tmp_path: Path
) -> None:
    g = smooth_mlp(seed, d, widths, 3, act)
    x = torch.randn(8, d, generator=torch.Generator().manual_seed(seed + 1), dtype=D)
    radii = check_sound(g, x, tmp_path)
    assert np.median(radii["crown"]) > np.median(radii["global"]), "crown proved less than global"
    check_linear_bounds(g, x, torch.from_numpy(radii["crown"]).clamp_min(0.05) * 2)
