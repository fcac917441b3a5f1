"""Soundness and exactness of the Lipschitz composition (speccert.bounds.lipschitz)."""

from __future__ import annotations

import math

import pytest
import torch
from certify_nets import D, all_nets, mlp

from speccert.bounds import lipschitz_bound
from speccert.bounds.empirical import empirical_lipschitz
from speccert.bounds.lipschitz import maxpool_factor
from speccert.errors import InputError, UnsupportedModelError, UsageError
from speccert.ir import INPUT, Add, Affine, Concat, Graph, Linear, MaxPool, Node, Opaque, Reshape, Softmax

NETS = all_nets()


def jacobian_norms(graph: Graph, x: torch.Tensor) -> torch.Tensor:
    """Exact ||J(x_b)||_2 for a batch: dense Jacobians by one backward pass per output, then SVDs."""
    z = x.detach().requires_grad_(True)
    out = graph.forward(z)
    rows = [
        torch.autograd.grad(out[:, c].sum(), z, retain_graph=True)[0].reshape(x.shape[0], -1)
        for c in range(out.shape[1])
    ]
    return torch.linalg.matrix_norm(torch.stack(rows, 1), ord=2)


def ascent_jacobian_norm(graph: Graph, n_start: int = 32, steps: int = 25) -> float:
    """Largest exact ||J(x)||_2 found by a batched random search that keeps improvements."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(n_start, *graph.input_shape, generator=gen, dtype=D)
    val = jacobian_norms(graph, x)
    for _ in range(steps):
        cand = x + 0.3 * torch.randn(x.shape, generator=gen, dtype=D)
        v = jacobian_norms(graph, cand)
        better = v > val
        x = torch.where(better.reshape(-1, *([1] * len(graph.input_shape))), cand, x)
        val = torch.maximum(val, v)
    return float(val.max())


@pytest.mark.parametrize("name", sorted(NETS))
def test_bound_above_largest_jacobian_norm(name: str) -> None:
    g = NETS[name]
    lb = lipschitz_bound(g)
    found = ascent_jacobian_norm(g)
    assert 0 < found <= lb.upper
    # The library's own lower bound is a true lower bound too, and at most the exact maximum found so far
    # can only be improved: it must also stay below the upper bound.
    x = torch.randn(16, *g.input_shape, dtype=D)
    low = empirical_lipschitz(lb.folded, x)
    assert 0 < low <= lb.upper
    # Difference quotients of random pairs are below the bound as well.
    y = x + 0.05 * torch.randn_like(x)
    with torch.no_grad():
        q = (g.forward(x) - g.forward(y)).norm(dim=1) / (x - y).reshape(16, -1).norm(dim=1)
    assert float(q.max()) <= lb.upper


def test_linear_chain_is_exact_after_folding() -> None:
    """Two linear layers merge before the norm: the bound is ||W2 W1||, not ||W2|| ||W1||."""
    w1, w2 = torch.randn(7, 5, dtype=D), torch.randn(3, 7, dtype=D)
    g = Graph((5,), [Node("a", Linear(w1, None), (INPUT,)), Node("b", Linear(w2, None), ("a",))], dtype=D)
    exact = float(torch.linalg.matrix_norm(w2 @ w1, ord=2))
    lb = lipschitz_bound(g)
    assert exact <= lb.upper <= exact * (1 + 1e-9)
    assert lb.upper < float(torch.linalg.matrix_norm(w2, ord=2) * torch.linalg.matrix_norm(w1, ord=2))


def test_add_sums_and_concat_root_sum_square() -> None:
    w = torch.randn(4, 4, dtype=D)
    s = float(torch.linalg.matrix_norm(w, ord=2))
    # x + W x: the bound is 1 + ||W|| (sum over the two paths).
    g_add = Graph(
        (4,),
        [
            Node("l", Linear(w, None), (INPUT,)),
            Node("r", Reshape((4,)), (INPUT,)),
            Node("add", Add(), ("l", "r")),
        ],
        dtype=D,
    )
    assert lipschitz_bound(g_add).upper == pytest.approx(1 + s, rel=1e-9)
    assert lipschitz_bound(g_add).upper >= 1 + s
    # [x, 2x]: sqrt(1 + 4).
    g_cat = Graph(
        (4,),
        [
            Node("a", Reshape((4,)), (INPUT,)),
            Node("b", Affine(torch.full((4,), 2.0, dtype=D), torch.zeros(4, dtype=D)), (INPUT,)),
            Node("cat", Concat(0), ("a", "b")),
        ],
        dtype=D,
    )
    ub = lipschitz_bound(g_cat).upper
    assert math.sqrt(5) <= ub <= math.sqrt(5) * (1 + 1e-9)


def window_counts(op: MaxPool, shape: tuple[int, ...]) -> torch.Tensor:
    """For every input pixel, how many pooling windows contain it (brute force with one-hot inputs)."""
    n = math.prod(shape)
    eye = torch.eye(n, dtype=D).reshape(n, 1, *shape)
    out = op.forward(eye)  # window contains the pixel iff its max is the 1
    return (out == 1).reshape(n, -1).sum(1)


@pytest.mark.parametrize(
    "n,k,s,p,d,ceil",
    [
        (7, 2, 2, 0, 1, False),
        (7, 3, 1, 1, 1, False),
        (8, 3, 2, 1, 1, False),
        (5, 4, 1, 0, 1, False),
        (6, 5, 2, 2, 1, False),
        (4, 3, 1, 0, 1, False),
        (9, 3, 2, 0, 2, False),
        (7, 2, 2, 0, 1, True),
        (10, 4, 3, 1, 1, True),
        (3, 3, 1, 1, 1, False),
    ],
)
def test_maxpool_factor_against_brute_force(n: int, k: int, s: int, p: int, d: int, ceil: bool) -> None:
    op = MaxPool((k, k), (s, s), ((p, p), (p, p)), (d, d), ceil)
    out_shape = tuple(op.forward(torch.zeros(1, 1, n, n, dtype=D)).shape[1:])
    counts = window_counts(op, (n, n))
    factor = maxpool_factor(op, (1, n, n), out_shape)
    # Sound: a spike at the most-covered pixel is selected by all its windows, ||J|| = sqrt(count).
    assert float(counts.max()) ** 0.5 <= factor
    # Tight for dilation 1: the formula is exactly the brute-force count (DESIGN.md's formula).
    if d == 1:
        assert factor == pytest.approx(float(counts.max()) ** 0.5, rel=1e-12)
        c = [math.ceil(min(k, n + 2 * p - k + 1) / s)] * 2
        if not ceil:
            assert factor == pytest.approx(math.sqrt(c[0] * c[1]), rel=1e-12)
    # The Jacobian at a spike (and at random points) never exceeds the factor.
    i = int(counts.argmax())
    x = torch.rand(1, n, n, dtype=D)
    x.view(-1)[i] = 10.0
    for z in (x, torch.rand(1, n, n, dtype=D)):
        jac = torch.autograd.functional.jacobian(lambda t: op.forward(t[None])[0], z)
        assert (
            float(torch.linalg.matrix_norm(jac.reshape(jac[..., 0, 0, 0].numel(), -1), ord=2))
            <= factor + 1e-12
        )
    jac = torch.autograd.functional.jacobian(lambda t: op.forward(t[None])[0], x)
    assert float(torch.linalg.matrix_norm(jac.reshape(-1, n * n), ord=2)) == pytest.approx(
        float(counts.max()) ** 0.5
    )


def test_softmax_output_is_stripped_and_said() -> None:
    g = mlp()
    g2 = Graph(g.input_shape, [*g.nodes, Node("sm", Softmax(log=True), ("l3",))], dtype=D)
    a, b = lipschitz_bound(g), lipschitz_bound(g2)
    assert a.upper == b.upper and b.softmax_stripped == "sm" and b.logits == "l3"
    assert any("softmax" in note for note in b.notes)


def test_opaque_and_inner_softmax_are_refused_by_name() -> None:
    g = mlp()
    bad = Graph(
        g.input_shape,
        [
            g.nodes[0],
            Node("sign1", Opaque(source_op="Sign", fn=torch.sign), ("l1",)),
            Node("sm_mid", Softmax(), ("sign1",)),
            Node("l9", Linear(torch.randn(3, 16, dtype=D), None), ("sm_mid",)),
        ],
        dtype=D,
    )
    with pytest.raises(UnsupportedModelError, match="sign1") as info:
        lipschitz_bound(bad)
    assert "sm_mid" in str(info.value) and info.value.exit_code == 3


def test_nan_weights_are_refused() -> None:
    w = torch.randn(3, 4, dtype=D)
    w[1, 2] = float("nan")
    g = Graph((4,), [Node("l", Linear(w, None), (INPUT,))], dtype=D)
    with pytest.raises(InputError, match="l.weight"):
        lipschitz_bound(g)


def test_normalisation_is_part_of_the_certified_function() -> None:
    """(x - mean) / std in front multiplies the bound by 1 / min(std) for a per-channel std."""
    torch.manual_seed(0)
    g = NETS["cnn"]
    base = lipschitz_bound(g)
    lb = lipschitz_bound(g, mean=[0.5, 0.4], std=[0.25, 0.5])
    assert lb.folded.nodes[0].name == "input_normalisation" or any(
        n.name == "input_normalisation" for n in lb.folded.nodes
    )
    assert lb.upper <= base.upper / 0.25 * (1 + 1e-9)
    assert lb.upper >= ascent_jacobian_norm(lb.folded, 8, 5)
    with pytest.raises(UsageError, match="channels"):
        lipschitz_bound(g, mean=[0.1, 0.2, 0.3], std=[1.0])
    with pytest.raises(UsageError, match="positive"):
        lipschitz_bound(g, mean=[0.1], std=[0.0])
