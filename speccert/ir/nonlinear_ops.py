"""Nonlinear IR operators with one input, each bounded by its own rule in speccert.bounds.compose
(a slope, a pooling factor, 1/sqrt(eps)), plus Softmax (output only) and Opaque (no bound)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F

from speccert.ir.activations import ACTIVATIONS
from speccert.ir.op_base import Op, Pads, Tensor, symmetric, torch_pad_arg


@dataclass(frozen=True, eq=False)
class Activation(Op):
    """Elementwise activation from the activation registry (speccert.ir.activations)."""

    op_type: ClassVar[str] = "Activation"
    fn: str
    alpha: float = 0.0

    def forward(self, *xs: Tensor) -> Tensor:
        return ACTIVATIONS.get(self.fn).fn(xs[0], self.alpha)

    def describe(self) -> str:
        return f"Activation {self.fn}" + (f"({self.alpha:g})" if self.fn in ("leaky_relu", "elu") else "")


@dataclass(frozen=True, eq=False)
class PRelu(Op):
    """PReLU with a slope per channel (or element): x for x >= 0, slope * x below; `slope` broadcasts to
    the input without the batch axis. A single shared slope imports as Activation leaky_relu instead.

    Lipschitz max(1, max_i |slope_i|): elementwise, coordinate i piecewise linear with slopes 1 and
    slope_i. Not smooth. The slope is a constant of the graph, not a trainable parameter."""

    op_type: ClassVar[str] = "PRelu"
    slope: Tensor

    def forward(self, *xs: Tensor) -> Tensor:
        x = xs[0]
        return torch.where(x >= 0, x, x * self.slope.to(x.dtype))

    def describe(self) -> str:
        return f"PRelu ({self.slope.numel()} slopes)"


@dataclass(frozen=True, eq=False)
class Standardize(Op):
    """Normalisation over the last `axes` axes, without an affine part (importers write gamma, beta as
    an Affine node after it): y = (x - mean) / sqrt(var + eps), mean and biased var over those axes.

    LayerNorm over channels is axes = 1 on a channels-last tensor; GroupNorm is a Reshape to
    [groups, rest], this op with axes = 1, a Reshape back and a per-channel Affine.
    Lipschitz constant 1/sqrt(eps): per normalised block of n entries, with y0 = x - mean (an
    orthogonal projection P of x, norm 1) and s = sqrt(|y0|^2 / n + eps), the Jacobian is
    (1/s) (I - y0 y0^T / (n s^2)) P, whose norm is 1/s <= 1/sqrt(eps) (the sup, reached as the
    block's variance goes to 0); blocks are independent, so the Jacobian is block-diagonal. How loose:
    at an input of variance v the local slope is 1/sqrt(v + eps), smaller by sqrt(eps / (v + eps)).
    """

    op_type: ClassVar[str] = "Standardize"
    axes: int = 1
    eps: float = 1e-5

    def forward(self, *xs: Tensor) -> Tensor:
        x = xs[0]
        return F.layer_norm(x, x.shape[x.dim() - self.axes :], None, None, self.eps)

    def describe(self) -> str:
        return f"Standardize last {self.axes} axes eps={self.eps:g}"


@dataclass(frozen=True, eq=False)
class MaxPool(Op):
    op_type: ClassVar[str] = "MaxPool"
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    padding: Pads
    dilation: tuple[int, ...]
    ceil_mode: bool = False

    def forward(self, *xs: Tensor) -> Tensor:
        x = xs[0]
        pool = F.max_pool1d if len(self.kernel) == 1 else F.max_pool2d
        sym = symmetric(self.padding)
        if sym is None or any(2 * p > k for p, k in zip(sym, self.kernel, strict=True)):
            x = F.pad(x, torch_pad_arg(self.padding), value=float("-inf"))
            sym = tuple(0 for _ in self.kernel)
        return pool(x, self.kernel, self.stride, sym, self.dilation, self.ceil_mode)

    def describe(self) -> str:
        return f"MaxPool {'x'.join(map(str, self.kernel))} s{','.join(map(str, self.stride))}"


@dataclass(frozen=True, eq=False)
class Softmax(Op):
    """Softmax or log-softmax over the last axis; only allowed as the graph's output."""

    op_type: ClassVar[str] = "Softmax"
    log: bool = False

    def forward(self, *xs: Tensor) -> Tensor:
        return F.log_softmax(xs[0], dim=-1) if self.log else F.softmax(xs[0], dim=-1)

    def describe(self) -> str:
        return "LogSoftmax" if self.log else "Softmax"


@dataclass(frozen=True, eq=False)
class Opaque(Op):
    """An operator outside the closed set (e.g. Sign). The graph can run it when `fn` is known (so
    `inspect` still works) but no bound exists: certification refuses graphs that contain one."""

    op_type: ClassVar[str] = "Opaque"
    n_inputs: ClassVar[int] = -1
    source_op: str = "?"
    reason: str = "no Lipschitz bound"
    fn: Callable[..., Tensor] | None = field(default=None, repr=False)

    def forward(self, *xs: Tensor) -> Tensor:
        if self.fn is None:
            raise NotImplementedError(f"operator {self.source_op} cannot be evaluated")
        return self.fn(*xs)

    def describe(self) -> str:
        return f"{self.source_op} (unsupported)"


@dataclass(frozen=True, eq=False)
class L2Pool(Op):
    """y_w = sqrt(multiplier * mean of x^2 over window w), unpadded windows of `kernel` spaced `stride`:
    torch's LPPool2d with p = 2 (multiplier = kh kw, so y_w = ||x_w||_2, the window's L2 norm) and
    deel-torchlip's ScaledL2NormPool2d (the same, times a constant, which imports as an Affine after).

    Lipschitz (speccert.bounds.compose.l2pool_factor): with n_w the entries of window w (kh kw, or
    fewer for a ceil_mode window cut by the border) and a_w = sqrt(multiplier / n_w), y_w = a_w ||x_w||,
    so |y_w - y'_w| <= a_w ||x_w - x'_w|| (reverse triangle inequality) and
    sum_w (y_w - y'_w)^2 <= max_w a_w^2 sum_w ||x_w - x'_w||^2 = max_w a_w^2 sum_p c(p) (x_p - x'_p)^2
    <= max_w a_w^2 max_p c(p) ||x - x'||^2, with c(p) the number of windows holding entry p. For
    LPPool's full windows a_w = 1; with stride = kernel (deel's only choice) c = 1: factor exactly 1, and
    the pool is gradient-norm preserving (y_w moves by ||dx_w|| along x_w). Not smooth (sqrt at 0).
    The file computes sign(m) relu(|m|) of the pooled mean m, which is m: written here as m."""

    op_type: ClassVar[str] = "L2Pool"
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    ceil_mode: bool = False
    multiplier: float = 1.0

    def forward(self, *xs: Tensor) -> Tensor:
        x = xs[0]
        pool = F.avg_pool1d if len(self.kernel) == 1 else F.avg_pool2d
        mean = pool(x * x, self.kernel, self.stride, 0, self.ceil_mode)
        return torch.sqrt(mean * self.multiplier)

    def describe(self) -> str:
        return f"L2Pool {'x'.join(map(str, self.kernel))} s{','.join(map(str, self.stride))}"


@dataclass(frozen=True, eq=False)
class Householder(Op):
    """deel-torchlip's HouseHolder activation (Singla et al. 2022) on channel pairs: the input's channel
    axis (0) is split into halves x, y; pair i, with angle theta_i, is left alone where
    s = x sin(theta/2) - y cos(theta/2) <= 0 and reflected, (x cos theta + y sin theta,
    x sin theta - y cos theta), where s > 0.

    1-Lipschitz and gradient-norm preserving: with v = (sin(theta/2), -cos(theta/2)) (a unit vector),
    s = v.z for z = (x, y), and the reflection is R = I - 2 v v^T (its matrix is
    [[cos theta, sin theta], [sin theta, -cos theta]]), so the map is z -> z - 2 max(0, v.z) v: continuous
    (the two pieces agree where v.z = 0), piecewise linear with orthogonal pieces I and R, hence
    ||f(z) - f(z')|| <= ||z - z'|| along every segment; pairs are disjoint coordinates. Not smooth.
    `theta` holds one angle per pair; the map is this exact function of it (sines and cosines of the
    real theta), which is how the file computes it when it stores theta and applies Sin and Cos."""

    op_type: ClassVar[str] = "Householder"
    theta: Tensor

    def parameters(self) -> dict[str, Tensor]:
        return {"theta": self.theta}  # learned angles: trained by finetune like any weight

    def forward(self, *xs: Tensor) -> Tensor:
        z = xs[0]
        x, y = z.chunk(2, dim=1)
        t = self.theta.to(z.dtype).reshape((1, -1) + (1,) * (z.dim() - 2))
        s = x * torch.sin(0.5 * t) - y * torch.cos(0.5 * t)
        keep = s <= 0
        a = torch.where(keep, x, x * torch.cos(t) + y * torch.sin(t))
        b = torch.where(keep, y, x * torch.sin(t) - y * torch.cos(t))
        return torch.cat([a, b], dim=1)

    def describe(self) -> str:
        return f"Householder ({self.theta.numel()} pairs)"
