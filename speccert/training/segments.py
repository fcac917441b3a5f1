"""A graph's linear segments: the units whose operator norms the penalties regularise.

A *segment* is one weighted layer (Linear, Conv, ConvTranspose) together with the eval-mode BatchNorm
nodes that directly follow it (its sole consumer): BN's per-channel scale gamma / sqrt(var + eps) is part of
the layer's linear map, so the penalty sees the folded operator x -> s * (W x) and also trains gamma. Any
other linear node (input normalisation, pooling, padding, reshapes, a standalone BatchNorm) is a segment
of its own without a weight; its norm is a constant, or differentiable in gamma for a standalone BN.

`linear_part(op, x)` applies an affine op without its constant term (bias, shift, BN mean), so a
segment is a true linear map A and its norm is ||A||_2.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from speccert.errors import UnsupportedModelError
from speccert.ir.graph import Graph, Node
from speccert.ir.ops import (
    Affine,
    BatchNorm,
    Conv,
    ConvTranspose,
    GlobalAvgPool,
    Linear,
    Op,
    Pad,
    Reshape,
    Transpose,
)

Tensor = torch.Tensor
WEIGHTED = (Linear, Conv, ConvTranspose)
ISOMETRIC = (Reshape, Transpose, Pad)  # norm exactly 1 (index permutations, zero padding)


def bn_scale(op: BatchNorm) -> Tensor:
    """Per-channel scale gamma / sqrt(var + eps) of an eval-mode BatchNorm (differentiable in gamma)."""
    return op.weight / torch.sqrt(op.var + op.eps)


def linear_part(op: Op, x: Tensor) -> Tensor:
    """Apply the linear part of an affine op (constant term dropped) to a batch x."""
    if isinstance(op, (Linear, Conv, ConvTranspose)):
        return op.forward(x) if op.bias is None else _without_bias(op).forward(x)
    if isinstance(op, BatchNorm):
        return x * bn_scale(op).reshape((1, -1) + (1,) * (x.dim() - 2))
    if isinstance(op, Affine):
        return x * op.scale
    if isinstance(op, Pad):
        return op.forward(x)  # zero padding is linear
    return op.forward(x)  # pools, reshapes, transposes: linear already


def _without_bias(op: Linear | Conv | ConvTranspose) -> Op:
    return dataclasses.replace(op, bias=None)


@dataclass(frozen=True, eq=False)
class Segment:
    """Consecutive linear nodes applied as one linear map; `name` is the last node's name."""

    nodes: tuple[Node, ...]
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]

    @property
    def name(self) -> str:
        return self.nodes[-1].name

    @property
    def first(self) -> Node:
        return self.nodes[0]

    @property
    def layer(self) -> Linear | Conv | ConvTranspose | None:
        """The weighted op of the segment, None for weightless segments."""
        op = self.nodes[0].op
        return op if isinstance(op, WEIGHTED) else None

    @property
    def isometric(self) -> bool:
        return all(isinstance(n.op, ISOMETRIC) for n in self.nodes)

    def apply(self, x: Tensor) -> Tensor:
        """A x for a batch x of shape [n, *in_shape]."""
        for node in self.nodes:
            x = linear_part(node.op, x)
        return x

    def channel_scale(self) -> Tensor | None:
        """Product of the following BatchNorm scales (per output channel), None when there is none."""
        s: Tensor | None = None
        for node in self.nodes[1:]:
            if isinstance(node.op, BatchNorm):
                s = bn_scale(node.op) if s is None else s * bn_scale(node.op)
        return s

    def effective_weight(self) -> Tensor:
        """The layer's weight with the following BN scales folded in (Linear: [out, in]; Conv:
        [c_out, c_in/groups, *k]). Differentiable in the weight and in gamma."""
        layer = self.layer
        if layer is None:
            raise ValueError(f"segment {self.name} has no weight")
        w = layer.weight
        s = self.channel_scale()
        if s is None:
            return w
        if isinstance(layer, ConvTranspose):
            # weight [c_in, c_out/groups, *k]: output channel o = g * (c_out/groups) + j.
            g = layer.groups
            cin, cog = w.shape[0], w.shape[1]
            s2 = s.reshape(g, 1, cog).expand(g, cin // g, cog).reshape(cin, cog)
            return w * s2.reshape(cin, cog, *([1] * (w.dim() - 2)))
        return w * s.reshape((-1,) + (1,) * (w.dim() - 1))

    def exact_constant_norm(self) -> float | None:
        """Exact norm of weightless segments where it has a closed form, else None."""
        if self.isometric:
            return 1.0
        if len(self.nodes) == 1:
            op = self.nodes[0].op
            if isinstance(op, Affine):
                return float(op.scale.detach().abs().max())
            if isinstance(op, GlobalAvgPool):
                n = math.prod(self.in_shape[1:])
                return 1.0 / math.sqrt(n)
        return None


def _sole_linear_consumer(graph: Graph, name: str) -> Node | None:
    if name == graph.output:
        return None
    users = graph.consumers(name)
    if len(users) == 1 and isinstance(users[0].op, BatchNorm):
        return users[0]
    return None


def find_segments(graph: Graph) -> list[Segment]:
    """Split the graph's linear nodes into segments, in topological order.

    Raises UnsupportedModelError for Opaque nodes (nothing can be bounded through them)."""
    bad = graph.unsupported()
    if bad:
        raise UnsupportedModelError(
            "cannot fine-tune with bounds through",
            [(n.op_type, n.name, getattr(n.op, "reason", "no Lipschitz bound")) for n in bad],
        )
    taken: set[str] = set()
    out: list[Segment] = []
    for node in graph.nodes:
        if node.name in taken or not type(node.op).linear:
            continue
        chain = [node]
        if isinstance(node.op, WEIGHTED):
            nxt = _sole_linear_consumer(graph, node.name)
            while nxt is not None:
                chain.append(nxt)
                nxt = _sole_linear_consumer(graph, nxt.name)
        taken.update(n.name for n in chain)
        in_name = node.inputs[0]
        out.append(Segment(tuple(chain), graph.shape_of(in_name), chain[-1].shape))
    return out


def segment_of(segments: list[Segment]) -> dict[str, Segment]:
    """Map every node name inside a segment to the segment."""
    return {n.name: s for s in segments for n in s.nodes}


def dense_matrix(seg: Segment, dtype: torch.dtype = torch.float64) -> Tensor:
    """The explicit matrix of a segment (columns = images of the unit vectors); for tests/small layers."""
    n = math.prod(seg.in_shape)
    eye = torch.eye(n, dtype=dtype).reshape(n, *seg.in_shape)
    with torch.no_grad():
        cols = seg.apply(eye).reshape(n, -1)
    return cols.T


__all__ = ["Segment", "bn_scale", "dense_matrix", "find_segments", "linear_part", "segment_of"]
