"""Global L2 Lipschitz bound of a graph's logits, composed over the DAG from per-layer upper bounds.

For every node v of `fold_linear(graph)` we bound L_v, the L2 Lipschitz constant of x -> v(x), and,
when every operator is smooth, H_v, the Lipschitz constant of its derivative, by the one table of
per-op rules in speccert.bounds.compose (linear: ||A||_2 L_in with ||A||_2 <= the layer's UpperBound;
activation: its slope; MaxPool: sqrt(prod c_i); Add: sum; Concat: root sum of squares).

Every float64 operation is followed by an upward rounding (compose.RoundedUp), so each value is a
proven upper bound. Only `UpperBound` results reach the composition (mypy enforces the parameter type).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from speccert.bounds.compose import RoundedUp, compose, maxpool_factor, upper_norms
from speccert.errors import UnsupportedModelError, UsageError
from speccert.ir import INPUT, Affine, Graph, Node, Softmax, fold_linear
from speccert.norms import LayerNorm, UpperBound, layer_norms
from speccert.norms.auto import BUDGET_HINT
from speccert.norms.method import EXACT_MAX_DIM, REFINE_ABOVE

NORMALISATION_NODE = "input_normalisation"
__all__ = ["LipschitzBound", "compose_bounds", "lipschitz_bound", "maxpool_factor"]


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


def check_normalisation(
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    shape: tuple[int, ...],
    names: tuple[str, str] = ("--mean", "--std"),
) -> tuple[list[float], list[float], int]:
    """(mean, std, n): finite values, std > 0, one value each or n per channel on the input's first axis
    (the default 0 / 1 for a missing one); UsageError naming `names` (options, or a policy's keys)."""
    mean_name, std_name = names
    mean_v = list(mean) if mean is not None else [0.0]
    std_v = list(std) if std is not None else [1.0]
    if any(not math.isfinite(s) or s <= 0 for s in std_v):
        raise UsageError(f"{std_name} values must be positive and finite, got {std_v}")
    if any(not math.isfinite(m) for m in mean_v):
        raise UsageError(f"{mean_name} values must be finite, got {mean_v}")
    n = max(len(mean_v), len(std_v))
    for name, vals in ((mean_name, mean_v), (std_name, std_v)):
        if len(vals) not in (1, n):
            raise UsageError(
                f"{name} has {len(vals)} values; {mean_name} and {std_name} need 1 or the same count"
            )
    if n > 1 and (len(shape) < 2 or shape[0] != n):
        raise UsageError(
            f"{mean_name} / {std_name}: {n} per-channel values, but the model's input shape {list(shape)} "
            f"does not have {n} channels on its first axis"
        )
    return mean_v, std_v, n


def with_input_normalisation(graph: Graph, mean: list[float] | None, std: list[float] | None) -> Graph:
    """Prepend x -> (x - mean) / std as an Affine node: part of the certified function, so radii are in
    the user's (un-normalised) data space. mean/std: one value, or one per channel (axis 0 of the input)."""
    if mean is None and std is None:
        return graph
    shape = graph.input_shape
    mean_v, std_v, n = check_normalisation(mean, std, shape)
    view = (n,) + (1,) * (len(shape) - 1) if n > 1 else (1,) * len(shape)
    m = torch.tensor(mean_v if len(mean_v) == n else mean_v * n, dtype=torch.float64).reshape(view)
    s = torch.tensor(std_v if len(std_v) == n else std_v * n, dtype=torch.float64).reshape(view)
    dtype = graph.dtype
    op = Affine(scale=1.0 / s, shift=-m / s)  # float64: 1/std rounded to float32 is another model
    # the model still runs in its dtype (a cast in Affine.forward): the constants must fit it
    if not (torch.isfinite(op.scale.to(dtype)).all() and torch.isfinite(op.shift.to(dtype)).all()):
        raise UsageError(  # e.g. --std 1e-300: the normalisation overflows, not the model's weights
            f"--mean/--std {mean_v}/{std_v}: 1/std or mean/std overflows {str(dtype).removeprefix('torch.')} "
            "(std too small for the model's precision)"
        )
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


def compose_bounds(
    folded: Graph, uppers: Mapping[str, UpperBound]
) -> tuple[dict[str, float], dict[str, float] | None]:
    """(L_v, H_v or None when some operator is not smooth) for every node of `folded`, in rounded-up
    float64 by the rules of speccert.bounds.compose; `uppers` keyed by linear node name."""
    norm_of = upper_norms({name: ub.value for name, ub in uppers.items()})
    out = compose(folded, norm_of, RoundedUp(), curvature=True)
    return out.lipschitz, out.curvature


def _memory_notes(norms: Sequence[LayerNorm]) -> list[str]:
    """One note per norm method that the memory budget kept off some layers (auto took the next sound
    bound there), naming the first layer and the budget's option."""
    skipped: dict[str, list[str]] = {}
    for n in norms:
        for note in n.notes:
            if BUDGET_HINT in note:
                skipped.setdefault(note.split(" skipped:", 1)[0], []).append(f"{n.name}: {note}")
    return [
        f"{method} skipped on {len(found)} layer(s) for memory, a cheaper sound bound used instead "
        f"(first: {found[0]})"
        for method, found in skipped.items()
    ]


def lipschitz_bound(
    graph: Graph,
    method: str = "auto",
    device: str | torch.device = "cpu",
    *,
    mean: list[float] | None = None,
    std: list[float] | None = None,
    norms: list[LayerNorm] | None = None,
    exact_max_dim: int = EXACT_MAX_DIM,
    progress: Callable[[int, int, str], None] | None = None,
    refine_above: float = REFINE_ABOVE,
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
        norms = layer_norms(
            g64, method, device, exact_max_dim=exact_max_dim, progress=progress, refine_above=refine_above
        )
    uppers = {n.name: n.upper for n in norms}
    lip, curv = compose_bounds(folded, uppers)
    notes = _memory_notes(norms)
    if stripped is not None:
        notes.append(
            f"the output {folded.output!r} is certified (logits): the final softmax node "
            f"{stripped!r} does not change the argmax"
        )
    return LipschitzBound(lip[folded.output], tuple(norms), folded, lip, curv, stripped, None, tuple(notes))
