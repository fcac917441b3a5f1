"""`fantastic4`: the Fantastic-Four bound (Singla & Feizi 2021, "Fantastic Four: Differentiable Bounds
on Singular Values of Convolution Layers"), summed over the conv layers.

For a kernel K [c_out, c_in, h, w] (a BatchNorm right after the conv folded in),

    ||conv_K||_2 <= sqrt(h*w) * min(||R1||, ||R2||, ||R3||, ||R4||)

with the four reshapings R1 = [c_out*h, c_in*w], R2 = [c_out*w, c_in*h], R3 = [c_out, c_in*h*w]
(Miyato's matrix), R4 = [c_out*h*w, c_in]; it holds for zero and circular padding and any stride
(a strided conv is a row subset of the stride-1 one). Grouped convs: the max over groups. Each
||R_i|| comes from a persistent power iteration (one step per training step, gradient u v^T); the min
is differentiable almost everywhere. Linear layers contribute their exact sigma (one power step), so
dense heads are not left unregularised; ConvTranspose layers their operator sigma.

    penalty = lambda * sum_l bound_l
"""

from __future__ import annotations

import math

import torch
from torch import nn

from speccert.ir.ops import Conv
from speccert.training.penalties import register_penalty
from speccert.training.penalties.base import Model, Penalty
from speccert.training.power import MatrixPowerIteration
from speccert.training.sigmas import SegmentSigmas

Tensor = torch.Tensor


def reshapings(k: Tensor) -> list[Tensor]:
    """The four matrices of the Fantastic-Four bound for a kernel [c_out, c_in, h, w]."""
    co, ci, h, w = k.shape
    return [
        k.permute(0, 2, 1, 3).reshape(co * h, ci * w),
        k.permute(0, 3, 1, 2).reshape(co * w, ci * h),
        k.reshape(co, ci * h * w),
        k.permute(0, 2, 3, 1).reshape(co * h * w, ci),
    ]


def fantastic4_bound_exact(k: Tensor, groups: int = 1) -> float:
    """The bound with exact SVDs (float64): a true upper bound on the conv's operator norm."""
    k4 = k.detach().double()
    if k4.dim() == 3:
        k4 = k4.unsqueeze(-1)
    h, w = k4.shape[2], k4.shape[3]
    best = 0.0
    for kg in k4.chunk(groups, dim=0):
        m = min(float(torch.linalg.matrix_norm(r, 2)) for r in reshapings(kg))
        best = max(best, math.sqrt(h * w) * m)
    return best


@register_penalty("fantastic4")
class Fantastic4Penalty(Penalty):
    """lambda * sum over conv layers of sqrt(hw) * min_i ||R_i(K_l)||_2 (Singla & Feizi 2021)."""

    default_weight = 0.01
    summary = "λ·Σ_conv √(hw)·min of 4 reshaped-kernel norms (Singla & Feizi 2021)"

    def __init__(self, graph, weight: float | None = None, seed: int = 0) -> None:  # noqa: ANN001
        super().__init__(graph, weight)
        self.sigmas = SegmentSigmas(graph, "operator", seed)
        gen = torch.Generator().manual_seed(seed + 1)
        self.reshape_iters = nn.ModuleDict()
        for seg in self.sigmas.weighted():
            if isinstance(seg.layer, Conv):
                k = self._kernel4(seg.effective_weight())
                its = []
                for kg in k.chunk(seg.layer.groups, dim=0):
                    for r in reshapings(kg):
                        its.append(MatrixPowerIteration((r.shape[1],), (r.shape[0],), gen, graph.dtype))
                self.reshape_iters[seg.name.replace(".", "__")] = nn.ModuleList(its)
        self._last = 0.0

    @staticmethod
    def _kernel4(w: Tensor) -> Tensor:
        return w.unsqueeze(-1) if w.dim() == 3 else w

    def bounds(self, steps: int = 1) -> dict[str, Tensor]:
        """Per-layer bound (conv: Fantastic Four; others: power-iteration sigma)."""
        out: dict[str, Tensor] = {}
        for seg in self.sigmas.weighted():
            key = seg.name.replace(".", "__")
            if key not in self.reshape_iters:
                out[seg.name] = self.sigmas.sigma(seg, steps)
                continue
            assert isinstance(seg.layer, Conv)
            k = self._kernel4(seg.effective_weight())
            h, w = k.shape[2], k.shape[3]
            its = list(self.reshape_iters[key].children())
            per_group = []
            for gi, kg in enumerate(k.chunk(seg.layer.groups, dim=0)):
                norms = []
                for ri, r in enumerate(reshapings(kg)):
                    it = its[4 * gi + ri]
                    assert isinstance(it, MatrixPowerIteration)
                    if steps and self.training:
                        it.step_matrix(r, steps)
                    norms.append(it.sigma_matrix(r))
                per_group.append(math.sqrt(h * w) * torch.stack(norms).min())
            out[seg.name] = torch.stack(per_group).max()
        return out

    def term(self, logits: Tensor, y: Tensor, x: Tensor, model: Model) -> Tensor:
        b = self.bounds()
        total = sum(b.values(), logits.new_zeros(()))
        self._last = float(total.detach())
        return total

    def steer(self) -> dict[str, float]:
        return {"sum_bounds": self._last}
