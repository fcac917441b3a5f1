"""Gradient ascent on difference quotients: a lower bound of a Lipschitz constant, for the rule tests."""

from __future__ import annotations

from collections.abc import Callable

import torch

D = torch.float64


def ascent(f: Callable[[torch.Tensor], torch.Tensor], x0: torch.Tensor, steps: int = 60) -> float:
    """The largest ||f(x) - f(y)|| / ||x - y|| met by gradient ascent over pairs from x0 (a lower
    bound of L; the Jacobian of these piecewise-linear maps is locally constant, so its norm has no
    gradient, but the difference quotient has one)."""
    x = x0.clone().requires_grad_(True)
    y = (
        x0 + 0.3 * torch.randn(x0.shape, generator=torch.Generator().manual_seed(7), dtype=D)
    ).requires_grad_(True)
    opt = torch.optim.Adam([x, y], lr=0.03)
    best = 0.0
    for _ in range(steps):
        val = (f(x) - f(y)).norm() / (x - y).norm()
        best = max(best, float(val))
        opt.zero_grad()
        (-val).backward()
        opt.step()
    return best
