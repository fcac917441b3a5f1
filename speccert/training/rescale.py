"""Initial rescaling: multiply a classifier's logits by a factor without changing a single prediction.

A certified radius, margin / Lipschitz, does not change when the logits are multiplied by f > 0; the
Lipschitz-margin loss does: from a plain model with a certified bound L in the hundreds, the margin
sqrt(2)*eps*L the loss asks for dwarfs the logits and the first steps wreck the features. Rescaling so
the certifier's bound becomes a target L* (f = L* / L, the certifier's own upper bound of the input
model) starts training from the same predictions at a loss scale the margin can work with.

How the factor is spread, so that predictions stay exact:
- **uniform** (positively homogeneous networks: ReLU / leaky ReLU / identity activations, Sort,
  Householder, pools,
  reshapes, pads, Adds and Concats of equally scaled inputs): every weighted layer W_l <- c W_l with
  c = f^(1/n) over the n weighted layers (an upsampling's `fixed` layer is not one of them: it passes the
  scale on, untouched); a layer's bias (and a following BatchNorm's mean and shift)
  is multiplied by the scale of its output, c^l, so the network computes exactly c^l times its
  original pre-activations at depth l (BatchNorm's scale gamma / sqrt(var + eps) is unchanged);
- **last layer** otherwise (e.g. residual blocks, smooth activations): the last weighted layer (its
  weight, bias, and a following BatchNorm's mean and shift) carries all of f. Only linear ops or a
  final Softmax may follow it; if anything else does, nothing is rescaled.
"""

from __future__ import annotations

import math

import torch

from speccert.ir.graph import INPUT, Graph
from speccert.ir.ops import (
    Activation,
    Add,
    Affine,
    AvgPool,
    BatchNorm,
    Concat,
    GlobalAvgPool,
    Householder,
    MaxPool,
    Pad,
    Reshape,
    Softmax,
    Sort,
    Transpose,
    is_fixed,
)
from speccert.training.segments import Segment, find_segments, segment_of

Tensor = torch.Tensor
HOMOGENEOUS = frozenset({"relu", "leaky_relu", "identity"})
# sort(c x) = c sort(x) for c > 0: Sort (MaxMin, GroupSort) carries a scale like a pool does; so does
# Householder, z - 2 max(0, v.z) v (the sign of v.z, hence the branch, is the same for c z).
SCALE_PASSING = (MaxPool, AvgPool, GlobalAvgPool, Pad, Reshape, Transpose, Sort, Householder)
Plan = list[tuple[Tensor, float]]  # (tensor, multiplier), applied in place


def _segment_plan(seg: Segment, s_in: float, c: float) -> tuple[Plan, float]:
    """Scale the segment's weight by c; its constants follow the output scale s_in * c."""
    s = s_in * c
    layer = seg.layer
    assert layer is not None
    plan: Plan = [(layer.weight, c)] + ([(layer.bias, s)] if layer.bias is not None else [])
    for node in seg.nodes[1:]:
        if isinstance(node.op, BatchNorm):  # (s x - s mean) / sd * gamma + s beta = s * BN(x)
            plan += [(node.op.mean, s), (node.op.bias, s)]
    return plan, s


def _learned(seg: Segment) -> bool:
    """A weighted layer that carries a share of the factor: not a resampling's fixed constant (which passes
    the scale on unchanged, like a pool: its weight is never touched)."""
    return seg.layer is not None and not is_fixed(seg.layer)


def _uniform_plan(graph: Graph, found: list[Segment], c: float) -> Plan | None:
    """The uniform plan over the graph's segments `found`, or None when some op would not carry the scale
    exactly."""
    segs = segment_of(found)
    scale: dict[str, float] = {INPUT: 1.0}
    plan: Plan = []
    for node in graph.nodes:
        ins = [scale[i] for i in node.inputs]
        seg = segs.get(node.name)
        if seg is not None and seg.layer is not None:
            if node is seg.first:
                p, s = _segment_plan(seg, ins[0], c if _learned(seg) else 1.0)
                plan += p
                for n in seg.nodes:
                    scale[n.name] = s
            continue
        op = node.op
        if isinstance(op, (Add, Concat)):
            if max(ins) > min(ins) * (1 + 1e-12):
                return None
        elif isinstance(op, Activation):
            if op.fn not in HOMOGENEOUS and ins[0] != 1.0:
                return None
        elif isinstance(op, (Affine, BatchNorm)):
            if ins[0] != 1.0:  # a constant shift after a scaled layer: scale it too
                plan.append((op.shift if isinstance(op, Affine) else op.bias, ins[0]))
                if isinstance(op, BatchNorm):
                    plan.append((op.mean, ins[0]))
        elif isinstance(op, Softmax):
            if node.name != graph.output:
                return None
        elif not isinstance(op, SCALE_PASSING):
            return None
        scale[node.name] = ins[0]
    return plan


def _last_layer_plan(graph: Graph, found: list[Segment], f: float) -> Plan | None:
    weighted = [s for s in found if _learned(s)]
    if not weighted:
        return None
    last = weighted[-1]
    after = graph.nodes[graph.nodes.index(last.nodes[-1]) + 1 :]
    if any(not (type(n.op).linear or isinstance(n.op, Softmax)) for n in after):
        return None
    return _segment_plan(last, 1.0, f)[0]


def rescale_logits(graph: Graph, factor: float) -> str:
    """Multiply `graph`'s logits by `factor` > 0 in place, predictions unchanged (module docstring).

    Returns how: "uniform", "last layer" or "" (not possible for this graph: nothing changed)."""
    if not (factor > 0 and math.isfinite(factor)):
        raise ValueError(f"rescale factor must be positive and finite, got {factor}")
    found = find_segments(graph)
    n = sum(1 for s in found if _learned(s))
    how, plan = "uniform", _uniform_plan(graph, found, factor ** (1.0 / max(n, 1)))
    if plan is None:
        how, plan = "last layer", _last_layer_plan(graph, found, factor)
    if plan is None:
        return ""
    with torch.no_grad():
        for t, m in plan:
            t.mul_(m)
    return how


__all__ = ["rescale_logits"]
