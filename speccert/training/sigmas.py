"""Differentiable per-segment spectral norms of a graph, and their composition over the DAG.

`SegmentSigmas(graph, conv_mode)` keeps one persistent power iteration per segment and returns
sigma_s for every segment (a tensor; with gradient for segments holding trained parameters).
conv_mode:
- "operator": the norm of the convolution as the linear map it is on the real input size, with its
  padding and stride (power iteration through conv / its adjoint); DESIGN.md's right quantity;
- "kernel": Miyato et al.'s heuristic, the norm of the kernel reshaped to [c_out, c_in*kh*kw]
  (cheaper; neither an upper nor a lower bound of the operator norm).

`compose_lipschitz` combines them with the certifier's own rules table and composition
(speccert.bounds.compose, in differentiable tensors): linear segment sigma*L, activation slope*L,
Add L_a + L_b, Concat sqrt(sum L_i^2), MaxPool sqrt(prod c_i).
`compose_curvature` carries (L, K) where K bounds the Lipschitz constant of the Jacobian:
linear (sigma L, sigma K); smooth activation with slope a and curvature c: (a L, a K + c L^2);
Add sums; the rule is (g o h)'s K <= K_g L_h^2 + L_g K_h.
Both are exact functions of the sigmas; the sigmas are power-iteration *estimates*, so these steer
training and never certify.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from speccert.bounds.compose import Composed, compose
from speccert.errors import UsageError
from speccert.ir.graph import Graph, Node
from speccert.ir.ops import Activation, BatchNorm, Conv, Linear
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


class _Tensors:
    """Differentiable torch scalars in the graph's dtype (training's arithmetic for compose)."""

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype

    def const(self, x: float) -> Tensor:
        return torch.full((), x, dtype=self.dtype)

    def mul(self, factor: Tensor | float, value: Tensor) -> Tensor:
        return factor * value

    def add(self, a: Tensor, b: Tensor) -> Tensor:
        return a + b

    def square(self, a: Tensor) -> Tensor:
        return a**2

    def hypot(self, xs: Sequence[Tensor]) -> Tensor:
        return torch.sqrt(sum((x**2 for x in xs), torch.zeros((), dtype=self.dtype)))


def compose_lipschitz(
    graph: Graph, sigmas: dict[str, Tensor], *, slopes: bool = True, upto: str | None = None
) -> Tensor:
    """L of the output (or of node `upto`) from per-segment sigmas over the DAG.

    slopes=False treats every activation, pool and constant as 1 (the weight-scale-invariant form)."""
    out = _compose(graph, sigmas, slopes, upto, curvature=False)
    return out.lipschitz[upto if upto is not None else graph.output]


def compose_curvature(graph: Graph, sigmas: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """(L, K) of the output: K bounds ||Hessian|| of every output coordinate (given exact sigmas)."""
    out = _compose(graph, sigmas, True, None, curvature=True)
    if out.curvature is None:
        node = out.rough
        assert node is not None
        if isinstance(node.op, Activation):
            raise UsageError(
                f"the curvature bound needs smooth activations; node '{node.name}' is "
                f"{node.op.fn} (use softplus, tanh, sigmoid, gelu, silu or elu(1))"
            )
        raise UsageError(
            f"the curvature bound needs a smooth network; node '{node.name}' is a {node.op_type}"
        )
    return out.lipschitz[graph.output], out.curvature[graph.output]


def _compose(
    graph: Graph, sigmas: dict[str, Tensor], slopes: bool, upto: str | None, curvature: bool
) -> Composed[Tensor]:
    """speccert.bounds.compose over the segments: a segment's last node carries its sigma, the nodes
    before it pass their input's bounds on; weightless segments count 1 when slopes=False."""
    segs = segment_of(find_segments(graph))
    one = torch.ones((), dtype=graph.dtype)

    def norm_of(node: Node) -> Tensor | None:
        seg = segs[node.name]
        if node is not seg.nodes[-1]:
            return None
        return sigmas[seg.name] if (slopes or seg.layer is not None) else one

    return compose(graph, norm_of, _Tensors(graph.dtype), curvature=curvature, slopes=slopes, upto=upto)
