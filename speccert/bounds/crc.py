"""The dual refinement of the curvature certificate (CRC, Singla & Feizi 2021), made sound in floating point.

For a margin m = f_y - f_j whose gradient is K-Lipschitz (so the Hessian is >= -K I), radius rho is
certified if min over ||x - x0|| <= rho of m(x) > 0. Weak duality: for any eta >= 0,
    min_{||x - x0|| <= rho} m(x) >= d(eta) = min_x F(x) - eta rho^2,   F(x) = m(x) + eta ||x - x0||^2,
because the added term is <= 0 on the ball. For eta > K/2, F is mu-strongly convex (mu = 2 eta - K), so
for ANY point x~ (here: gradient descent on F from x0, step 1/(2 eta + K))
    min_x F >= F(x~) - ||grad F(x~)||^2 / (2 mu).
So rho is certified when F(x~) - ||grad F(x~)||^2 / (2 mu) - eta rho^2 > 0. We take
eta = K/2 + g0/(2 rho) (g0 = ||grad m(x0)||): at x~ = x0 the test is exactly the closed-form radius
m - g0 rho - K rho^2 / 2 > 0, so descent can only extend it; the radius is found by bisection above the
closed form. Floating point: m(x~) is lowered by the float64 allowance of the forward pass at x~
(speccert.bounds.float_error), ||grad F(x~)|| raised by the relative GRADIENT_SLACK plus the absolute
term the closed form uses, eta ||x~ - x0||^2 and mu lowered and eta rho^2 raised by 1e-9 relative
(mu also by 4e-16 K for the rounding of eta).
"""

from __future__ import annotations

import torch

from speccert.bounds.certificate import GRADIENT_SLACK
from speccert.bounds.float_error import ErrorModel
from speccert.ir import Graph

Tensor = torch.Tensor
SLACK = 1e-9
# eta = K/2 + frac * g0 / (2 rho): frac 1 reproduces the closed form at x0; smaller fractions (eta nearer
# K/2) win when the curvature bound K is loose, if descent gets near F's minimiser.
ETA_FRACTIONS = (1.0, 0.25, 0.0625)


def _margin_and_grad(
    graph: Graph, errors: ErrorModel, x: Tensor, y: Tensor, j: Tensor
) -> tuple[Tensor, Tensor]:
    """(m_j(x) lowered by its float64 allowance, grad m_j(x)) per sample."""
    z = x.detach().requires_grad_(True)
    with torch.enable_grad():
        acts = graph.activations(z)
        out = acts[graph.output]
        m = out.gather(1, y[:, None])[:, 0] - out.gather(1, j[:, None])[:, 0]
        (grad,) = torch.autograd.grad(m.sum(), z)
    with torch.no_grad():
        allowance = errors.bound({k: v.detach() for k, v in acts.items()})
    return m.detach() - allowance, grad.reshape(x.shape[0], -1)


def _certified(
    graph: Graph,
    errors: ErrorModel,
    x0: Tensor,
    y: Tensor,
    j: Tensor,
    k: Tensor,
    g0: Tensor,
    rho: Tensor,
    g_abs: float,
    steps: int,
) -> Tensor:
    """Boolean per sample: one of the dual bounds (eta from ETA_FRACTIONS) proves m_j > 0 on the ball."""
    ok = torch.zeros_like(rho, dtype=torch.bool)
    for frac in ETA_FRACTIONS:
        ok = ok | _certified_at(graph, errors, x0, y, j, k, g0 * frac, rho, g_abs, steps)
    return ok


def _certified_at(
    graph: Graph,
    errors: ErrorModel,
    x0: Tensor,
    y: Tensor,
    j: Tensor,
    k: Tensor,
    s: Tensor,
    rho: Tensor,
    g_abs: float,
    steps: int,
) -> Tensor:
    """The dual test with eta = K/2 + s/(2 rho) (any s > 0 is valid; s = g0 is the closed form's eta)."""
    eta = k / 2 + s / (2 * rho)
    # mu = 2 eta - K = s / rho in exact arithmetic; lowered for eta's own rounding (<= 2u K).
    mu = (s / rho) * (1 - SLACK) - 4e-16 * k
    step = (1.0 / (2 * eta + k)).reshape(-1, *([1] * (x0.dim() - 1)))
    x = x0.clone()
    best = torch.full_like(rho, float("-inf"))
    for it in range(steps + 1):
        m_lo, gm = _margin_and_grad(graph, errors, x, y, j)
        d = (x - x0).reshape(x.shape[0], -1)
        grad_f = gm + 2 * eta[:, None] * d
        gnorm = (grad_f.norm(dim=1) + GRADIENT_SLACK * gm.norm(dim=1) + g_abs) * (1 + SLACK)
        f_lo = m_lo + eta * d.square().sum(1) * (1 - SLACK)
        bound = f_lo - gnorm.square() / (2 * mu.clamp_min(1e-300)) - eta * rho.square() * (1 + SLACK)
        best = torch.maximum(best, bound)
        if it < steps:
            x = (x - step * grad_f.reshape(x.shape)).detach()
    return (best > 0) & (mu > 0)


def refine(
    graph: Graph,
    errors: ErrorModel,
    x0: Tensor,
    y: Tensor,
    j: Tensor,
    k: Tensor,
    g0: Tensor,
    r0: Tensor,
    g_abs: float,
    steps: int = 20,
    bisections: int = 6,
) -> Tensor:
    """The largest radius in [r0, 2 r0] the dual test certifies (bisection), never below r0.

    r0: the closed-form radius of class j (certified); k: its curvature bound K_j; g0: ||grad m_j(x0)||.
    Samples with r0 <= 0, K = 0, g0 = 0 or an infinite r0 keep r0.
    """
    ok = (r0 > 0) & torch.isfinite(r0) & (k > 0) & (g0 > 0)
    out = r0.clone()
    if not bool(ok.any()):
        return out
    idx = ok.nonzero()[:, 0]
    lo, hi = r0[idx], 2 * r0[idx]
    for _ in range(bisections):
        mid = (lo + hi) / 2
        good = _certified(graph, errors, x0[idx], y[idx], j[idx], k[idx], g0[idx], mid, g_abs, steps)
        lo = torch.where(good, mid, lo)
        hi = torch.where(good, hi, mid)
    out[idx] = torch.maximum(r0[idx], lo)
    return out
