"""Differentiable per-segment spectral norms of a graph, and their composition over the DAG.

`SegmentSigmas(graph, conv_mode)` keeps one persistent power iteration per segment and returns
sigma_s for every segment (a tensor; with gradient for segments holding trained parameters).
conv_mode:
- "operator": the norm of the convolution as the linear map it is on the real input size, with its
  padding and stride (power iteration through conv / its adjoint); DESIGN.md's right quantity;
- "kernel": Miyato et al.'s heuristic, the norm of the kernel reshaped to [c_out, c_in*kh*kw]
  (cheaper; neither an upper nor a lower bound of the operator norm).

`compose_lipschitz` combines them with the DAG rules of the certifier (DESIGN.md): linear segment
sigma*L, activation slope*L, Add L_a + L_b, Concat sqrt(sum L_i^2), MaxPool sqrt(c_h*c_w).
`compose_curvature` carries (L, K) where K bounds the Lipschitz constant of the Jacobian:
linear (sigma L, sigma K); smooth activation with slope a and curvature c: (a L, a K + c L^2);
Add sums; the rule is (g o h)'s K <= K_g L_h^2 + L_g K_h.
Both are exact functions of the sigmas; the sigmas are power-iteration *estimates*, so these steer
training and never certify.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from speccert.bounds.lipschitz import standardize_factor
from speccert.errors import UnsupportedModelError, UsageError
from speccert.ir.activations import activation_curvature, activation_lipschitz
from speccert.ir.graph import INPUT, Graph
from speccert.ir.ops import (
    Activation,
    Add,
    BatchNorm,
    Concat,
    Conv,
    Linear,
    MaxPool,
    Slice,
    Softmax,
    Standardize,
)
from speccert.training.power import MatrixPowerIteration, PowerIteration
from speccert.training.segments import Segment, bn_scale, find_segments, segment_of

Tensor = torch.Tensor
CONV_MODES = ("operator", "kernel")


def _kernel_matrix(w: Tensor) -> Tensor:
    return w.reshape(w.shape[0], -1)


class SegmentSigmas(nn.Module):
    """Persistent power-iteration estimates of every segment's spectral norm."""

    def __init__(
        self, graph: Graph, conv_mode: str = "operator", seed: int = 0, const_iters: int = 100
    ) -> None:
        super().__init__()
        if conv_mode not in CONV_MODES:
            raise UsageError(f"conv_mode must be one of {', '.join(CONV_MODES)}, got {conv_mode!r}")
        self.graph = graph
        self.conv_mode = conv_mode
        self.segments = find_segments(graph)
        gen = torch.Generator().manual_seed(seed)
        self.iters = nn.ModuleDict()
        self._const: dict[str, float] = {}
        dtype = graph.dtype
        for seg in self.segments:
            key = self._key(seg)
            layer = seg.layer
            if layer is not None:
                if isinstance(layer, Linear) or (isinstance(layer, Conv) and conv_mode == "kernel"):
                    m = _kernel_matrix(seg.effective_weight())
                    self.iters[key] = MatrixPowerIteration((m.shape[1],), (m.shape[0],), gen, dtype)
                else:
                    self.iters[key] = PowerIteration(seg.in_shape, seg.out_shape, gen, dtype)
            elif len(seg.nodes) == 1 and isinstance(seg.nodes[0].op, BatchNorm):
                continue  # differentiable closed form max |gamma / sqrt(var + eps)|
            else:
                exact = seg.exact_constant_norm()
                if exact is None:  # pools etc.: a constant, estimated once to convergence
                    pi = PowerIteration(seg.in_shape, seg.out_shape, gen, torch.float64)

                    def apply64(x: Tensor, seg: Segment = seg) -> Tensor:
                        return seg.apply(x.to(dtype)).to(torch.float64)

                    pi.step(apply64, const_iters)
                    exact = float(pi.sigma(apply64).detach())
                self._const[seg.name] = exact

    @staticmethod
    def _key(seg: Segment) -> str:
        return seg.name.replace(".", "__")

    def weighted(self) -> list[Segment]:
        return [s for s in self.segments if s.layer is not None]

    def sigma(self, seg: Segment, steps: int = 1) -> Tensor:
        """sigma of one segment after `steps` power-iteration steps (0: no update)."""
        if seg.name in self._const:
            return torch.tensor(self._const[seg.name], dtype=self.graph.dtype)
        if seg.layer is None:  # standalone BatchNorm
            op = seg.nodes[0].op
            assert isinstance(op, BatchNorm)
            return bn_scale(op).abs().max()
        it = self.iters[self._key(seg)]
        if isinstance(it, MatrixPowerIteration):
            m = _kernel_matrix(seg.effective_weight())
            if steps and self.training:
                it.step_matrix(m, steps)
            return it.sigma_matrix(m)
        assert isinstance(it, PowerIteration)
        if steps and self.training:
            it.step(seg.apply, steps)
        return it.sigma(seg.apply)

    def forward(self, steps: int = 1) -> dict[str, Tensor]:
        """sigma for every segment, keyed by the segment's (last node's) name."""
        return {seg.name: self.sigma(seg, steps) for seg in self.segments}


def _maxpool_factor(op: MaxPool, in_shape: tuple[int, ...]) -> float:
    """sqrt(prod_axes c) with c = ceil(min(k, n + 2p - k + 1) / s): how many windows can cover one pixel."""
    f = 1
    for ax, (k, s) in enumerate(zip(op.kernel, op.stride, strict=True)):
        n = in_shape[1 + ax]
        p = sum(op.padding[ax])
        keff = (op.dilation[ax] if op.dilation else 1) * (k - 1) + 1
        f *= math.ceil(min(keff, n + p - keff + 1) / s)
    return math.sqrt(max(f, 1))


def compose_lipschitz(
    graph: Graph, sigmas: dict[str, Tensor], *, slopes: bool = True, upto: str | None = None
) -> Tensor:
    """L of the output (or of node `upto`) from per-segment sigmas over the DAG.

    slopes=False treats every activation, pool and constant as 1 (the weight-scale-invariant form)."""
    return _compose(graph, sigmas, slopes, upto, curvature=False)[0]


def compose_curvature(graph: Graph, sigmas: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """(L, K) of the output: K bounds ||Hessian|| of every output coordinate (given exact sigmas)."""
    return _compose(graph, sigmas, True, None, curvature=True)


def _compose(
    graph: Graph, sigmas: dict[str, Tensor], slopes: bool, upto: str | None, curvature: bool
) -> tuple[Tensor, Tensor]:
    segs = segment_of(find_segments(graph))
    one = torch.ones((), dtype=graph.dtype)
    lip: dict[str, Tensor] = {INPUT: one}
    curv: dict[str, Tensor] = {INPUT: torch.zeros((), dtype=graph.dtype)}
    for node in graph.nodes:
        ins = node.inputs
        if node.name in segs:
            seg = segs[node.name]
            if node is not seg.nodes[-1]:
                lip[node.name], curv[node.name] = lip[ins[0]], curv[ins[0]]
                continue
            first_in = seg.first.inputs[0]
            s = sigmas[seg.name] if (slopes or seg.layer is not None) else one
            lip[node.name], curv[node.name] = s * lip[first_in], s * curv[first_in]
        elif isinstance(node.op, Activation):
            a = activation_lipschitz(node.op.fn, node.op.alpha) if slopes else 1.0
            lip[node.name], curv[node.name] = a * lip[ins[0]], a * curv[ins[0]]
            if curvature:
                c = activation_curvature(node.op.fn, node.op.alpha)
                if c is None:
                    raise UsageError(
                        f"the curvature bound needs smooth activations; node '{node.name}' is "
                        f"{node.op.fn} (use softplus, tanh, sigmoid, gelu, silu or elu(1))"
                    )
                curv[node.name] = a * curv[ins[0]] + c * lip[ins[0]] ** 2
        elif isinstance(node.op, Add):
            lip[node.name] = lip[ins[0]] + lip[ins[1]]
            curv[node.name] = curv[ins[0]] + curv[ins[1]]
        elif isinstance(node.op, Concat):
            lip[node.name] = torch.sqrt(sum((lip[i] ** 2 for i in ins), torch.zeros_like(one)))
            curv[node.name] = torch.sqrt(sum((curv[i] ** 2 for i in ins), torch.zeros_like(one)))
        elif isinstance(node.op, MaxPool):
            if curvature:
                raise UsageError(
                    f"the curvature bound needs a smooth network; node '{node.name}' is a MaxPool"
                )
            f = _maxpool_factor(node.op, graph.shape_of(ins[0])) if slopes else 1.0
            lip[node.name], curv[node.name] = f * lip[ins[0]], f * curv[ins[0]]
        elif isinstance(node.op, Slice):  # a coordinate selection: 1-Lipschitz, linear
            lip[node.name], curv[node.name] = lip[ins[0]], curv[ins[0]]
        elif isinstance(node.op, Standardize):
            if curvature:
                raise UsageError(f"the curvature bound does not cover Standardize (node '{node.name}')")
            f = standardize_factor(node.op) if slopes else 1.0
            lip[node.name], curv[node.name] = f * lip[ins[0]], f * curv[ins[0]]
        elif isinstance(node.op, Softmax):  # output only: certificates are on the logits
            lip[node.name], curv[node.name] = lip[ins[0]], curv[ins[0]]
        else:
            raise UnsupportedModelError(
                "no bound for", [(node.op_type, node.name, "not handled by training bounds")]
            )
        if upto is not None and node.name == upto:
            return lip[node.name], curv[node.name]
    out = graph.output
    return lip[out], curv[out]
