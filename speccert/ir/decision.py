"""Which output decides the class: the largest logit (argmax, the default) or the smallest (argmin).

Most classifiers decide by argmax. Some do not: ACAS Xu-style controllers output a cost per advisory
and pick the *smallest*. Certifying such a model as argmax proves statements about the wrong decision,
so the decision rule is an explicit choice. argmin is reduced to argmax exactly:

    argmin_j f_j(x) = argmax_j (-f_j(x)),

so `decide_by(graph, "argmin")` appends an elementwise Affine with scale -1 at the logits (before a
final Softmax, whose argmax is that of its input). Negation is exact in floating point and has
operator norm 1; the affine merge folds it into the last linear layer (W -> -W, b -> -b), so every
norm, margin and radius is the one of the negated model: nothing else changes.
"""

from __future__ import annotations

import dataclasses

import torch

from speccert.errors import UsageError
from speccert.ir.graph import INPUT, Graph, ModelSource, Node
from speccert.ir.ops import Affine, Softmax

DECISIONS = ("argmax", "argmin")
NEGATE_NODE = "speccert_argmin_negate"


def check_decision(decision: str) -> str:
    if decision not in DECISIONS:
        raise UsageError(f"--decision must be argmax or argmin, got {decision!r}")
    return decision


def decide_by(graph: Graph, decision: str) -> Graph:
    """The graph whose argmax is `decision` of `graph`'s output (the same graph for argmax).

    >>> g = decide_by(speccert.load("acas.onnx"), "argmin")  # doctest: +SKIP
    >>> bool((g(x).argmax(1) == speccert.load("acas.onnx")(x).argmin(1)).all())  # doctest: +SKIP
    True
    """
    if check_decision(decision) == "argmax":
        return graph
    if graph.output == INPUT:
        raise UsageError("the model has no operators")
    out = graph.node(graph.output)
    logits = out.inputs[0] if isinstance(out.op, Softmax) else out.name
    shape = graph.shape_of(logits)
    params = list(graph.parameters().values())
    device = params[0].device if params else None  # the negation lives with the weights (CPU or CUDA)
    neg = Node(
        NEGATE_NODE,
        Affine(
            scale=torch.full(shape, -1.0, dtype=graph.dtype, device=device),
            shift=torch.zeros(shape, dtype=graph.dtype, device=device),
        ),
        (logits,),
    )
    if isinstance(out.op, Softmax):
        nodes = [n for n in graph.nodes if n is not out]
        nodes += [neg, dataclasses.replace(out, inputs=(NEGATE_NODE,))]
        output = out.name
    else:
        nodes, output = [*graph.nodes, neg], NEGATE_NODE
    if decision_of(graph) == "argmin":
        raise UsageError("the model already decides by argmin (decide_by applied twice)")
    source = graph.source if graph.source is not None else ModelSource("", "graph")
    source = dataclasses.replace(source, extra={**source.extra, "decision": decision})
    return Graph(graph.input_shape, nodes, output, source, graph.dtype)


def decision_of(graph: Graph) -> str:
    """The decision rule a graph was built for by `decide_by` ('argmax' unless recorded)."""
    return graph.source.extra.get("decision", "argmax") if graph.source is not None else "argmax"
