"""The float32 pass of certify is sound: its proven error bound covers every observed float32 error, and
points whose float32 margin is positive while their exact margin is negative are never certified."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import torch
from certify_nets import all_nets
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from speccert.bounds import certify
from speccert.bounds.fast_pass import settled
from speccert.bounds.float32_error import UNIT32, Float32ErrorModel
from speccert.bounds.float_error import ErrorModel
from speccert.bounds.lipschitz import LipschitzBound, lipschitz_bound
from speccert.ir import INPUT, Graph, Linear, Node, Standardize

D = torch.float64
CPU = torch.device("cpu")
NETS = all_nets()


def _uppers(bound: LipschitzBound) -> dict:
    return {n.name: n.upper for n in bound.layers}


def _pair_errors(bound: LipschitzBound, x32: torch.Tensor, input_rounded: bool = False) -> tuple:
    """(max over pairs i, j of |(f32_i - f32_j) - (f64_i - f64_j)| - float64 allowance, float32 allowance)."""
    g32 = bound.folded.to(CPU, torch.float32)
    with torch.no_grad():
        a32 = g32.activations(x32)
        a64 = bound.folded.activations(x32.double())
    e = a32[g32.output].double() - a64[bound.folded.output]
    pair = (e.amax(1) - e.amin(1)) - ErrorModel(bound.folded, _uppers(bound)).bound(a64)
    return pair, Float32ErrorModel(bound.folded, _uppers(bound), input_rounded).allowance(a32)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.sampled_from(sorted(NETS)),
    seed=st.integers(0, 2**31 - 1),
    log_scale=st.floats(-3.0, 4.0),
)
def test_proven_float32_error_covers_observed_errors(name: str, seed: int, log_scale: float) -> None:
    """Random small nets (MLP, CNN with BN/max-pool, residual, concat, smooth activations), inputs from
    1e-3 to 1e4: every observed float32 - float64 logit-pair error is within the proven bound."""
    torch.manual_seed(seed % 1000)
    g = NETS[name]
    bound = lipschitz_bound(g, "auto", CPU)
    x = (torch.randn((16, *g.input_shape), dtype=D) * 10.0**log_scale).float()
    observed, allowance = _pair_errors(bound, x)
    assert bool((observed <= allowance).all()), float((observed / allowance).max())


def test_the_check_would_catch_a_bound_too_small_by_orders_of_magnitude() -> None:
    """The check above has teeth: the same bound at float64's unit roundoff (2^29 smaller) is violated."""
    torch.manual_seed(0)
    bound = lipschitz_bound(NETS["mlp_relu"], "auto", CPU)
    x = (torch.randn((64, *bound.folded.input_shape), dtype=D) * 100).float()
    observed, allowance = _pair_errors(bound, x)
    assert bool((observed > allowance * 2.0**-29).any())
    assert float((observed / allowance).max()) > 1e-6  # the bound is loose, but not absurdly


def _sum_net(n: int) -> Graph:
    """f_0 = sum(x), f_1 = 0: margin of class 0 is the sum of the inputs (float32 cancellation)."""
    w = torch.zeros(2, n, dtype=D)
    w[0] = 1.0
    return Graph((n,), [Node("l", Linear(w, torch.zeros(2, dtype=D)), (INPUT,))], dtype=D)


def _cancelling_points(n: int, count: int, seed: int) -> np.ndarray:
    """float32 points whose entries are +-2^24..2^25 values that nearly cancel, plus small ones."""
    rng = np.random.default_rng(seed)
    big = rng.uniform(2.0**24, 2.0**25, size=(count, n // 2)).astype(np.float32)
    small = rng.uniform(-4, 4, size=(count, n // 2)).astype(np.float32)
    x = np.concatenate([big, -(big + small).astype(np.float32)], axis=1)
    return x + rng.uniform(-4, 4, size=x.shape).astype(np.float32) * (rng.random(x.shape) < 0.1)


def _exact_sums(x: np.ndarray) -> list[Fraction]:
    return [sum((Fraction(float(v)) for v in row), Fraction(0)) for row in x]


def test_float32_positive_exact_negative_margins_are_never_certified() -> None:
    """Constructed points: the float32 pass gives class 0 a positive margin, the exact margin (rational
    arithmetic) is negative. certify, even at a 50% tolerance, reports them misclassified, radius 0."""
    n = 64
    g = _sum_net(n)
    x = _cancelling_points(n, 4000, seed=1)
    with torch.no_grad():
        m32 = g.to(CPU, torch.float32).forward(torch.from_numpy(x))[:, 0].double().numpy()
    exact = _exact_sums(x)
    bad = np.array([m32[i] > 0 and exact[i] < 0 for i in range(len(x))])
    assert bad.sum() >= 5, "the construction should yield float32-positive, exactly-negative margins"
    xb, y = x[bad], torch.zeros(int(bad.sum()), dtype=torch.long)
    with torch.no_grad():
        assert bool((g.to(CPU, torch.float32).forward(torch.from_numpy(xb))[:, 0] > 0).all())
    for tol in (1e-6, 0.5):
        rep = certify(g, (xb, y), eps=[1e-9], lower_bound=False, float32_tolerance=tol)
        assert not rep.correct.any() and (rep.radius == 0).all()
        assert rep.certified_accuracies == [0.0]


def test_rounding_the_input_to_float32_is_accounted_for() -> None:
    """float64 data whose float32 rounding flips the sign of the margin, whatever order the kernel sums in.

    Three entries 1 - 2^-25 + 2^-50 round up to 1, three entries -1 - 2^-24 + 2^-50 round up to -1, and
    2^-22 is exact: every partial sum of the rounded entries, in any order or blocking, is an integer in
    [-3, 3] plus 0 or 2^-22, all exact in float32, so the float32 margin is 2^-22 > 0 on every CPU; the
    exact margin is -2^-25 + 6 * 2^-50 < 0. The bound (its input term included) must exceed the former."""
    g = _sum_net(7)
    row = [1 - 2.0**-25 + 2.0**-50] * 3 + [-1 - 2.0**-24 + 2.0**-50] * 3 + [2.0**-22]
    x = np.array([row] * 4)
    assert sum(Fraction(v) for v in row) < 0
    y = torch.zeros(4, dtype=torch.long)
    with torch.no_grad():
        assert float(g.to(CPU, torch.float32).forward(torch.from_numpy(x).float())[0, 0]) == 2.0**-22
    bound = lipschitz_bound(g, "auto", CPU)
    a32 = bound.folded.to(CPU, torch.float32).activations(torch.from_numpy(x).float())
    m32 = float(a32[bound.folded.output][0, 0])
    with_input = Float32ErrorModel(bound.folded, _uppers(bound), input_rounded=True).allowance(a32)
    without = Float32ErrorModel(bound.folded, _uppers(bound), input_rounded=False).allowance(a32)
    assert m32 - float(with_input[0]) < 0 and float(with_input[0]) > float(without[0])
    rep = certify(g, (x, y), eps=[1e-12], lower_bound=False, float32_tolerance=0.5)
    assert not rep.correct.any() and (rep.radius == 0).all()


def test_settled_points() -> None:
    """Decided and misclassified, or margin within tolerance: settled; a near tie never is."""
    logits = torch.tensor([[5.0, 0.0], [0.0, 5.0], [1.0, 0.999], [10.0, 0.0]], dtype=D)
    y = torch.zeros(4, dtype=torch.long)
    a = torch.tensor([1e-3, 1e-3, 1e-3, 1e-3], dtype=D)
    assert settled(logits, y, a, 1e-3).tolist() == [True, True, False, True]
    assert settled(logits, y, a, 1e-6).tolist() == [False, True, False, False]
    assert not settled(logits, y, torch.full((4,), math.inf, dtype=D), 0.5).any()


def test_radii_within_the_tolerance_of_the_float64_pass() -> None:
    """Default (1e-6): radii as the float64 pass gives them to 1e-6. A 10% tolerance: some points are
    settled in float32, and none loses more than 10% of its float64 radius."""
    torch.manual_seed(3)
    g = NETS["mlp_relu"]
    x = (torch.randn((300, *g.input_shape), dtype=D) * 3).float()
    with torch.no_grad():
        y = g.forward(x.double()).argmax(1)
    y[::9] = (y[::9] + 1) % int(g.forward(x[:1].double()).shape[1])
    slow = certify(g, (x, y), eps=[0.1], lower_bound=False, float32_tolerance=0.0)
    assert slow.to_dict()["timing"]["float64_share"] == 1.0
    for tol in (1e-6, 0.1):
        fast = certify(g, (x, y), eps=[0.1], lower_bound=False, float32_tolerance=tol)
        np.testing.assert_array_equal(fast.correct, slow.correct)
        assert (fast.radius >= slow.radius * (1 - tol) - 1e-300).all()
    assert fast.to_dict()["timing"]["float64_share"] < 1.0


def test_graphs_without_a_float32_rule_stay_in_float64() -> None:
    g = Graph(
        (6,),
        [
            Node("s", Standardize(1, 1e-5), (INPUT,)),
            Node("l", Linear(torch.randn(3, 6, dtype=D), None), ("s",)),
        ],
        dtype=D,
    )
    x = torch.randn(20, 6).float()
    rep = certify(
        g, (x, torch.zeros(20, dtype=torch.long)), eps=[0.1], lower_bound=False, float32_tolerance=0.5
    )
    assert any("float32 pass not used" in n and "Standardize" in n for n in rep.notes)
    assert rep.to_dict()["timing"]["float64_share"] == 1.0
    assert UNIT32 == 2.0**-24
