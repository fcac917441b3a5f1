"""CROWN certificate: linear relaxation of the whole network over the L2 ball (speccert.bounds.crown).

For a radius r, the bounds of every stage over B(x, r) (intervals, then CROWN intervals of the
uncertain units, intersected) fix a relaxation, and each margin gets m_j(x') >= a_j - ||x' - x|| n_j
for every x' with ||x' - x|| <= r. So the margin is positive on the open ball of radius
    rho(r) = min(r, min_j a_j / n_j)
and every tested r certifies rho(r) on its own (no monotonicity in r is assumed). The search: r = 0
gives the first-order value top = min_j a_j / n_j (all units stable), then SEARCH_STEPS tests: a
failing r (a_j / n_j < r for some j) proposes its own min_j a_j / n_j, which passes where the bounds
do not loosen much between the two radii (a fixed-point step); a passing r moves up geometrically
towards the smallest failing r (or doubles, below none). The radius is the best rho found.
"""

from __future__ import annotations

import math

import torch

from speccert.bounds.certificate import Batch, CertContext, Certificate, register_certificate
from speccert.bounds.crown import Crown

Tensor = torch.Tensor
SEARCH_STEPS = 8
TOLERANCE = 0.01  # stop once the smallest failing r is within 1 % of the best passing one
CHUNK = 8  # points per pass (memory: CHUNK x 2 x 128 rows x the widest layer, float64)


def _rho(crown: Crown, x: Tensor, y: Tensor, r: Tensor) -> Tensor:
    """min_j a_j / n_j over B(x, r) per point (>= 0; a NaN-free float)."""
    a, n = crown.margin_bounds(x, y, r)
    rho = torch.where(n > 0, a / n, torch.where(a > 0, math.inf, 0.0))
    return torch.nan_to_num(rho.amin(1), nan=0.0).clamp_min(0.0)


def crown_radius(crown: Crown, x: Tensor, y: Tensor, alive: Tensor) -> Tensor:
    """Per point the best certified rho (module docstring); 0 where `alive` is False."""
    best = torch.zeros(x.shape[0], dtype=torch.float64)
    idx = torch.nonzero(alive).flatten()
    if idx.numel() == 0:
        return best
    xs, ys = x[idx], y[idx]
    top = _rho(crown, xs, ys, torch.zeros(idx.numel(), dtype=torch.float64))
    lo = torch.zeros_like(top)  # best certified so far
    hi = torch.full_like(top, math.inf)  # smallest failing r so far
    r = top.clone()
    for _ in range(SEARCH_STEPS):
        todo = (r > 0) & torch.isfinite(r) & ~(hi <= lo * (1.0 + TOLERANCE))
        if not bool(todo.any()):
            break
        t = torch.nonzero(todo).flatten()
        rho = _rho(crown, xs[t], ys[t], r[t])
        rt = r[t]
        passed = rho >= rt
        cert = torch.minimum(rt, rho)
        lo[t] = torch.maximum(lo[t], cert)
        hi[t] = torch.where(passed, hi[t], torch.minimum(hi[t], rt))
        up = torch.where(torch.isfinite(hi[t]), torch.sqrt(rt * hi[t]), 2.0 * rt)
        guess = rho * (1.0 - 1e-3)
        down = torch.where(
            guess > lo[t] * (1.0 + TOLERANCE), guess, torch.sqrt(lo[t].clamp_min(rt * 1e-3) * rt)
        )
        r[t] = torch.where(passed, up, down)
    return best.index_put((idx,), lo)


@register_certificate("crown")
class CrownCertificate(Certificate):
    """Largest rho with every margin's CROWN lower bound positive on B(x, rho); opt-in."""

    order = 35  # place among the kinds in reports (speccert.bounds.certificate)
    opt_in = True

    def __init__(self, ctx: CertContext) -> None:
        super().__init__(ctx)
        self.crown = Crown(ctx.bound)

    def radii(self, batch: Batch) -> Tensor:
        x = batch.x.detach().to("cpu", torch.float64)
        y, m = batch.y.cpu(), batch.margins.cpu()
        alive = m.amin(1) > 0
        r = torch.cat(
            [
                crown_radius(self.crown, x[i : i + CHUNK], y[i : i + CHUNK], alive[i : i + CHUNK])
                for i in range(0, x.shape[0], CHUNK)
            ]
        )
        out = r[:, None].expand_as(m).clone().scatter(1, y[:, None], math.inf)
        return out.to(batch.margins.device)
