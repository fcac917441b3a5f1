"""AOL re-parametrisation (Prach & Lampert 2022, "Almost-Orthogonal Layers"): train a raw weight V,
use the rescaled weight W = V diag(d) with

    d_i = (sum_j |V^T V|_ij)^(-1/2)                                        (Linear, V: [out, in])
    d_i = (sum_j sum_delta |P_ij(delta)|)^(-1/2),  P_ij = sum_o K_oi * K_oj  (Conv: the kernels'
                                                   cross-correlation over all 2-d shifts delta)

so that ||W||_2 <= 1 whatever V is. Proof (Prach & Lampert, Theorem 1): with P = V^T V and
D = diag(d), for every x, x^T D P D x <= sum_ij |P_ij| |d_i x_i| |d_j x_j|
<= sum_ij |P_ij| (d_i^2 x_i^2 + d_j^2 x_j^2) / 2 = sum_i d_i^2 x_i^2 sum_j |P_ij| = ||x||^2.
For a convolution P is the Gram of the infinite convolution (entries P_ij(delta)); a zero-padded or
strided convolution with the same kernel is a restriction of it (rows and columns selected). Not so a
circular one: with 2 * pad > k - 1 its output repeats rows (k = 2, pad = 1 on 4 x 4: norm 1.44 after
AOL), so circular convolutions are left unconstrained.

What it is for: a 1-Lipschitz-by-construction training set-up from a plain model, exported as plain
layers (the written file has ordinary weights W). It never feeds a certificate: the certifier
re-measures the written file; AOL's bound only keeps the training's per-layer norms at or below 1.

`AOLReparam(graph, layers)` keeps V for each named layer; inside `with reparam.active():` the graph's
ops compute with aol(V) (differentiable); `sync()` writes aol(V) into the graph's weight tensors after
each optimiser step, so the graph certified between epochs and the file written at the end are the
trained map. Grouped, dilated or circular convolutions are left unconstrained (not AOL's formula).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from speccert.ir.graph import Graph
from speccert.ir.ops import Conv, Linear, is_fixed

Tensor = torch.Tensor


def aol_scale(weight: Tensor) -> Tensor:
    """d (one entry per input feature / channel) of a Linear [out, in] or Conv2d [out, in, kh, kw] weight."""
    if weight.dim() == 2:
        gram = weight.t() @ weight
        return gram.abs().sum(1).clamp_min(1e-30).rsqrt()
    if weight.dim() != 4:
        raise ValueError(f"AOL needs a 2-d or 4-d weight, got shape {tuple(weight.shape)}")
    kt = weight.transpose(0, 1)  # [in, out, kh, kw]: input channel i as a batch item
    corr = F.conv2d(kt, kt, padding=(weight.shape[2] - 1, weight.shape[3] - 1))  # [in, in, 2kh-1, 2kw-1]
    return corr.abs().sum((1, 2, 3)).clamp_min(1e-30).rsqrt()


def aol(weight: Tensor) -> Tensor:
    """W = V diag(d) (module docstring): spectral norm <= 1 as a Linear or as any zero-padded, strided
    2-d convolution with this kernel (not a circular one, see the module docstring)."""
    d = aol_scale(weight)
    return weight * d.reshape((1, -1) + (1,) * (weight.dim() - 2))


def hidden_layers(graph: Graph) -> list[str]:
    """The layers AOL applies to: every Linear and zero-padded 2-d Conv (no groups, no dilation) but the last
    weighted layer, the head, left free: its scale is the logits' temperature, and the pairwise
    certificate uses its rows' differences ||w_y - w_j|| directly."""
    weighted = [n for n in graph.nodes if isinstance(n.op, (Linear, Conv))]
    out = []
    for node in weighted[:-1]:
        op = node.op
        if is_fixed(op):  # an interpolation matrix: a constant, never trained
            continue
        if isinstance(op, Linear) or (
            isinstance(op, Conv)
            and op.weight.dim() == 4
            and op.groups == 1
            and set(op.dilation) == {1}
            and op.padding_mode == "zeros"
        ):
            out.append(node.name)
    return out


class AOLReparam(nn.Module):
    """Raw weights V of the named layers of `graph`; the graph's own weights become aol(V)."""

    def __init__(self, graph: Graph, layers: list[str]) -> None:
        super().__init__()
        self.graph = graph
        self.names = list(layers)
        self.raw = nn.ParameterList()
        for name in self.names:
            w = graph.node(name).op.weight  # type: ignore[attr-defined]  # Linear/Conv (hidden_layers)
            self.raw.append(nn.Parameter(w.detach().clone()))
            w.requires_grad_(False)  # trained through V only
        # No sync here: until the first step the graph is the input model (epoch 0 measures it).

    def _ops(self) -> Iterator[tuple[object, nn.Parameter]]:
        for name, v in zip(self.names, self.raw, strict=True):
            yield self.graph.node(name).op, v

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """Within the block the graph computes with aol(V), with gradient to V."""
        saved = [(op, op.weight) for op, _ in self._ops()]  # type: ignore[attr-defined]
        try:
            for op, v in self._ops():
                object.__setattr__(op, "weight", aol(v))
            yield
        finally:
            for op, w in saved:
                object.__setattr__(op, "weight", w)

    @torch.no_grad()
    def start(self) -> dict[str, float]:
        """Before the first step: the graph's weights become aol(V), and the constants follow.

        aol(V) is V shrunk (by ratio r_l = ||aol(V)||_F / ||V||_F on average); a bias kept as it was
        would then dominate its layer's output (after folded BatchNorms, by orders of magnitude: the
        net collapses to one class). So each layer's bias is multiplied by the scale s of its output,
        s_out = s_in * r_l (s = 1 at the input; at an Add the largest input scale, the dominant branch),
        and the free head's weight is divided by its input's scale, so the logits keep their size.
        A heuristic start, not a function-preserving map (AOL rescales input channels unevenly).
        Returns the scale at every reparametrised layer's output."""
        ratio = {
            n: float(aol(v).norm() / v.norm().clamp_min(1e-30))
            for n, v in zip(self.names, self.raw, strict=True)
        }
        scale: dict[str, float] = {}
        head = [n for n in self.graph.nodes if isinstance(n.op, (Linear, Conv))][-1].name
        for node in self.graph.nodes:
            s_in = max((scale.get(i, 1.0) for i in node.inputs), default=1.0)
            op = node.op
            if node.name in ratio:
                s_in *= ratio[node.name]
                if op.bias is not None:  # type: ignore[attr-defined]
                    op.bias.mul_(s_in)  # type: ignore[attr-defined]
            elif node.name == head:
                op.weight.div_(s_in)  # type: ignore[attr-defined]
                s_in = 1.0
            scale[node.name] = s_in
        self.sync()
        return {n: scale[n] for n in self.names}

    @torch.no_grad()
    def sync(self) -> None:
        """Write aol(V) into the graph's weight tensors (in place: the module and graph share them)."""
        for op, v in self._ops():
            op.weight.copy_(aol(v))  # type: ignore[attr-defined]


__all__ = ["AOLReparam", "aol", "aol_scale", "hidden_layers"]
