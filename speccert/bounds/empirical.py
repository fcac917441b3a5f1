"""Empirical lower bound on the Lipschitz constant of the logits (how loose the upper bound can be).

Any difference quotient ||f(x + d) - f(x - d)|| / (2 ||d||) is a lower bound on Lip(f), and so is
||J(x)^T u|| / ||u|| wherever f is differentiable (||J^T|| = ||J|| <= Lip(f)). We run a power iteration
per data point (J v by a central difference with a small step, J^T u exactly by one backward pass), keep
the best of both quotients, then sharpen on the most promising points by gradient ascent on the
difference quotient over (x, d) (one backward pass per step, no double backward: float64 convolutions
have slow second derivatives on CPU). The input-gradient norms of the margin functions are special cases:
||grad (f_y - f_j)|| = ||J^T (e_y - e_j)|| <= sqrt(2) ||J||.
"""

from __future__ import annotations

from typing import cast

import torch

from speccert.ir import Graph

Tensor = torch.Tensor


def _norms(t: Tensor) -> Tensor:
    return cast(Tensor, t.reshape(t.shape[0], -1).norm(dim=1))  # torch types Tensor.norm as Any


def _col(t: Tensor, like: Tensor) -> Tensor:
    return t.reshape(-1, *([1] * (like.dim() - 1)))


def _quotient(graph: Graph, x: Tensor, d: Tensor) -> tuple[Tensor, Tensor]:
    """(||f(x+d) - f(x-d)|| / (2 ||d||) per sample, the difference vector / (2 ||d||))."""
    diff = graph.forward(x + d) - graph.forward(x - d)
    diff = diff / (2.0 * _col(_norms(d), diff))
    return _norms(diff), diff


def _vjp(graph: Graph, x: Tensor, u: Tensor) -> Tensor:
    z = x.detach().requires_grad_(True)
    with torch.enable_grad():
        (g,) = torch.autograd.grad(graph.forward(z), z, u)
    return g


def jacobian_norm_lower(
    graph: Graph, x: Tensor, iters: int = 8, rel_step: float = 1e-4, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """Per sample: (a lower bound on Lip(f) near x, the last unit direction v of the power iteration)."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    v = torch.randn(x.shape, generator=gen, dtype=x.dtype).to(x.device)
    v = v / _col(_norms(v), x)
    h = rel_step * max(float(_norms(x).mean()), 1.0)
    best = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    with torch.no_grad():
        for _ in range(max(1, iters)):
            q, u = _quotient(graph, x, h * v)
            best = torch.maximum(best, q)
            w = _vjp(graph, x, u)
            un, wn = _norms(u), _norms(w)
            best = torch.maximum(best, torch.where(un > 0, wn / un.clamp_min(1e-300), torch.zeros_like(wn)))
            v = torch.where(_col(wn > 0, x), w / _col(wn.clamp_min(1e-300), x), v)
    return best, v


def empirical_lipschitz(
    graph: Graph, x: Tensor, *, iters: int = 8, ascent_steps: int = 10, top: int = 8, seed: int = 0
) -> float:
    """A lower bound on Lip(logits) from the points `x` (float64, on the graph's device).

    Power iteration at every point, then `ascent_steps` of normalised gradient ascent on the difference
    quotient q(x, d) over both x and d (||d|| kept at 1% of the data scale) from the best `top` points.
    Rounded down by a relative 1e-9 (float64 evaluation).
    """
    if x.shape[0] == 0:
        return 0.0
    vals, v_all = jacobian_norm_lower(graph, x, iters, seed=seed)
    best = float(vals.max())
    idx = vals.topk(min(top, x.shape[0])).indices
    scale = max(float(_norms(x).mean()), 1.0)
    radius = 0.01 * scale
    xs, d = x[idx].clone(), v_all[idx] * radius
    lr_x, lr_d = 0.05 * scale, 0.5 * radius
    for _ in range(ascent_steps):
        zx, zd = xs.detach().requires_grad_(True), d.detach().requires_grad_(True)
        with torch.enable_grad():
            q, _ = _quotient(graph, zx, zd)
            gx, gd = torch.autograd.grad(q.sum(), (zx, zd))
        best = max(best, float(q.detach().max()))
        xs = (xs + lr_x * gx / _col(_norms(gx).clamp_min(1e-300), xs)).detach()
        d = d + lr_d * gd / _col(_norms(gd).clamp_min(1e-300), d)
        d = (d * _col(radius / _norms(d).clamp_min(1e-300), d)).detach()
    with torch.no_grad():
        q, _ = _quotient(graph, xs, d)
        best = max(best, float(q.max()))
    return best * (1.0 - 1e-9)
