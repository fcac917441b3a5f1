"""Persistent power iteration (Yoshida & Miyato 2017): one step per training step, vectors kept.

For a linear map A (a matrix, or any linear function such as a convolution with its real padding and
stride), the state is a unit pair (u, v). One step: v <- A^T u / ||A^T u||, u <- A v / ||A v||, then
sigma = <u, A v> is computed *with* autograd through A's parameters while u, v are constants, so

    d sigma / d W = u v^T   (for a matrix; for a conv, the same bilinear form's gradient),

which is the gradient of the top singular value at convergence. sigma converges to ||A||_2 from below:
it steers training only; certificates come from the certifier's sound bounds.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

Tensor = torch.Tensor


def _unit(t: Tensor) -> Tensor:
    return t / t.norm().clamp_min(1e-12)


class PowerIteration(nn.Module):
    """State (u, v) of the power iteration of one linear map; buffers, so they checkpoint and resume.

    `in_shape` / `out_shape` are A's input/output shapes *without* a batch axis (a matrix [m, n] has
    in_shape (n,), out_shape (m,)).
    """

    u: Tensor
    v: Tensor

    def __init__(
        self,
        in_shape: tuple[int, ...],
        out_shape: tuple[int, ...],
        generator: torch.Generator,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        self.register_buffer(
            "v", _unit(torch.randn(in_shape, generator=generator, dtype=torch.float64)).to(dtype)
        )
        self.register_buffer(
            "u", _unit(torch.randn(out_shape, generator=generator, dtype=torch.float64)).to(dtype)
        )

    def step(self, apply: Callable[[Tensor], Tensor], n: int = 1) -> None:
        """n power-iteration steps on A = apply (which maps a batch [1, *in] to [1, *out])."""
        with torch.enable_grad():
            for _ in range(n):
                x = self.v.detach().unsqueeze(0).requires_grad_(True)
                y = apply(x)
                (at_u,) = torch.autograd.grad(y, x, self.u.to(y.dtype).unsqueeze(0))
                v = _unit(at_u.detach()[0])
                with torch.no_grad():
                    u = _unit(apply(v.unsqueeze(0))[0])
                self.v.copy_(v.to(self.v.dtype))
                self.u.copy_(u.to(self.u.dtype))

    def sigma(self, apply: Callable[[Tensor], Tensor]) -> Tensor:
        """<u, A v> with gradient through A's parameters (u, v constant)."""
        y = apply(self.v.detach().unsqueeze(0))[0]
        return (self.u.detach().to(y.dtype) * y).sum()


class MatrixPowerIteration(PowerIteration):
    """Power iteration on an explicit matrix W [m, n] (no autograd needed for the step)."""

    def step_matrix(self, w: Tensor, n: int = 1) -> None:
        with torch.no_grad():
            w = w.detach()
            for _ in range(n):
                v = _unit(w.T @ self.u.to(w.dtype))
                u = _unit(w @ v)
                self.v.copy_(v.to(self.v.dtype))
                self.u.copy_(u.to(self.u.dtype))

    def sigma_matrix(self, w: Tensor) -> Tensor:
        return self.u.detach().to(w.dtype) @ w @ self.v.detach().to(w.dtype)
