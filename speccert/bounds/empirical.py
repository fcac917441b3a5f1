"""Empirical lower bound on the Lipschitz constant of the logits (how loose the upper bound can be).

Wherever f is differentiable, ||J(x)||_2 <= Lip(f), and ||J(x) v|| / ||v|| <= ||J(x)||_2 for any v. So
max over points x and vectors v of ||J(x) v|| / ||v|| is a lower bound on the Lipschitz constant.
We take v from a few power iterations on J^T J at each data point (J v by the double-backward trick,
J^T u by one backward pass; both exact in float64), then sharpen on the most promising points by
gradient ascent on x of ||J(x) v|| (smooth nets) mixed with a random search (piecewise-linear nets,
whose J is locally constant). This includes the input-gradient norms of the margin functions:
||grad (f_y - f_j)|| = ||J^T (e_y - e_j)|| <= sqrt(2) ||J||.
"""

from __future__ import annotations

import torch

from speccert.ir import Graph

Tensor = torch.Tensor


def _jvp_vjp(graph: Graph, x: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """(J v, J^T (J v)) at every sample of the batch x (block-diagonal J: samples are independent)."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        out = graph.forward(x)
        dummy = torch.zeros_like(out, requires_grad=True)
        (jt,) = torch.autograd.grad(out, x, dummy, create_graph=True)
        (jv,) = torch.autograd.grad(jt, dummy, v)
        (jtjv,) = torch.autograd.grad(out, x, jv)
    return jv.detach(), jtjv.detach()


def _norms(t: Tensor) -> Tensor:
    return t.reshape(t.shape[0], -1).norm(dim=1)


def jacobian_norm_lower(graph: Graph, x: Tensor, iters: int = 12, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Per sample: (||J(x) v|| with ||v|| = 1 after `iters` power iterations, the vector v)."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    v = torch.randn(x.shape, generator=gen, dtype=torch.float64).to(x.device)
    v = v / _norms(v).reshape(-1, *([1] * (x.dim() - 1)))
    best = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
    for _ in range(max(1, iters)):
        jv, jtjv = _jvp_vjp(graph, x, v)
        best = torch.maximum(best, _norms(jv))
        n = _norms(jtjv)
        if bool((n == 0).all()):
            break
        v = torch.where(n.reshape(-1, *([1] * (x.dim() - 1))) > 0,
                        jtjv / n.clamp_min(1e-300).reshape(-1, *([1] * (x.dim() - 1))), v)
    return best, v


def empirical_lipschitz(graph: Graph, x: Tensor, *, iters: int = 12, ascent_steps: int = 10,
                        top: int = 8, seed: int = 0) -> float:
    """A lower bound on Lip(logits): power iteration at the points `x`, then ascent on the best `top`.

    `graph` and `x` are float64 on the same device. The value is rounded down by a relative 1e-9.
    """
    if x.shape[0] == 0:
        return 0.0
    vals, _ = jacobian_norm_lower(graph, x, iters, seed)
    best = float(vals.max())
    k = min(top, x.shape[0])
    idx = vals.topk(k).indices
    xs = x[idx].clone()
    scale = float(_norms(x).mean()) or 1.0
    gen = torch.Generator(device="cpu").manual_seed(seed + 1)
    step = 0.05 * scale
    cur, v = jacobian_norm_lower(graph, xs, 4, seed)
    for _ in range(ascent_steps):
        z = xs.detach().requires_grad_(True)
        with torch.enable_grad():
            out = graph.forward(z)
            dummy = torch.zeros_like(out, requires_grad=True)
            (jt,) = torch.autograd.grad(out, z, dummy, create_graph=True)
            (jv,) = torch.autograd.grad(jt, dummy, v, create_graph=True)
            obj = jv.square().sum()
            grad = torch.autograd.grad(obj, z, allow_unused=True)[0] if obj.requires_grad else None
        noise = torch.randn(xs.shape, generator=gen, dtype=torch.float64).to(xs.device)
        direction = noise / _norms(noise).reshape(-1, *([1] * (xs.dim() - 1)))
        if grad is not None and bool((_norms(grad) > 0).any()):
            gn = _norms(grad).clamp_min(1e-300).reshape(-1, *([1] * (xs.dim() - 1)))
            direction = grad / gn + 0.3 * direction
        cand = xs + step * direction
        val, v_new = jacobian_norm_lower(graph, cand, 4, seed)
        better = val > cur
        shape = (-1, *([1] * (xs.dim() - 1)))
        xs = torch.where(better.reshape(shape), cand, xs)
        v = torch.where(better.reshape(shape), v_new, v)
        cur = torch.maximum(cur, val)
        best = max(best, float(cur.max()))
        if not bool(better.any()):
            step *= 0.5
    return best * (1.0 - 1e-9)
