"""`finetune --widen F`: more hidden units for the fine-tune, starting from the same function.

A fine-tuned network pays for its certificate with capacity: every hidden layer must keep the margins
while its norm is held down. `widen(graph, F)` multiplies the width of every hidden layer (the output
channels of each Conv / the outputs of each Linear that feeds another layer) by F, in a way that keeps
the function exactly: each new unit gets small random incoming weights and a zero bias, and the layer
that reads the widened layer gets *zero* weights on the new inputs, so the new units contribute nothing
until training moves those weights (their gradient is not zero: the new units' activations are not).
New channels are appended after the old ones, so a channel-major Flatten between a Conv and a Linear
keeps the old inputs at their old positions.

The new incoming rows are drawn from a normal law with the old rows' root-mean-square entry, scaled by
`scale` (default 0.1): the layer's norm, and so the certificate of the start, stays close to the input's
(the new rows add at most their own norm; the zero outgoing weights add nothing).

Supported: chains of Conv / Linear separated by elementwise activations, max / average / global pooling,
channel-major Flatten (Reshape [C, H, W] -> [C*H*W]) and scalar Affine ops (as an input normalisation
anywhere). A residual Add, a Concat, a BatchNorm or any other op between two widened layers is refused
with its node named: widening them keeping the function needs rules per op that are not written.
The written file is a plain, wider network: every importer of this project reads it back and the
certifier certifies it from the file like any other.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TypeGuard

import torch

from speccert.errors import UsageError
from speccert.ir.graph import Graph, Node
from speccert.ir.linear_ops import Affine, AvgPool, Conv, GlobalAvgPool, Linear, Reshape, is_fixed
from speccert.ir.nonlinear_ops import Activation, MaxPool
from speccert.ir.op_base import Op

# Ops that act on each channel on its own, shape-agnostic in the channel count.
_CHANNELWISE = (Activation, MaxPool, AvgPool, GlobalAvgPool)
_LAYERS = (Conv, Linear)


@dataclass(frozen=True)
class Widening:
    """The widened graph and, per widened layer, its width before and after."""

    graph: Graph
    widths: tuple[tuple[str, int, int], ...]
    factor: float

    def note(self) -> str:
        """One line for the run's notes."""
        parts = ", ".join(f"{name} {a}->{b}" for name, a, b in self.widths)
        return f"--widen {self.factor:g}: hidden layers widened keeping the function ({parts})"


def parse_widen(value: float) -> float:
    if not (math.isfinite(value) and value >= 1.0):
        raise UsageError(f"--widen must be a finite number >= 1 (1: off), got {value}")
    return float(value)


def widen(graph: Graph, factor: float, seed: int = 0, scale: float = 0.1) -> Widening:
    """Widen every hidden Conv / Linear of `graph` by `factor` (module docstring); factor 1 is a no-op."""
    factor = parse_widen(factor)
    if factor == 1.0:
        return Widening(graph, (), factor)
    _check_groups(graph)
    gen = torch.Generator().manual_seed(seed)
    ops: dict[str, Op] = {n.name: n.op for n in graph.nodes}
    widths: list[tuple[str, int, int]] = []
    for node in graph.nodes:
        if not _learned(node.op) or node.name == graph.output:
            continue
        reader, between = _next_layer(graph, node)
        if reader is None:  # feeds the output through channelwise ops only: not hidden
            continue
        old = node.op.weight.shape[0]
        new = max(old + 1, round(old * factor))
        mine = ops[node.name]  # with its columns already grown when the layer before was widened
        if isinstance(mine, _LAYERS):
            ops[node.name] = _grow_rows(mine, new, gen, scale * _rms(node.op.weight))
        for b in between:
            if isinstance(b.op, Reshape):
                ops[b.name] = _grow_flatten(graph.shape_of(b.inputs[0]), new)
        grown = ops[reader.name]  # already grown in rows when the reader is itself hidden
        if isinstance(grown, _LAYERS):
            ops[reader.name] = _grow_columns(grown, old, new, graph.shape_of(reader.inputs[0]))
        widths.append((node.name, old, new))
    if not widths:
        raise UsageError("--widen: the model has no hidden Conv or Linear layer to widen")
    nodes = [Node(n.name, ops[n.name], n.inputs) for n in graph.nodes]
    return Widening(graph.replace_nodes(nodes), tuple(widths), factor)


def _learned(op: Op) -> TypeGuard[Conv | Linear]:
    """A Conv / Linear with learned weights: an upsampling's fixed layer (an interpolation matrix acting on a
    spatial axis) is neither widened nor read as a layer; between two layers it is refused by name."""
    return isinstance(op, _LAYERS) and not is_fixed(op)


def _check_groups(graph: Graph) -> None:
    for n in graph.nodes:
        if isinstance(n.op, Conv) and n.op.groups != 1:
            raise UsageError(
                f"--widen: grouped convolution {n.name!r} (groups {n.op.groups}) is not supported"
            )


def _next_layer(graph: Graph, node: Node) -> tuple[Node | None, list[Node]]:
    """The one Conv / Linear that reads `node` through channelwise ops and a flatten (None: the path
    reaches the output first), and the nodes in between; anything else is refused by name."""
    between: list[Node] = []
    cur = node
    while True:
        readers = graph.consumers(cur.name)
        if cur.name == graph.output and not readers:
            return None, between
        if len(readers) != 1:
            names = ", ".join(repr(r.name) for r in readers)
            raise UsageError(
                f"--widen: {cur.name!r} is read by {len(readers)} nodes ({names}); only chains are widened"
            )
        nxt = readers[0]
        if _learned(nxt.op):
            return nxt, between
        if not _feeds_a_layer(graph, nxt):  # e.g. a Softmax output: `node` is the last layer, not hidden
            return None, between
        if not _passes(graph, nxt):
            raise UsageError(
                f"--widen: node {nxt.name!r} ({nxt.op.describe()}) between {node.name!r} and the next layer "
                "cannot be widened keeping the function (supported: activations, pooling, flatten, scalar affine)"
            )
        between.append(nxt)
        cur = nxt


def _feeds_a_layer(graph: Graph, node: Node) -> bool:
    """Whether any Conv / Linear reads `node`'s output, directly or through other nodes."""
    todo, seen = [node.name], set()
    while todo:
        for r in graph.consumers(todo.pop()):
            if _learned(r.op):
                return True
            if r.name not in seen:
                seen.add(r.name)
                todo.append(r.name)
    return False


def _passes(graph: Graph, node: Node) -> bool:
    op = node.op
    if isinstance(op, _CHANNELWISE):
        return not (isinstance(op, Activation) and op.fn in ("softmax", "log_softmax"))
    if isinstance(op, Affine):
        return op.scale.numel() == 1 and op.shift.numel() == 1
    if isinstance(op, Reshape):  # channel-major flatten to one axis
        shape = graph.shape_of(node.inputs[0])
        return len(op.shape) == 1 and op.shape[0] == math.prod(shape)
    return False


def _rms(weight: torch.Tensor) -> float:
    """Root-mean-square entry of the input's own weights (1 for an all-zero layer)."""
    return float(weight.detach().double().pow(2).mean().sqrt()) or 1.0


def _grow_rows(op: Conv | Linear, new: int, gen: torch.Generator, std: float) -> Conv | Linear:
    w = op.weight.detach()
    old = w.shape[0]
    extra = torch.randn((new - old, *w.shape[1:]), generator=gen, dtype=torch.float64) * std
    weight = torch.cat([w, extra.to(w.dtype)])
    bias = None if op.bias is None else torch.cat([op.bias.detach(), op.bias.new_zeros(new - old)])
    return replace(op, weight=weight, bias=bias)


def _grow_columns(op: Conv | Linear, old: int, new: int, in_shape: tuple[int, ...]) -> Conv | Linear:
    w = op.weight.detach()
    if isinstance(op, Conv):
        pad = w.new_zeros((w.shape[0], new - old, *w.shape[2:]))
        return replace(op, weight=torch.cat([w, pad], dim=1))
    per_channel = in_shape[0] // old  # a flatten of [old, H, W]: H*W inputs per channel
    pad = w.new_zeros((w.shape[0], (new - old) * per_channel))
    return replace(op, weight=torch.cat([w, pad], dim=1))


def _grow_flatten(in_shape: tuple[int, ...], new: int) -> Reshape:
    """The channel-major flatten of [new, *in_shape[1:]]."""
    per_channel = math.prod(in_shape[1:])
    return Reshape((new * per_channel,))


__all__ = ["Widening", "parse_widen", "widen"]
