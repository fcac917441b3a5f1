"""A network cut at its nonlinearities: the stages the local certificate works on.

The folded float64 graph is read as nonlinear nodes n_1, ..., n_K (activations and max-pools, in
topological order) and, before each, its input z_k, an affine function of earlier outputs:
    z_k = sum_j A_kj h_j + b_k,    h_j = n_j(z_j) (j < k) or h_0 = x (the input, index -1 here),
A_kj the linear sub-graph (Linear, Conv, BatchNorm, Affine, pooling by averages, Pad, Reshape,
Transpose, and Add: residual sums) from h_j to z_k. The nonlinearities are activations, max-pools
and MaxMin (a Sort over groups of two: speccert.bounds.local_sort). The logits are one more stage
without a nonlinearity. A chain network has one source per stage; a residual block has two (the branch
and the skip); a Concat stacks its inputs (||[J_1; J_2]|| <= sqrt(||J_1||^2 + ||J_2||^2) per source).
Softmax (inside), LayerNorm, GroupSort over groups of more than two and other operators are not
supported here.

Per source: upper >= ||A_kj||_2 (products of the proven per-node bounds along each path, summed over
paths), rownorm >= ||row_i A_kj|| (exact and rounded up when the path is [Reshape/shift]* Linear|Conv
[Reshape/shift/Add]*, 1 for an identity skip, else `upper`), and the Linear's weight where the path is
[Reshape/shift]* Linear [Add]* (then masked norms may use it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from speccert.bounds.certificate import NotApplicable
from speccert.bounds.compose import maxpool_factor
from speccert.bounds.lipschitz import LipschitzBound
from speccert.bounds.local_slopes import SUPPORTED
from speccert.bounds.local_sort import is_max_min
from speccert.ir import (
    INPUT,
    Activation,
    Add,
    Affine,
    BatchNorm,
    Concat,
    Conv,
    Graph,
    Linear,
    MaxPool,
    Node,
    Reshape,
    Sort,
)
from speccert.norms.result import round_up
from speccert.norms.rounding import gamma

Tensor = torch.Tensor
U = 2.0**-53


@dataclass
class Source:
    """One earlier output feeding a stage's z: h_j (stage `index`; -1 the input, named `name`)."""

    index: int
    name: str
    upper: float
    rownorm: Tensor
    weight: Tensor | None = None


@dataclass
class Stage:
    """z = the value of node `z_name` (computed by `nodes` from the sources), then `act` (None: logits)."""

    act: Node | None
    z_name: str
    nodes: list[Node]
    sources: list[Source]
    z_shape: tuple[int, ...]
    pool_factor: float = 1.0
    inner: int = field(default=0)  # summed product terms of `nodes`, either direction (rounding)
    tape: tuple[Tensor, list[Tensor]] | None = field(default=None, repr=False)  # see stage_vjp


def product_terms(graph: Graph, node: Node) -> int:
    """>= the terms summed per entry of the node's products in either direction: forward (A h: a row of
    A, `inner_dimension`) and backward (v^T A, the local certificate's reverse pass: a column of A,
    which a layer that widens has more of: a Linear 512 -> 1000, a conv 3 -> 64)."""
    op = node.op
    fwd = inner_dimension(graph, node)
    if isinstance(op, Linear):
        return max(fwd, int(op.weight.shape[0]) + 4)
    if isinstance(op, Conv):
        return max(fwd, int(op.weight.shape[0]) // op.groups * math.prod(op.weight.shape[2:]) + 4)
    return fwd


def inner_dimension(graph: Graph, node: Node) -> int:
    """>= the terms summed per entry of the node's forward product (a row of its matrix), + 4."""
    op = node.op
    if isinstance(op, (Linear, Conv)):
        return int(op.weight[0].numel()) + 4
    if hasattr(op, "weight") and isinstance(op.weight, Tensor) and not isinstance(op, BatchNorm):
        return int(op.weight.numel()) + 4
    if isinstance(op, (Reshape, Concat)) or op.op_type in ("Transpose", "Pad"):
        return 0
    if isinstance(op, Add):
        return 2
    return math.prod(graph.shape_of(node.inputs[0])) + 4  # pooling, Affine, BatchNorm: generous


def identity_like(node: Node) -> bool:
    """Reshape (keeps the flat order) or a pure shift (what folding leaves of a normalisation)."""
    op = node.op
    return isinstance(op, Reshape) or (isinstance(op, Affine) and bool((op.scale == 1).all()))


def _check(graph: Graph) -> list[Node]:
    """The nonlinear nodes, in order; NotApplicable for anything the local bounds do not cover."""
    acts = []
    for node in graph.nodes:
        op = node.op
        if isinstance(op, Activation):
            if op.fn not in SUPPORTED:
                raise NotApplicable(f"no slope bounds over a ball for {op.fn} (node '{node.name}')")
            acts.append(node)
        elif isinstance(op, MaxPool):
            if op.ceil_mode or len(op.kernel) != 2:
                raise NotApplicable(
                    f"only 2-d max-pool without ceil_mode is bounded over a ball (node '{node.name}')"
                )
            acts.append(node)
        elif isinstance(op, Sort):
            if not is_max_min(op, graph.shape_of(node.inputs[0])):
                raise NotApplicable(
                    f"only Sort over groups of two (MaxMin) is bounded over a ball yet (node '{node.name}')"
                )
            acts.append(node)
        elif not type(op).linear and not isinstance(op, (Add, Concat)):
            raise NotApplicable(f"{op.op_type} nodes are not bounded over a ball yet (node '{node.name}')")
    return acts


def _subgraph(graph: Graph, end: str, outputs: dict[str, int]) -> tuple[list[Node], list[str]]:
    """The linear nodes computing `end` from earlier nonlinear outputs / the input, and those leaves."""
    seen: set[str] = set()
    leaves: list[str] = []
    stack = [end]
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        if name == INPUT or name in outputs:
            leaves.append(name)
            continue
        stack.extend(graph.node(name).inputs)
    order = {n.name: i for i, n in enumerate(graph.nodes)}
    nodes = sorted(
        (graph.node(n) for n in seen if n != INPUT and n not in outputs), key=lambda n: order[n.name]
    )
    leaves.sort(key=lambda n: -1 if n == INPUT else order[n])
    return nodes, leaves


Paths = dict[str, tuple[float, list[Node] | None]]  # leaf -> (norm bound, the unique path or None)


def _paths(nodes: list[Node], leaves: list[str], uppers: dict[str, float]) -> dict[str, Paths]:
    """Per node, per leaf: a bound on ||d node / d leaf|| and the path when it is unique."""
    out: dict[str, Paths] = {leaf: {leaf: (1.0, [])} for leaf in leaves}
    for node in nodes:
        if isinstance(node.op, Add):
            merged: Paths = {}
            for i in node.inputs:
                for leaf, (up, path) in out[i].items():
                    if leaf in merged:
                        merged[leaf] = (round_up(merged[leaf][0] + up), None)
                    else:
                        merged[leaf] = (up, None if path is None else [*path, node])
            out[node.name] = merged
        elif isinstance(node.op, Concat):  # ||[J_1; J_2; ...]|| <= sqrt(sum ||J_i||^2), per leaf
            squares: dict[str, float] = {}
            for i in node.inputs:
                for leaf, (up, _) in out[i].items():
                    squares[leaf] = round_up(squares.get(leaf, 0.0) + round_up(up * up))
            out[node.name] = {leaf: (round_up(math.sqrt(sq)), None) for leaf, sq in squares.items()}
        else:
            (i,) = node.inputs
            out[node.name] = {
                leaf: (round_up(up * uppers[node.name]), None if path is None else [*path, node])
                for leaf, (up, path) in out[i].items()
            }
    return out


def _rownorm(graph: Graph, path: list[Node] | None, upper: float, z_shape: tuple[int, ...]) -> Tensor:
    """>= ||row_i A|| for a unique path [identity-like]* Linear|Conv [identity-like|Add]*, else upper."""
    if path is not None:
        weighted = [n for n in path if not identity_like(n) and not isinstance(n.op, Add)]
        if not weighted:
            return torch.ones(z_shape, dtype=torch.float64).clamp_max(upper)
        if len(weighted) == 1:
            node = weighted[0]
            op = node.op
            sq: Tensor | None = None
            if isinstance(op, Linear):
                sq = op.weight.detach().square().sum(1)
            elif isinstance(op, Conv) and op.padding_mode == "zeros":
                w2 = op.weight.detach().square()
                ones = torch.ones((1, *graph.shape_of(node.inputs[0])), dtype=torch.float64)
                sq = Conv(w2, None, op.stride, op.padding, op.dilation, op.groups).forward(ones)[0]
            if sq is not None:
                r = (sq * (1.0 + gamma(inner_dimension(graph, node) + 4))).sqrt() * (1.0 + 4 * U)
                return r.reshape(z_shape).clamp_max(upper)
    return torch.full(z_shape, upper, dtype=torch.float64)


def _weight(path: list[Node] | None) -> Tensor | None:
    """The Linear's weight where the path is [identity-like]* Linear [Add]* (rows and columns align)."""
    if path is None:
        return None
    lin = [i for i, n in enumerate(path) if not identity_like(n)]
    lin = [i for i in lin if not isinstance(path[i].op, Add)]
    if len(lin) != 1 or not isinstance(path[lin[0]].op, Linear):
        return None
    if any(not isinstance(n.op, Add) for n in path[lin[0] + 1 :]):
        return None
    op = path[lin[0]].op
    assert isinstance(op, Linear)
    return op.weight.detach()


def build_stages(bound: LipschitzBound) -> list[Stage]:
    """Cut the folded graph at its nonlinearities (module docstring); NotApplicable where unsupported."""
    graph = bound.folded
    acts = _check(graph)
    uppers = {n.name: n.upper.value for n in bound.layers}
    outputs = {a.name: k for k, a in enumerate(acts)}
    stages: list[Stage] = []
    for k, end in enumerate([*(a.inputs[0] for a in acts), graph.output]):
        act = acts[k] if k < len(acts) else None
        earlier = {n: i for n, i in outputs.items() if i < k}
        nodes, leaves = _subgraph(graph, end, earlier)
        if any(leaf not in earlier and leaf != INPUT for leaf in leaves):
            raise NotApplicable("the local certificate needs the nonlinearities in topological order")
        z_shape = graph.shape_of(end)
        paths = _paths(nodes, leaves, uppers)[end]
        sources = [
            Source(
                -1 if leaf == INPUT else earlier[leaf],
                leaf,
                paths[leaf][0],
                _rownorm(graph, paths[leaf][1], paths[leaf][0], z_shape),
                _weight(paths[leaf][1]),
            )
            for leaf in leaves
        ]
        st = Stage(act, end, nodes, sources, z_shape, inner=sum(product_terms(graph, n) for n in nodes))
        if act is not None and isinstance(act.op, MaxPool):
            st.pool_factor = maxpool_factor(act.op, z_shape, act.shape)
        stages.append(st)
    return stages


def evaluate(stage: Stage, leaves: dict[str, Tensor]) -> Tensor:
    """z of the stage from its sources' values (keyed by source name)."""
    values = dict(leaves)
    for node in stage.nodes:
        values[node.name] = node.op.forward(*(values[i] for i in node.inputs))
    return values[stage.z_name]


def stage_vjp(stage: Stage, v: Tensor, shapes: dict[str, tuple[int, ...]]) -> dict[int, Tensor]:
    """v^T A_kj for every source j, for a batch of row vectors v [N, *z_shape]: {j: [N, *h_j shape]}.

    The stage's linear sub-graph is recorded once on a batch of one (kept with retain_graph) and every
    call runs only its backward, batched over the N rows (is_grads_batched: vmap over the backward,
    20x faster than a backward of an N-row forward for float64 convolutions on the CPU)."""
    if not stage.nodes:
        return {stage.sources[0].index: v}
    if stage.tape is None:
        leaves = [
            torch.zeros((1, *shapes[s.name]), dtype=torch.float64, requires_grad=True) for s in stage.sources
        ]
        with torch.enable_grad():
            z = evaluate(stage, {s.name: leaf for s, leaf in zip(stage.sources, leaves, strict=True)})
        stage.tape = (z, leaves)
    z, leaves = stage.tape
    # create_graph where v carries a gradient (crown's optimised slopes): the products stay differentiable
    grads = torch.autograd.grad(
        z,
        leaves,
        v[:, None].to(z.dtype),
        retain_graph=True,
        allow_unused=True,
        is_grads_batched=True,
        create_graph=v.requires_grad,
    )
    out: dict[int, Tensor] = {}
    for s, leaf, g in zip(stage.sources, leaves, grads, strict=True):
        out[s.index] = torch.zeros((v.shape[0], *leaf.shape[1:]), dtype=v.dtype) if g is None else g[:, 0]
    return out
