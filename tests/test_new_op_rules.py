"""Soundness of the rules of the ops added for real architectures (issue 15): the activations' slope and
curvature constants (dense sampling plus a proven margin), Standardize (LayerNorm/GroupNorm) at tiny
variance, Slice, and whole graphs mixing them: the composed bound is never below a Jacobian norm found
by search, and it is tight where it should be."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from speccert.bounds import lipschitz_bound
from speccert.bounds.compose import standardize_factor
from speccert.importers.lowering import clip, group_norm, layer_norm, mean
from speccert.ir import INPUT, Activation, Concat, Graph, Linear, Node, Slice, Standardize
from speccert.ir.activations import activation_curvature, activation_lipschitz
from speccert.ir.ops import Op

D = torch.float64


def _derivatives(name: str, x: torch.Tensor, alpha: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    from speccert.ir.activations import ACTIVATIONS

    z = x.clone().requires_grad_(True)
    y = ACTIVATIONS.get(name).fn(z, alpha)
    (d1,) = torch.autograd.grad(y.sum(), z, create_graph=True)
    if not d1.requires_grad:  # piecewise linear: f'' = 0 wherever it exists
        return d1.detach(), torch.zeros_like(x)
    (d2,) = torch.autograd.grad(d1.sum(), z, allow_unused=True)
    return d1.detach(), (torch.zeros_like(x) if d2 is None else d2.detach())


@pytest.mark.parametrize(
    ("name", "alpha", "slope", "curv_max"),
    [
        ("gelu_tanh", 0.0, 1.1289931, 0.7978846),
        ("hardswish", 0.0, 1.5, None),
        ("clip", 6.0, 1.0, None),
        ("abs", 0.0, 1.0, None),
    ],
)
def test_activation_constants_cover_dense_samples(
    name: str, alpha: float, slope: float, curv_max: float | None
) -> None:
    # Step h on [-12, 12]: between samples |f'| grows by at most (h/2) sup|f''| (and |f''| by (h/2) sup|f'''|,
    # <= 0.8 for gelu_tanh), so the sampled maximum plus that margin is a proof of the stored constant.
    h = 1e-5
    x = torch.arange(-12.0, 12.0 + h, h, dtype=D)
    d1, d2 = _derivatives(name, x, alpha)
    lip = activation_lipschitz(name, alpha)
    assert float(d1.abs().max()) == pytest.approx(slope, abs=1e-5)  # the samples reach the claimed sup
    margin = 0.5 * h * (curv_max if curv_max is not None else 0.0)
    assert float(d1.abs().max()) + margin <= lip
    k = activation_curvature(name, alpha)
    if curv_max is None:
        assert k is None  # f' jumps: no curvature constant may be claimed
    else:
        assert k is not None and float(d2.abs().max()) + 0.5 * h * 0.8 <= k
        assert float(d2.abs().max()) == pytest.approx(curv_max, abs=1e-6)


def test_hardswish_slope_is_reached_and_jumps() -> None:
    # f'(3-) = 1.5 exactly (sup, not max), f'(3+) = 1: a jump, so no curvature bound.
    x = torch.tensor([3 - 1e-9, 3 + 1e-9], dtype=D)
    d1, _ = _derivatives("hardswish", x)
    assert d1[0] == pytest.approx(1.5, abs=1e-8) and d1[1] == pytest.approx(1.0)


# The Jacobian norms below are float64 evaluations (autograd, then an SVD) of the exact operator's
# Jacobian, each off by a few ulps; the rules bound the exact operator. Comparing an evaluation with a
# rule therefore allows this relative slack (measured: 9e-16 on a constant input at eps 1e-4), far below
# any real error of a rule.
EVAL_SLACK = 1e-12


def _jac_norm(f, x: torch.Tensor) -> float:  # noqa: ANN001
    j = torch.autograd.functional.jacobian(f, x)
    n = x.numel()
    return float(torch.linalg.matrix_norm(j.reshape(-1, n), ord=2))


@settings(max_examples=15, deadline=None, derandomize=True)
@given(
    n=st.integers(2, 12),
    eps=st.sampled_from([1e-6, 1e-5, 1e-3, 0.1]),
    spread=st.sampled_from([1e-5, 1e-2, 1.0, 10.0]),
)
def test_standardize_bound_covers_ascent_and_is_reached_at_tiny_variance(
    n: int, eps: float, spread: float
) -> None:
    op = Standardize(axes=1, eps=eps)
    bound = standardize_factor(op)
    gen = torch.Generator().manual_seed(n)
    x = (3.0 + math.sqrt(eps) * spread * torch.randn(n, generator=gen, dtype=D)).requires_grad_(True)
    opt = torch.optim.Adam([x], lr=1e-3 * math.sqrt(eps))
    best = 0.0
    for _ in range(30):  # gradient ascent on the Jacobian norm (moves toward zero variance)
        j = torch.autograd.functional.jacobian(lambda z: op.forward(z[None])[0], x, create_graph=True)
        val = torch.linalg.matrix_norm(j, ord=2)
        best = max(best, float(val))
        opt.zero_grad()
        (-val).backward()
        opt.step()
    assert best <= bound * (1 + EVAL_SLACK)
    if spread <= 1e-2:  # the sup 1/sqrt(eps) is approached as the variance goes to 0
        assert best >= 0.99 * bound * math.sqrt(eps / (eps + (spread**2) * eps * 2))


def test_standardize_worst_case_is_the_constant_input() -> None:
    # At variance 0 the Jacobian is P / sqrt(eps) (P the centring projection): norm exactly 1/sqrt(eps).
    op = Standardize(axes=2, eps=1e-4)
    x = torch.full((3, 4), 0.7, dtype=D)
    val = _jac_norm(lambda z: op.forward(z[None])[0], x)
    assert val == pytest.approx(100.0, rel=1e-9)
    assert val <= standardize_factor(op) * (1 + EVAL_SLACK)


def _emit_into(nodes: list[Node]):  # noqa: ANN202
    def emit(op: Op, v: str) -> str:
        name = f"n{len(nodes)}"
        nodes.append(Node(name, op, (v,)))
        return name

    return emit


def _graph_with(lower, shape: tuple[int, ...], out_dim: int = 3) -> Graph:  # noqa: ANN001
    torch.manual_seed(0)
    nodes: list[Node] = []
    last = lower(_emit_into(nodes), INPUT)
    g = Graph(shape, nodes, last, dtype=D)
    flat = math.prod(g.output_shape)
    nodes.append(Node("flat", __import__("speccert.ir", fromlist=["Reshape"]).Reshape((flat,)), (last,)))
    nodes.append(
        Node("fc", Linear(torch.randn(out_dim, flat, dtype=D), torch.randn(out_dim, dtype=D)), ("flat",))
    )
    return Graph(shape, nodes, "fc", dtype=D)


def _ascent(g: Graph, starts: int = 6, steps: int = 15, scale: float = 1.0) -> float:
    best = 0.0
    gen = torch.Generator().manual_seed(1)
    for _ in range(starts):
        x = (scale * torch.randn(g.input_shape, generator=gen, dtype=D)).requires_grad_(True)
        opt = torch.optim.Adam([x], lr=0.05 * scale)
        for _ in range(steps):
            j = torch.autograd.functional.jacobian(lambda z: g.forward(z[None])[0], x, create_graph=True)
            val = torch.linalg.matrix_norm(j.reshape(j.shape[0], -1), ord=2)
            best = max(best, float(val))
            if not val.requires_grad:  # piecewise linear: the Jacobian is locally constant, jump instead
                with torch.no_grad():
                    x.add_(0.5 * scale * torch.randn(x.shape, generator=gen, dtype=D))
                continue
            opt.zero_grad()
            (-val).backward()
            opt.step()
    return best


CHAINS = {
    "relu6": (lambda e, x: clip(e, x, 0.0, 6.0), (6,), 4.0),
    "hardtanh": (lambda e, x: clip(e, x, -1.0, 1.0), (6,), 1.0),
    "hardswish": (lambda e, x: e(Activation("hardswish"), x), (6,), 3.0),
    "gelu_tanh": (lambda e, x: e(Activation("gelu_tanh"), x), (6,), 1.5),
    "layer_norm": (lambda e, x: layer_norm(e, x, (2, 4), 1, 0.5, torch.randn(4).double(), None), (2, 4), 0.1),
    "group_norm": (
        lambda e, x: group_norm(e, x, (4, 2), 2, 0.5, torch.rand(4).double() + 0.5, None),
        (4, 2),
        0.1,
    ),
    "mean_axis0": (lambda e, x: mean(e, x, (3, 4), [0], keepdims=False), (3, 4), 1.0),
    "slice": (lambda e, x: e(Slice(axis=0, start=1, stop=5, step=2), x), (6,), 1.0),
}


@pytest.mark.parametrize("name", sorted(CHAINS))
def test_composed_bound_covers_jacobian_ascent(name: str) -> None:
    lower, shape, scale = CHAINS[name]
    g = _graph_with(lower, shape)
    upper = lipschitz_bound(g).upper
    found = _ascent(g, scale=scale)
    assert 0 < found <= upper


def test_slice_pieces_concatenated_back_keep_the_bound_exact() -> None:
    # Split into two Slices and Concat them back: the identity, whose bound is sqrt(1 + 1) = 1.414 by the
    # Concat rule, never below the true 1; a single Slice composes with factor exactly 1.
    nodes = [
        Node("a", Slice(axis=0, start=0, stop=3), (INPUT,)),
        Node("b", Slice(axis=0, start=3, stop=6), (INPUT,)),
        Node("c", Concat(axis=0), ("a", "b")),
    ]
    g = Graph((6,), nodes, "c", dtype=D)
    assert 1.0 <= lipschitz_bound(g).upper <= math.sqrt(2) * (1 + 1e-12)
    single = Graph((6,), [Node("s", Slice(axis=0, start=2, stop=6), (INPUT,))], "s", dtype=D)
    assert 1.0 <= lipschitz_bound(single).upper <= 1.0 + 1e-12  # factor 1, rounded up


def test_certify_densenet_block_with_batchnorm_after_concat() -> None:
    # DenseNet normalises the concatenation of its features: a BatchNorm that cannot fold into a conv,
    # on a [C, H, W] map with C != W. The rounding-error model broadcast its [C] shift against W and
    # certify failed ("size of tensor a (64) must match b (56)").
    from speccert.bounds import certify
    from speccert.ir import Add, BatchNorm, Conv, GlobalAvgPool, Reshape

    torch.manual_seed(0)

    def conv(ci: int, co: int) -> Conv:
        return Conv(torch.randn(co, ci, 3, 3, dtype=D) * 0.2, None, (1, 1), ((1, 1), (1, 1)), (1, 1))

    c = 5
    nodes = [
        Node("c0", conv(2, 3), (INPUT,)),
        Node("cat", Concat(axis=0), ("c0", INPUT)),
        Node(
            "bn",
            BatchNorm(
                torch.randn(c, dtype=D),
                torch.rand(c, dtype=D) + 0.5,
                torch.randn(c, dtype=D),
                torch.randn(c, dtype=D),
            ),
            ("cat",),
        ),
        Node("r", Activation("relu"), ("bn",)),
        Node("c1", conv(c, c), ("r",)),
        Node("res", Add(), ("c1", "cat")),
        Node("gap", GlobalAvgPool(), ("res",)),
        Node("flat", Reshape((c,)), ("gap",)),
        Node("fc", Linear(torch.randn(3, c, dtype=D), torch.zeros(3, dtype=D)), ("flat",)),
    ]
    g = Graph((2, 6, 7), nodes, "fc", dtype=D)
    x = torch.randn(8, 2, 6, 7, dtype=D)
    with torch.no_grad():
        y = g.forward(x).argmax(1)
    rep = certify(g, (x, y), eps=[0.01], lower_bound=False)
    assert len(rep.radius) == 8 and all(r >= 0 for r in rep.radius)
