"""Margin-aware certificate: exact on affine networks (conv, BN, flatten, linear; no activation)."""

from __future__ import annotations

import numpy as np
import torch
from certify_nets import D, mlp
from hypothesis import given, settings
from hypothesis import strategies as st

from speccert.bounds import certify
from speccert.bounds.certificates.margin_aware import pair_norms
from speccert.bounds.certify_result import CertifyReport
from speccert.bounds.linear_tail import affine_chain, chain_rows, tail_rows
from speccert.ir import INPUT, Activation, BatchNorm, Conv, GlobalAvgPool, Graph, Linear, Node, Reshape
from speccert.ir.passes import fold_linear


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
    rep = assert_exact_margin_radii(g, x)
    assert np.all(rep.radius >= rep.radii["margin"])


def assert_exact_margin_radii(g: Graph, x: torch.Tensor) -> CertifyReport:
    """The margin-aware radii of the affine network `g` at `x` are its exact boundary distances: never
    above them, within 1e-6 of them. Returns certify's report."""
    with torch.no_grad():
        y = g.forward(x).argmax(1)
    rep = certify(g, (x, y), eps=[0.1], lower_bound=False)
    want = exact_distance(g, x, y)
    got = rep.radii["margin"]
    assert np.all(got <= want), "a certified radius exceeds the exact distance to the boundary"
    np.testing.assert_allclose(got, want, rtol=1e-6)
    return rep


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


def gap_net(seed: int, c: int, n: int, hidden: int, classes: int, front: bool = False) -> Graph:
    """[conv -> ReLU ->] global average pool -> flatten -> Linear -> Linear: a tail that the margin-aware
    certificate keeps factored behind the pool (speccert.bounds.linear_tail); without `front` the whole
    network is affine (the pool reads the input)."""
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, dtype=D)

    nodes, last = [], INPUT
    if front:
        conv = Conv(rnd(c, c, 3, 3) / 3, rnd(c) * 0.1, (1, 1), ((1, 1), (1, 1)), (1, 1))
        nodes = [Node("conv", conv, (INPUT,)), Node("relu", Activation("relu"), ("conv",))]
        last = "relu"
    nodes += [
        Node("gap", GlobalAvgPool(), (last,)),
        Node("flat", Reshape((c,)), ("gap",)),
        Node("fc1", Linear(rnd(hidden, c), rnd(hidden)), ("flat",)),
        Node("fc2", Linear(rnd(classes, hidden) / hidden**0.5, rnd(classes)), ("fc1",)),
    ]
    return Graph((c, n, n), nodes, dtype=D)


@settings(max_examples=10, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    c=st.integers(1, 6),
    n=st.integers(1, 9),
    hidden=st.integers(2, 8),
    classes=st.integers(2, 6),
)
def test_pooled_tail_radius_is_the_exact_boundary_distance(
    seed: int, c: int, n: int, hidden: int, classes: int
) -> None:
    """Behind a global average pool the tail is kept factored (row norms / sqrt(P)): the radii of the
    affine network are still its exact boundary distances, never above them (a factor of P or of 1 in
    place of sqrt(P) breaks one side or the other)."""
    g = gap_net(seed, c, n, hidden, classes)
    assert tail_rows(fold_linear(g)).pixels == n * n
    assert_exact_margin_radii(
        g, torch.randn(30, c, n, n, generator=torch.Generator().manual_seed(seed + 1), dtype=D)
    )


def test_pooled_tail_is_factored_and_bounds_the_explicit_rows() -> None:
    """`tail_rows` leaves the pool out (rows of length c, not c * P); its pair norms are >= the distances
    of the explicit rows (formed through the pool in float64) and within 1e-12 of them; certify's radii
    hold against a PGD attack."""
    g = gap_net(5, 16, 7, 12, 10, front=True)
    folded = fold_linear(g)
    tail = tail_rows(folded)
    assert tail.start == "relu" and tail.pixels == 49 and tail.rows.shape == (10, 16)
    start, chain = affine_chain(folded, folded.output)
    explicit = chain_rows(chain, folded.shape_of(start), 10, absolute=False)
    assert explicit.shape == (10, 16 * 49)
    want = torch.cdist(explicit, explicit)
    got = pair_norms(tail)
    off = ~torch.eye(10, dtype=torch.bool)
    assert bool((got >= want).all())
    assert float((got[off] / want[off]).max()) < 1 + 1e-12
    x = torch.randn(100, 16, 7, 7, generator=torch.Generator().manual_seed(1), dtype=D)
    with torch.no_grad():
        y = g.forward(x).argmax(1)
    rep = certify(g, (x, y), eps=[0.1], lower_bound=False, audit=30)
    assert rep.audit is not None and rep.audit.successes == 0 and rep.audit.points > 0
