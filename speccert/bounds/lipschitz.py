"""Global L2 Lipschitz bound of a graph's logits, composed over the DAG from per-layer upper bounds.

For every node v of `fold_linear(graph)` we bound L_v, the L2 Lipschitz constant of x -> v(x):

    linear node (A x + c):  L_v = ||A||_2 * L_in          (||A||_2 <= the layer's UpperBound)
    activation sigma:       L_v = sup|sigma'| * L_in       (speccert.ir.activations, rounded up)
    MaxPool:                L_v = sqrt(c_1 * ... * c_d) * L_in,  c_i = min(k_i, ceil((d_i (k_i-1)+1) / s_i), n_out_i)
    Add:                    L_v = L_a + L_b
    Concat:                 L_v = sqrt(L_a^2 + L_b^2 + ...)

c_i bounds how many pooling windows contain one input pixel along axis i; a max-pool's Jacobian (where it
exists) picks one input per output, so ||J||_2^2 is the largest number of windows that pick the same
pixel <= prod c_i. For dilation 1, c_i = ceil(min(k, n + 2p - k + 1) / s) (DESIGN.md's formula).

For networks whose activations are all smooth, `curvature_bounds` also bounds H_v, the Lipschitz constant
of the derivative Dv (so ||D^2 v(x)[h, h]|| <= H_v ||h||^2):

    linear:      H_v = ||A|| H_in
    activation:  H_v = sup|sigma''| L_in^2 + sup|sigma'| H_in     (|sigma''(u) (Du h)^2|_2 <= K ||Du h||_2^2)
    Add:         H_a + H_b;    Concat: sqrt(sum H^2)

Every float64 operation is followed by an upward rounding, so each value is a proven upper bound.
Only `UpperBound` results reach the composition (mypy enforces the parameter type).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch

from speccert.errors import InternalError, UnsupportedModelError, UsageError
from speccert.ir import INPUT, Activation, Add, Affine, Concat, Graph, MaxPool, Node, Softmax, fold_linear
from speccert.ir.activations import activation_curvature, activation_lipschitz
from speccert.norms import LayerNorm, UpperBound, layer_norms
from speccert.norms.result import round_up

NORMALISATION_NODE = "input_normalisation"


@dataclass(frozen=True)
class LipschitzBound:
    """A proven upper bound on the L2 Lipschitz constant of the logits, with what it was built from.

    upper: sup ||f(x) - f(x')|| / ||x - x'|| <= upper (f = the logits, input in the user's data space).
    node_upper: the same bound for every node of `folded` (key INPUT = 1.0).
    curvature: H_v per node when every activation is smooth, else None (see module docstring).
    lower: a lower bound on the same constant when one was measured (speccert.bounds.empirical).
    """

    upper: float
    layers: tuple[LayerNorm, ...]
    folded: Graph
    node_upper: dict[str, float]
    curvature: dict[str, float] | None = None
    softmax_stripped: str | None = None
    lower: float | None = None
    notes: tuple[str, ...] = field(default=())

    @property
    def logits(self) -> str:
        return self.folded.output

    @property
    def ratio(self) -> float | None:
        """upper / lower (>= 1; how loose the bound can at most be), None without a lower bound."""
        if self.lower is None or self.lower <= 0:
            return None
        return self.upper / self.lower


def _mul(a: float, b: float) -> float:
    return round_up(a * b)


def _add(a: float, b: float) -> float:
    return round_up(a + b)


def maxpool_factor(op: MaxPool, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> float:
    """sqrt(prod_i c_i), c_i the most windows along spatial axis i that contain one input pixel.

    Pixel p lies in window j iff p - (j s - pad) is one of the k taps 0, d, ..., d (k-1): at most k
    windows (one per tap), at most ceil((d (k-1) + 1) / s) (the window starts within a span of
    d (k-1) + 1 positions, spaced s apart), at most the number of windows n_out.
    """
    counts = []
    for k, s, d, n_out in zip(op.kernel, op.stride, op.dilation, out_shape[1:], strict=True):
        counts.append(min(k, -(-(d * (k - 1) + 1) // s), n_out))
    del in_shape
    return round_up(math.sqrt(math.prod(counts)))


def with_input_normalisation(graph: Graph, mean: list[float] | None, std: list[float] | None) -> Graph:
    """Prepend x -> (x - mean) / std as an Affine node: part of the certified function, so radii are in
    the user's (un-normalised) data space. mean/std: one value, or one per channel (axis 0 of the input)."""
    if mean is None and std is None:
        return graph
    shape = graph.input_shape
    mean_v = list(mean) if mean is not None else [0.0]
    std_v = list(std) if std is not None else [1.0]
    if any(not math.isfinite(s) or s <= 0 for s in std_v):
        raise UsageError(f"--std values must be positive and finite, got {std_v}")
    if any(not math.isfinite(m) for m in mean_v):
        raise UsageError(f"--mean values must be finite, got {mean_v}")
    n = max(len(mean_v), len(std_v))
    for name, vals in (("--mean", mean_v), ("--std", std_v)):
        if len(vals) not in (1, n):
            raise UsageError(f"{name} has {len(vals)} values; --mean and --std need 1 or the same count")
    if n > 1 and (len(shape) < 2 or shape[0] != n):
        raise UsageError(
            f"{n} per-channel --mean/--std values, but the model's input shape {list(shape)} "
            f"does not have {n} channels on its first axis"
        )
    view = (n,) + (1,) * (len(shape) - 1) if n > 1 else (1,) * len(shape)
    m = torch.tensor(mean_v if len(mean_v) == n else mean_v * n, dtype=torch.float64).reshape(view)
    s = torch.tensor(std_v if len(std_v) == n else std_v * n, dtype=torch.float64).reshape(view)
    op = Affine(scale=1.0 / s, shift=-m / s)  # float64: 1/std rounded to float32 is another model
    name = NORMALISATION_NODE
    while any(nd.name == name for nd in graph.nodes):
        name += "_"
    nodes = [Node(name, op, (INPUT,), shape)]
    for nd in graph.nodes:
        nodes.append(Node(nd.name, nd.op, tuple(name if i == INPUT else i for i in nd.inputs), nd.shape))
    return Graph(shape, nodes, graph.output, graph.source, graph.dtype)


def check_certifiable(graph: Graph) -> None:
    """Raise UnsupportedModelError naming every node without a Lipschitz bound (all at once)."""
    bad = graph.unsupported()
    if bad:
        problems = []
        for n in bad:
            why = getattr(n.op, "reason", "no Lipschitz bound")
            if isinstance(n.op, Softmax):
                why = "softmax is only supported as the model's output"
            problems.append((getattr(n.op, "source_op", n.op_type), n.name, why))
        raise UnsupportedModelError("cannot certify this model", problems)
    graph.check_finite()


def logits_graph(graph: Graph) -> tuple[Graph, str | None]:
    """The graph without a final Softmax/LogSoftmax (argmax and margins are those of the logits).

    Returns (graph, name of the removed node or None)."""
    if graph.output == INPUT:
        raise UsageError("the model has no operators")
    out = graph.node(graph.output)
    if not isinstance(out.op, Softmax):
        return graph, None
    logits = out.inputs[0]
    if logits == INPUT:
        raise UsageError("the model is a bare softmax of its input")
    nodes = [n for n in graph.nodes if n is not out]
    return graph.replace_nodes(nodes, output=logits), out.name


def compose(folded: Graph, uppers: Mapping[str, UpperBound]) -> dict[str, float]:
    """L_v for every node of `folded` (see module docstring); `uppers` keyed by linear node name."""
    lip: dict[str, float] = {INPUT: 1.0}
    for node in folded.nodes:
        ins = [lip[i] for i in node.inputs]
        op = node.op
        if type(op).linear:
            if node.name not in uppers:
                raise InternalError(f"no norm bound for linear node '{node.name}' ({op.op_type})")
            ub = uppers[node.name]
            if not math.isfinite(ub.value) or ub.value < 0:
                raise InternalError(f"norm bound of '{node.name}' is {ub.value}")
            lip[node.name] = _mul(ub.value, ins[0])
        elif isinstance(op, Activation):
            lip[node.name] = _mul(activation_lipschitz(op.fn, op.alpha), ins[0])
        elif isinstance(op, MaxPool):
            lip[node.name] = _mul(maxpool_factor(op, folded.shape_of(node.inputs[0]), node.shape), ins[0])
        elif isinstance(op, Add):
            lip[node.name] = _add(ins[0], ins[1])
        elif isinstance(op, Concat):
            lip[node.name] = round_up(math.sqrt(round_up(sum(round_up(v * v) for v in ins))))
        else:
            raise UnsupportedModelError(
                "cannot certify this model", [(op.op_type, node.name, "no Lipschitz bound for this operator")]
            )
    return lip


def curvature_bounds(
    folded: Graph, uppers: Mapping[str, UpperBound], lip: Mapping[str, float]
) -> dict[str, float] | None:
    """H_v for every node (Lipschitz constant of the node's derivative), or None if some operator is not
    smooth (relu, leaky_relu, elu with alpha != 1, max-pool)."""
    curv: dict[str, float] = {INPUT: 0.0}
    for node in folded.nodes:
        op = node.op
        ins = [curv[i] for i in node.inputs]
        if type(op).linear:
            curv[node.name] = _mul(uppers[node.name].value, ins[0])
        elif isinstance(op, Activation):
            k = activation_curvature(op.fn, op.alpha)
            if k is None:
                return None
            slope = activation_lipschitz(op.fn, op.alpha)
            l_in = lip[node.inputs[0]]
            curv[node.name] = _add(_mul(k, _mul(l_in, l_in)), _mul(slope, ins[0]))
        elif isinstance(op, Add):
            curv[node.name] = _add(ins[0], ins[1])
        elif isinstance(op, Concat):
            curv[node.name] = round_up(math.sqrt(round_up(sum(round_up(v * v) for v in ins))))
        else:
            return None
    return curv


def lipschitz_bound(
    graph: Graph,
    method: str = "auto",
    device: str | torch.device = "cpu",
    *,
    mean: list[float] | None = None,
    std: list[float] | None = None,
    norms: list[LayerNorm] | None = None,
    exact_max_dim: int = 2048,
    progress: Callable[[int, int, str], None] | None = None,
) -> LipschitzBound:
    """Proven upper bound on the L2 Lipschitz constant of `graph`'s logits (in the data space when
    mean/std prepend a normalisation).

        >>> lb = lipschitz_bound(graph)                  # doctest: +SKIP
        >>> lb.upper, lb.node_upper[lb.logits]            # doctest: +SKIP

    The graph is moved to float64 before `fold_linear`, so folding adds only float64 rounding. A final
    Softmax/LogSoftmax is removed first (the logits are certified; the argmax is the same). Opaque
    operators raise UnsupportedModelError naming them; NaN/Inf weights raise InputError.
    """
    check_certifiable(graph)
    g = with_input_normalisation(graph, mean, std)
    g, stripped = logits_graph(g)
    g64 = g.to("cpu", torch.float64)
    folded = fold_linear(g64)
    if norms is None:
        norms = layer_norms(g64, method, device, exact_max_dim=exact_max_dim, progress=progress)
    uppers = {n.name: n.upper for n in norms}
    lip = compose(folded, uppers)
    curv = curvature_bounds(folded, uppers, lip)
    notes = []
    if stripped is not None:
        notes.append(
            f"the output {folded.output!r} is certified (logits): the final softmax node "
            f"{stripped!r} does not change the argmax"
        )
    return LipschitzBound(lip[folded.output], tuple(norms), folded, lip, curv, stripped, None, tuple(notes))
