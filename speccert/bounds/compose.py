"""The one table of per-op Lipschitz rules, and the one composition over the DAG that uses it.

Every IR op type (speccert.ir.ops.ALL_OPS) has exactly one entry in `RULES`; `node_rule(op, in_shapes,
out_shape)` returns it as a `Rule`. For a node v with inputs u (L = Lipschitz bound, H = Lipschitz bound
of the derivative, so ||D^2 v(x)[h, h]|| <= H_v ||h||^2):

    linear  (A x + c; its norm ||A||_2 from the caller):  L_v = ||A|| L_u        H_v = ||A|| H_u
    scale   (activation sigma: slope a = sup|sigma'|, curvature k = sup|sigma''|, None where sigma' jumps;
             MaxPool: a = sqrt(prod_i c_i), not smooth):  L_v = a L_u            H_v = a H_u + k L_u^2
    sum     (Add):                                         L_v = L_a + L_b        H_v = H_a + H_b
    hypot   (Concat):                                      L_v = sqrt(sum L_i^2)  H_v = sqrt(sum H_i^2)
    output  (Softmax, only as the graph's output: certificates are on the logits): L_v = L_u, H_v = H_u
    Slice (a coordinate selection): scale with a = 1, k = 0 (it is linear and 1-Lipschitz)
    L2Pool (the L2 norm of each window, LPPool p = 2): scale with a = l2pool_factor (1 for
             non-overlapping full windows; see speccert.ir.ops.L2Pool), k = None
    Householder (a reflection of each channel pair chosen by the input): scale with a = 1, k = None
             (continuous, piecewise orthogonal; see speccert.ir.ops.Householder)
    Center (x - mean over axes, an orthogonal projection): scale with a = 1, k = 0 (see ir.ops.Center)
    Standardize (LayerNorm / GroupNorm without affine): scale with a = 1/sqrt(eps) (the sup of its
             Jacobian norm, see speccert.ir.ops.Standardize), k = None (no curvature derived)
    Sort (GroupSort / FullSort / MaxMin): scale with a = 1, k = None (a permutation of each group that
             depends on the input: 1-Lipschitz, not smooth; see speccert.ir.ops.Sort)
    Extremum (elementwise max/min of two tensors): hypot, like Concat (see speccert.ir.ops.Extremum);
             not smooth
    PRelu (a slope per channel): scale with a = max(1, max|slope|), k = None
    Opaque: no rule (UnsupportedModelError naming the node). A type missing from RULES is an error too,
    never a silent factor of 1.

MaxPool: c_i bounds how many pooling windows contain one input pixel along axis i; a max-pool's Jacobian
(where it exists) picks one input per output, so ||J||_2^2 is the largest number of windows that pick the
same pixel <= prod c_i, with c_i = min(k_i, ceil((d_i (k_i - 1) + 1) / s_i), n_out_i).

`compose(graph, norm_of, arithmetic)` runs the rules forward (L, and H when asked) and `downstream(graph,
norm_of, arithmetic)` runs them backward (D_v, the Lipschitz bound of node v -> output, summed over
paths; each input of a node is reached through the node's local factor: its norm, its slope, 1 for
Add / Concat / Softmax). The arithmetic decides what a number is: rounded-up float64 for the certifier
(`RoundedUp`), a relative-margin float for the rounding allowance (speccert.bounds.float_error),
differentiable torch tensors for training (speccert.training.sigmas).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, Literal, Protocol, TypeVar

from speccert.errors import InternalError, UnsupportedModelError
from speccert.ir import ALL_OPS, INPUT, Graph, Node
from speccert.ir import ops as O
from speccert.ir.activations import activation_curvature, activation_lipschitz
from speccert.norms.result import round_up

T = TypeVar("T")
Shape = tuple[int, ...]
RuleKind = Literal["linear", "scale", "sum", "hypot", "output"]


@dataclass(frozen=True)
class Rule:
    """How one node's bounds follow from its inputs' (module docstring). slope/curvature: kind "scale"."""

    kind: RuleKind
    slope: float = 1.0
    curvature: float | None = 0.0

    @property
    def smooth(self) -> bool:
        return self.curvature is not None


LINEAR = Rule("linear")


def maxpool_factor(op: O.MaxPool, in_shape: Shape, out_shape: Shape) -> float:
    """sqrt(prod_i c_i), c_i the most windows along spatial axis i that contain one input pixel.

    Pixel p lies in window j iff p - (j s - pad) is one of the k taps 0, d, ..., d (k-1): at most k
    windows (one per tap), at most ceil((d (k-1) + 1) / s) (the window starts within a span of
    d (k-1) + 1 positions, spaced s apart), at most the number of windows n_out. Rounded up.
    """
    counts = []
    for k, s, d, n_out in zip(op.kernel, op.stride, op.dilation, out_shape[1:], strict=True):
        counts.append(min(k, -(-(d * (k - 1) + 1) // s), n_out))
    del in_shape
    return round_up(math.sqrt(math.prod(counts)))


def standardize_factor(op: O.Standardize) -> float:
    """1/sqrt(eps) rounded up: the Lipschitz constant of a Standardize node (see ir.ops.Standardize)."""
    if not (op.eps > 0 and math.isfinite(op.eps)):
        raise NoRule(f"LayerNorm/GroupNorm with eps={op.eps} has no Lipschitz bound (eps must be > 0)")
    return round_up(1.0 / math.sqrt(op.eps), 4)


def l2pool_factor(op: O.L2Pool, in_shape: Shape, out_shape: Shape) -> float:
    """sqrt(multiplier * prod_i c_i / prod_i m_i), rounded up: the Lipschitz bound of an L2Pool node
    (proof in speccert.ir.ops.L2Pool). c_i: the most windows along axis i holding one entry,
    min(k_i, ceil(k_i / s_i), n_out_i); m_i: the smallest window extent along axis i, k_i or the last
    window's min(k_i, n_in_i - (n_out_i - 1) s_i) when ceil_mode lets it run past the border."""
    m = op.multiplier
    if not (m > 0 and math.isfinite(m)):
        raise NoRule(f"L2 pool with multiplier {m} has no Lipschitz bound")
    counts, extents = [], []
    for k, s, n_in, n_out in zip(op.kernel, op.stride, in_shape[1:], out_shape[1:], strict=True):
        counts.append(min(k, -(-k // s), n_out))
        extents.append(min(k, n_in - (n_out - 1) * s))
    if min(extents) < 1:
        raise NoRule("L2 pool with a window outside the input")
    return round_up(math.sqrt(m * math.prod(counts) / math.prod(extents)), 8)


def _l2pool(op: O.Op, in_shapes: Sequence[Shape], out_shape: Shape) -> Rule:
    assert isinstance(op, O.L2Pool)
    return Rule("scale", l2pool_factor(op, in_shapes[0], out_shape), None)


def _standardize(op: O.Op, in_shapes: Sequence[Shape], out_shape: Shape) -> Rule:
    assert isinstance(op, O.Standardize)
    return Rule("scale", standardize_factor(op), None)


def _selection(op: O.Op, in_shapes: Sequence[Shape], out_shape: Shape) -> Rule:
    return Rule("scale", 1.0, 0.0)


def _sort(op: O.Op, in_shapes: Sequence[Shape], out_shape: Shape) -> Rule:
    return Rule("scale", 1.0, None)


def _prelu(op: O.Op, in_shapes: Sequence[Shape], out_shape: Shape) -> Rule:
    assert isinstance(op, O.PRelu)
    return Rule("scale", max(1.0, float(op.slope.detach().abs().max())), None)


def _extremum(op: O.Op, in_shapes: Sequence[Shape], out_shape: Shape) -> Rule:
    return Rule("hypot", curvature=None)


def _linear(op: O.Op, in_shapes: Sequence[Shape], out_shape: Shape) -> Rule:
    return LINEAR


def _activation(op: O.Op, in_shapes: Sequence[Shape], out_shape: Shape) -> Rule:
    assert isinstance(op, O.Activation)
    return Rule("scale", activation_lipschitz(op.fn, op.alpha), activation_curvature(op.fn, op.alpha))


def _maxpool(op: O.Op, in_shapes: Sequence[Shape], out_shape: Shape) -> Rule:
    assert isinstance(op, O.MaxPool)
    return Rule("scale", maxpool_factor(op, in_shapes[0], out_shape), None)


def _sum(op: O.Op, in_shapes: Sequence[Shape], out_shape: Shape) -> Rule:
    return Rule("sum")


def _hypot(op: O.Op, in_shapes: Sequence[Shape], out_shape: Shape) -> Rule:
    return Rule("hypot")


def _output(op: O.Op, in_shapes: Sequence[Shape], out_shape: Shape) -> Rule:
    return Rule("output")


class NoRule(Exception):
    """Raised by a rule for an op that has no Lipschitz bound; `node_rule` names the node."""


def _opaque(op: O.Op, in_shapes: Sequence[Shape], out_shape: Shape) -> Rule:
    raise NoRule(getattr(op, "reason", "no Lipschitz bound"))


RuleFn = Callable[[O.Op, Sequence[Shape], Shape], Rule]
RULES: dict[type[O.Op], RuleFn] = {
    O.Linear: _linear,
    O.Conv: _linear,
    O.ConvTranspose: _linear,
    O.BatchNorm: _linear,
    O.Affine: _linear,
    O.AvgPool: _linear,
    O.GlobalAvgPool: _linear,
    O.Pad: _linear,
    O.Reshape: _linear,
    O.Transpose: _linear,
    O.Activation: _activation,
    O.MaxPool: _maxpool,
    O.Add: _sum,
    O.Concat: _hypot,
    O.Softmax: _output,
    O.Slice: _selection,
    O.Standardize: _standardize,
    O.Sort: _sort,
    O.Extremum: _extremum,
    O.PRelu: _prelu,
    O.Center: _selection,
    O.L2Pool: _l2pool,
    O.Householder: _sort,
    O.Opaque: _opaque,
}
assert set(RULES) == set(ALL_OPS), "every IR op type needs exactly one rule"


def node_rule(op: O.Op, in_shapes: Sequence[Shape], out_shape: Shape, name: str = "?") -> Rule:
    """The rule of one op (module docstring); UnsupportedModelError for an op without one."""
    fn = RULES.get(type(op))
    if fn is None:
        raise UnsupportedModelError(
            "cannot bound this model", [(op.op_type, name, "no Lipschitz rule for this operator type")]
        )
    try:
        rule = fn(op, in_shapes, out_shape)
    except NoRule as why:
        raise UnsupportedModelError(
            "cannot bound this model", [(getattr(op, "source_op", op.op_type), name, str(why))]
        ) from None
    if rule.kind == "linear" and not type(op).linear:
        raise InternalError(f"{op.op_type} has a linear rule but is not a linear op")
    return rule


def graph_rule(graph: Graph, node: Node) -> Rule:
    """`node_rule` with the node's shapes read from the graph; Softmax only as the output."""
    rule = node_rule(node.op, [graph.shape_of(i) for i in node.inputs], node.shape, node.name)
    if rule.kind == "output" and node.name != graph.output:
        raise UnsupportedModelError(
            "cannot bound this model",
            [(node.op_type, node.name, "softmax is only supported as the model's output")],
        )
    return rule


class Arithmetic(Protocol[T]):
    """The numbers a composition runs in. `mul(factor, value)`; `factor` may be a plain float."""

    def const(self, x: float) -> T: ...
    def mul(self, factor: T | float, value: T) -> T: ...
    def add(self, a: T, b: T) -> T: ...
    def square(self, a: T) -> T: ...
    def hypot(self, xs: Sequence[T]) -> T: ...


class RoundedUp:
    """float64 with every operation rounded upward: each result is a proven upper bound."""

    def const(self, x: float) -> float:
        return x

    def mul(self, factor: float, value: float) -> float:
        return round_up(factor * value)

    def add(self, a: float, b: float) -> float:
        return round_up(a + b)

    def square(self, a: float) -> float:
        return round_up(a * a)

    def hypot(self, xs: Sequence[float]) -> float:
        # Each partial sum rounded up (one rounding per addition; a plain sum() of 3+ squares could end
        # below the exact sum by more than the one final round_up covers). Two inputs: as before.
        squares = [round_up(v * v) for v in xs]
        total = squares[0] if squares else 0.0
        for sq in squares[1:]:
            total = round_up(total + sq)
        return round_up(math.sqrt(total))


@dataclass(frozen=True)
class Composed(Generic[T]):
    """Forward bounds per node (key INPUT included). curvature: H per node, None when not asked or when
    `rough` (the first node that is not smooth) stopped it."""

    lipschitz: dict[str, T]
    curvature: dict[str, T] | None
    rough: Node | None = None


def compose(
    graph: Graph,
    norm_of: Callable[[Node], T | None],
    arithmetic: Arithmetic[T],
    *,
    curvature: bool = False,
    slopes: bool = True,
    upto: str | None = None,
) -> Composed[T]:
    """L_v (and H_v with curvature=True) for every node of `graph`, in topological order.

    norm_of(node), asked for linear nodes only: the norm bound of its linear part, or None where the
    node passes its input's bounds on unchanged (training: a node inside a segment whose norm is
    carried by the segment's last node).

    slopes=False gives every "scale" rule the factor 1 (the weight-scale-invariant form used by a
    training penalty; never by a certificate). `upto` stops after that node.
    """
    ar = arithmetic
    lip: dict[str, T] = {INPUT: ar.const(1.0)}
    curv: dict[str, T] | None = {INPUT: ar.const(0.0)} if curvature else None
    rough: Node | None = None
    for node in graph.nodes:
        rule = graph_rule(graph, node)
        ins = node.inputs
        if curv is not None and not rule.smooth:
            curv, rough = None, node
        if rule.kind == "linear":
            norm = norm_of(node)
            if norm is None:
                lip[node.name] = lip[ins[0]]
                if curv is not None:
                    curv[node.name] = curv[ins[0]]
            else:
                lip[node.name] = ar.mul(norm, lip[ins[0]])
                if curv is not None:
                    curv[node.name] = ar.mul(norm, curv[ins[0]])
        elif rule.kind == "scale":
            a = rule.slope if slopes else 1.0
            lip[node.name] = ar.mul(a, lip[ins[0]])
            if curv is not None:
                k = rule.curvature
                assert k is not None
                curv[node.name] = ar.add(ar.mul(k, ar.square(lip[ins[0]])), ar.mul(a, curv[ins[0]]))
        elif rule.kind == "sum":
            lip[node.name] = ar.add(lip[ins[0]], lip[ins[1]])
            if curv is not None:
                curv[node.name] = ar.add(curv[ins[0]], curv[ins[1]])
        elif rule.kind == "hypot":
            lip[node.name] = ar.hypot([lip[i] for i in ins])
            if curv is not None:
                curv[node.name] = ar.hypot([curv[i] for i in ins])
        else:  # "output"
            lip[node.name] = lip[ins[0]]
            if curv is not None:
                curv[node.name] = curv[ins[0]]
        if node.name == upto:
            break
    return Composed(lip, curv, rough)


def local_factor(rule: Rule, norm: T | float | None) -> T | float:
    """How much one input's perturbation can grow through the node (the reverse pass's edge weight)."""
    if rule.kind == "linear":
        return 1.0 if norm is None else norm
    if rule.kind == "scale":
        return rule.slope
    return 1.0  # sum, hypot, output: each input enters with norm 1


def downstream(graph: Graph, norm_of: Callable[[Node], T | None], arithmetic: Arithmetic[T]) -> dict[str, T]:
    """D_v >= Lipschitz constant of (value of node v) -> graph output, summed over every path:
    D_out = 1, D_u = sum over consumers c of D_c * local_factor(c). Nodes that do not reach the
    output keep D = 0 (their rules are not even looked up)."""
    ar = arithmetic
    zero = ar.const(0.0)
    d: dict[str, T] = {n.name: zero for n in graph.nodes}
    d[INPUT] = zero
    d[graph.output] = ar.const(1.0)
    for node in reversed(graph.nodes):
        if d[node.name] == zero:
            continue
        rule = graph_rule(graph, node)
        lam = local_factor(rule, norm_of(node) if rule.kind == "linear" else None)
        for i in node.inputs:
            d[i] = ar.add(d[i], ar.mul(lam, d[node.name]))
    return d


def upper_norms(uppers: Mapping[str, float]) -> Callable[[Node], float]:
    """norm_of for the certifier: the proven norm bound of every linear node, checked."""

    def norm_of(node: Node) -> float:
        if node.name not in uppers:
            raise InternalError(f"no norm bound for linear node '{node.name}' ({node.op_type})")
        value = uppers[node.name]
        if not math.isfinite(value) or value < 0:
            raise InternalError(f"norm bound of '{node.name}' is {value}")
        return value

    return norm_of
