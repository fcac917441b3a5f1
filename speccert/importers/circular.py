"""Circular padding written as Concat(x[n-p:], x, x[:p]) per spatial axis, then a Conv without padding,
recognised after import and rewritten to one Conv with padding_mode 'circular'.

This is how torch's legacy ONNX exporter writes nn.Conv2d(padding_mode='circular') (orthogonium's
default for its orthogonal convolutions), and how speccert imports a Pad of mode 'wrap' (the dynamo
exporter). The parts alone compose to a loose bound: each Concat of three pieces is bounded by the hypot
rule, sqrt(3) per axis, although it only repeats p border rows. The whole is a circular convolution, a
block-circulant operator whose norm the norm methods compute exactly on the torus; for an orthogonal
kernel it is 1. The rewrite computes the same function (checked at load, after it).
"""

from __future__ import annotations

import dataclasses

from speccert.ir.graph import Graph, Node
from speccert.ir.ops import Concat, Conv, Slice


def _wrap_of(graph: Graph, by_name: dict[str, Node], name: str) -> tuple[str, int, int] | None:
    """(u, axis, p) when `name` is Concat(u[n-p:n], u, u[:p]) along a non-channel axis, else None."""
    node = by_name.get(name)
    if node is None or not isinstance(node.op, Concat) or len(node.inputs) != 3:
        return None
    ax = node.op.axis
    lo, hi = by_name.get(node.inputs[0]), by_name.get(node.inputs[2])
    u_name = node.inputs[1]
    if ax < 1 or lo is None or hi is None or not isinstance(lo.op, Slice) or not isinstance(hi.op, Slice):
        return None
    if lo.inputs[0] != u_name or hi.inputs[0] != u_name or lo.op.axis != ax or hi.op.axis != ax:
        return None
    n = graph.shape_of(u_name)[ax]
    p = hi.op.stop - hi.op.start
    ok = (lo.op.start, lo.op.stop, lo.op.step, hi.op.start, hi.op.step) == (n - p, n, 1, 0, 1)
    return (u_name, ax, p) if ok and 0 < p <= n else None


def _circular_conv(graph: Graph, by_name: dict[str, Node], conv: Node) -> Node | None:
    op = conv.op
    if not isinstance(op, Conv) or op.padding_mode != "zeros" or any(b or e for b, e in op.padding):
        return None
    pads = [0] * op.ndim
    src = conv.inputs[0]
    while (wrap := _wrap_of(graph, by_name, src)) is not None:
        src, ax, p = wrap
        if ax > op.ndim or pads[ax - 1]:
            return None  # the same axis wrapped twice
        pads[ax - 1] = p
    if src == conv.inputs[0]:
        return None
    new = dataclasses.replace(op, padding=tuple((p, p) for p in pads), padding_mode="circular")
    return Node(conv.name, new, (src,))


def fuse_circular_convs(graph: Graph) -> Graph:
    """`graph` with every wrap-padded zero-padding-free Conv made one circular Conv; parts left without
    readers dropped. The same graph object when there is none."""
    by_name = {n.name: n for n in graph.nodes}
    out: list[Node] = []
    changed = False
    for node in graph.nodes:
        new = _circular_conv(graph, by_name, node)
        out.append(node if new is None else new)
        changed = changed or new is not None
    if not changed:
        return graph
    live, keep = {graph.output}, []
    for n in reversed(out):
        if n.name in live:
            live.update(n.inputs)
            keep.append(n)
    return Graph(graph.input_shape, keep[::-1], graph.output, graph.source, graph.dtype)
