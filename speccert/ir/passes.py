"""Function-preserving rewrites that make bounds tighter (shared/DESIGN.md, "merged before the norm").

`fold_linear(graph)` returns a new graph computing the same function in which
- BatchNorm after a Conv/Linear is folded into its weights and bias;
- a per-channel scale (BatchNorm or Affine, e.g. input normalisation) before a Conv/Linear is moved into
  that layer's weights, leaving a pure-shift Affine behind (its linear part is the identity, norm 1):
  conv(s*x + t) = conv_{W*s}(x + t/s), exact also at zero-padded borders;
- two consecutive Linear layers are multiplied into one.
The input graph is never modified; new tensors are created for every rewritten op.
"""

from __future__ import annotations

import dataclasses

import torch

from speccert.ir.graph import INPUT, Graph, Node
from speccert.ir.ops import Affine, BatchNorm, Conv, Linear, Reshape, is_fixed

Tensor = torch.Tensor


def _sole_consumer(graph: Graph, nodes: list[Node], name: str) -> Node | None:
    if name == graph.output:
        return None
    users = [n for n in nodes if name in n.inputs]
    return users[0] if len(users) == 1 and len(users[0].inputs) == 1 else None


def _channel_scale_shift(node: Node, in_shape: tuple[int, ...]) -> tuple[Tensor, Tensor] | None:
    """Per-element scale and shift of a BatchNorm/Affine, expanded to the full input shape."""
    op = node.op
    if isinstance(op, BatchNorm):
        s, t = op.scale_shift()
        view = (-1,) + (1,) * (len(in_shape) - 1)
        s, t = s.reshape(view), t.reshape(view)
    elif isinstance(op, Affine):
        s, t = op.scale, op.shift
    else:
        return None
    s = s.detach().expand(in_shape).clone()
    t = t.detach().expand(in_shape).clone()
    return s, t


def _fold_after(prev: Node, bn: Node) -> Node | None:
    """Conv/Linear followed by BatchNorm (or per-output-channel Affine) -> one Conv/Linear."""
    op = prev.op
    if not isinstance(op, (Conv, Linear)):
        return None
    st = _channel_scale_shift(bn, prev.shape)
    if st is None:
        return None
    s, t = st
    # The scale must be constant over everything but the channel axis (axis 0 of the shape).
    s0, t0 = s.reshape(s.shape[0], -1)[:, 0], t.reshape(t.shape[0], -1)[:, 0]
    if not (
        torch.equal(s, s0.reshape((-1,) + (1,) * (s.dim() - 1)).expand_as(s))
        and torch.equal(t, t0.reshape((-1,) + (1,) * (t.dim() - 1)).expand_as(t))
    ):
        return None
    if isinstance(op, Linear) and len(prev.shape) != 1:
        return None
    w = op.weight.detach() * s0.reshape((-1,) + (1,) * (op.weight.dim() - 1))
    b = (op.bias.detach() if op.bias is not None else torch.zeros_like(s0)) * s0 + t0
    # Affine constants are float64 (exact); the layer keeps its dtype (float64 when certifying)
    new_op = dataclasses.replace(op, weight=w.to(op.weight.dtype), bias=b.to(op.weight.dtype))
    return Node(prev.name, new_op, prev.inputs, prev.shape)


def _fold_before(graph: Graph, nodes: list[Node], scaler: Node) -> tuple[Node, list[Node], Node] | None:
    """BatchNorm/Affine (per-channel) before Conv, or any Affine before [Reshape...] Linear.

    Returns (pure-shift replacement of `scaler`, reshaped chain, rewritten layer)."""
    in_shape = graph.shape_of(scaler.inputs[0])
    st = _channel_scale_shift(scaler, in_shape)
    if st is None:
        return None
    s, t = st
    if not bool((s != 0).all()):
        return None
    chain: list[Node] = []
    cur = _sole_consumer(graph, nodes, scaler.name)
    while cur is not None and isinstance(cur.op, Reshape):
        chain.append(cur)
        cur = _sole_consumer(graph, nodes, cur.name)
    if cur is None:
        return None
    op = cur.op
    if isinstance(op, Linear) and len(in_shape) >= 1:
        w = op.weight.detach() * s.reshape(1, -1)
    elif isinstance(op, Conv) and not chain and op.padding_mode in ("zeros", "circular"):
        flat = s.reshape(s.shape[0], -1)
        if not bool((flat == flat[:, :1]).all()):
            return None
        cs = flat[:, 0]
        groups, cin_g = op.groups, op.weight.shape[1]
        cout_g = op.weight.shape[0] // groups
        # weight[o, i] multiplies input channel (o // cout_g) * cin_g + i.
        idx = (torch.arange(op.weight.shape[0]) // cout_g)[:, None] * cin_g + torch.arange(cin_g)[None, :]
        w = op.weight.detach() * cs[idx].reshape(*idx.shape, *([1] * op.ndim))
    else:
        return None
    shift = Affine(scale=torch.ones_like(s), shift=t / s)
    return (
        Node(scaler.name, shift, scaler.inputs, scaler.shape),
        chain,
        Node(cur.name, dataclasses.replace(op, weight=w.to(op.weight.dtype)), cur.inputs, cur.shape),
    )


def _merge_linear(a: Node, b: Node) -> Node:
    wa, wb = a.op.weight.detach(), b.op.weight.detach()  # type: ignore[attr-defined]
    ba = a.op.bias.detach() if a.op.bias is not None else torch.zeros(wa.shape[0], dtype=wa.dtype)  # type: ignore[attr-defined]
    bb = b.op.bias.detach() if b.op.bias is not None else torch.zeros(wb.shape[0], dtype=wb.dtype)  # type: ignore[attr-defined]
    fixed = is_fixed(a.op) and is_fixed(b.op)  # a learned factor makes it learned
    return Node(b.name, Linear(weight=wb @ wa, bias=wb @ ba + bb, fixed=fixed), a.inputs, b.shape)


def is_pure_shift(node: Node) -> bool:
    return isinstance(node.op, Affine) and bool((node.op.scale == 1).all())


def fold_linear(graph: Graph) -> Graph:
    """Return an equivalent graph with BatchNorm/normalisation scales folded into Conv/Linear layers."""
    nodes = list(graph.nodes)
    output = graph.output
    changed = True
    while changed:
        changed = False
        g = Graph.__new__(Graph)  # cheap view for shape lookups over the current node list
        g.input_shape, g.output, g.nodes, g.source, g.dtype = (
            graph.input_shape,
            output,
            nodes,
            graph.source,
            graph.dtype,
        )
        for node in nodes:
            if isinstance(node.op, (BatchNorm, Affine)) and node.inputs[0] != INPUT:
                prev_list = [n for n in nodes if n.name == node.inputs[0]]
                prev = prev_list[0] if prev_list else None
                if prev is not None and _sole_consumer(g, nodes, prev.name) is node:
                    merged = _fold_after(prev, node)
                    if merged is not None:
                        # The merged layer keeps the layer's name; the BatchNorm's consumers read it.
                        merged = dataclasses.replace(merged, shape=node.shape)
                        nodes = [merged if n is prev else n for n in nodes if n is not node]
                        nodes = [
                            dataclasses.replace(
                                n, inputs=tuple(prev.name if i == node.name else i for i in n.inputs)
                            )
                            for n in nodes
                        ]
                        output = prev.name if output == node.name else output
                        changed = True
                        break
            if isinstance(node.op, (BatchNorm, Affine)) and not is_pure_shift(node):
                folded = _fold_before(g, nodes, node)
                if folded is not None:
                    shift, chain, layer = folded
                    repl = {node.name: shift, layer.name: layer}
                    nodes = [repl.get(n.name, n) for n in nodes]
                    changed = True
                    break
            if isinstance(node.op, Linear):
                nxt = _sole_consumer(g, nodes, node.name)
                if nxt is not None and isinstance(nxt.op, Linear):
                    merged = _merge_linear(node, nxt)
                    nodes = [merged if n is nxt else n for n in nodes if n is not node]
                    changed = True
                    break
    return Graph(graph.input_shape, nodes, output, graph.source, graph.dtype)
