"""The one table of per-op rules (speccert.bounds.compose) and its three users: the certifier
(rounded-up floats), the rounding allowance's reverse pass and training (differentiable tensors)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from certify_nets import D

import speccert
from speccert.bounds import LipschitzBound
from speccert.bounds.compose import RULES, Rule, node_rule
from speccert.bounds.float_error import downstream_lipschitz
from speccert.bounds.lipschitz import lipschitz_bound, maxpool_factor
from speccert.errors import UnsupportedModelError, UsageError
from speccert.ir import ALL_OPS, INPUT, Concat, Graph, Linear, MaxPool, Node, Op, Opaque, Reshape
from speccert.ir import ops as ir_ops
from speccert.training.sigmas import compose_curvature, compose_lipschitz

ZOO = sorted((Path(__file__).resolve().parents[1] / "models").glob("*.onnx"))


def _op_types() -> set[type[Op]]:
    """Every Op subclass defined in speccert.ir (walked, not read from a hand-kept list; ops.py gathers
    the op modules by kind)."""
    found: set[type[Op]] = set()
    todo = [Op]
    while todo:
        cls = todo.pop()
        for sub in cls.__subclasses__():
            if sub.__module__.startswith(ir_ops.__name__.rsplit(".", 1)[0] + ".") and sub not in found:
                found.add(sub)
                todo.append(sub)
    return found


def test_every_ir_op_type_has_exactly_one_rule() -> None:
    types = _op_types()
    assert set(ALL_OPS) == types, "speccert.ir.ops.ALL_OPS is missing an op type"
    missing = sorted(t.op_type for t in types if t not in RULES)
    assert not missing, f"IR op types without a Lipschitz rule in speccert.bounds.compose: {missing}"
    for t in types:  # a linear rule only for ops that are affine (no factor-1 shortcut for the others)
        if RULES[t].__name__ == "_linear":
            assert t.linear, t.op_type


@dataclass(frozen=True, eq=False)
class Mystery(Op):
    """An op type the rules table has never heard of (a new IR op added without its rule)."""

    op_type: ClassVar[str] = "Mystery"

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return xs[0] * 2


def _mystery_graph() -> Graph:
    w = torch.eye(3, dtype=D)
    nodes = [Node("m", Mystery(), (INPUT,)), Node("l", Linear(w, None), ("m",))]
    return Graph((3,), nodes, dtype=D)


def test_an_op_without_a_rule_is_an_error_in_all_three_users() -> None:
    with pytest.raises(UnsupportedModelError, match="cannot bound"):
        node_rule(Mystery(), [(3,)], (3,), "m")
    with pytest.raises(UnsupportedModelError):
        node_rule(Opaque(source_op="Sign"), [(3,)], (3,), "s")
    g = _mystery_graph()
    lb = lipschitz_bound(Graph((3,), [Node("l", Linear(torch.eye(3, dtype=D), None), (INPUT,))], dtype=D))
    uppers = {"l": lb.layers[0].upper}
    # The rounding allowance's reverse pass used to give any unknown op a factor of 1 (unsound).
    with pytest.raises(UnsupportedModelError):
        downstream_lipschitz(g, uppers)
    with pytest.raises(UnsupportedModelError):
        compose_lipschitz(g, {"l": torch.ones((), dtype=D)})


def test_maxpool_factor_is_the_certifiers_in_training_too() -> None:
    """Dilated 2x2 pool, d=3: a pixel is in at most 2 x 2 windows, factor 2 (training used to say 4)."""
    op = MaxPool((2, 2), (1, 1), ((0, 0), (0, 0)), (3, 3))
    w = torch.randn(2, 25, dtype=D)
    g = Graph(
        (1, 8, 8),
        [Node("p", op, (INPUT,)), Node("r", Reshape((25,)), ("p",)), Node("l", Linear(w), ("r",))],
        dtype=D,
    )
    rule = node_rule(op, [(1, 8, 8)], (1, 5, 5))
    assert rule == Rule("scale", maxpool_factor(op, (1, 8, 8), (1, 5, 5)), None)
    assert 2.0 <= rule.slope <= 2.0 * (1 + 1e-15)
    one = torch.ones((), dtype=D)
    assert float(compose_lipschitz(g, {"r": one, "l": one})) == rule.slope


@pytest.fixture(scope="module", params=ZOO, ids=[p.stem for p in ZOO])
def zoo_bound(request: pytest.FixtureRequest) -> LipschitzBound:
    # The cheap sound method: agreement of the compositions does not depend on how the norms were bounded.
    return lipschitz_bound(speccert.load(request.param), method="fft")


def test_the_three_users_agree_on_the_zoo(zoo_bound: LipschitzBound) -> None:
    lb = zoo_bound
    folded = lb.folded
    uppers = {n.name: n.upper for n in lb.layers}
    sig = {name: torch.tensor(u.value, dtype=torch.float64) for name, u in uppers.items()}
    # Training's differentiable composition of the certifier's own norms: the same number, without the
    # upward roundings (so at most a few ulps per node below).
    trained = float(compose_lipschitz(folded, sig))
    assert trained <= lb.upper <= trained * (1 + 1e-12)
    # The reverse pass (rounding allowance): D_input is the same product of local factors, summed over
    # the same paths (Concat counted as a sum, so never below), with 8u per product.
    d_in = downstream_lipschitz(folded, uppers)[INPUT]
    assert lb.upper * (1 - 1e-12) <= d_in
    if not any(isinstance(n.op, Concat) for n in folded.nodes):
        assert d_in <= lb.upper * (1 + 1e-12)
    # Curvature: the certifier's H and training's K are the same composition.
    if lb.curvature is not None:
        lip, k = compose_curvature(folded, sig)
        h = lb.curvature[folded.output]
        assert float(lip) <= lb.upper and float(k) <= h <= float(k) * (1 + 1e-12)
    else:
        with pytest.raises(UsageError, match="smooth"):
            compose_curvature(folded, sig)


def test_rounded_up_hypot_is_above_the_exact_root_sum_of_squares() -> None:
    """Many tiny squares beside a large one: a plain float sum drops every tiny term, so one final
    round_up is not enough; the certifier's Concat rule must stay above the exact value."""
    from fractions import Fraction

    from speccert.bounds.compose import RoundedUp

    cases = [[1.0] + [2.0**-27] * 1000, [3.0, 4.0], [0.1, 0.2, 0.3, 0.4, 0.5, 1e-9, 7.0]]
    for xs in cases:
        h = RoundedUp().hypot(xs)
        assert Fraction(h) ** 2 >= sum(Fraction(v) ** 2 for v in xs), xs
    assert RoundedUp().hypot([3.0, 4.0]) <= 5.0 * (1 + 1e-14)  # still tight
