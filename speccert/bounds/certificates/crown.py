"""CROWN certificate: linear relaxation of the whole network over the L2 ball (speccert.bounds.crown).

For a radius r, the bounds of every stage over B(x, r) (intervals, then CROWN intervals of the
uncertain units, intersected) fix a relaxation, and each margin gets m_j(x') >= a_j - ||x' - x|| n_j
for every x' with ||x' - x|| <= r. So the margin is positive on the open ball of radius
    rho(r) = min(r, min_j a_j / n_j)
and every tested r certifies rho(r) on its own (no monotonicity in r is assumed). The search: r = 0
gives the first-order value top = min_j a_j / n_j (all units stable), then up to SEARCH_STEPS tests
(the first at FIRST top, at most _per_point.search_cap(x) = 10 (1 + ||x||): a margin that is constant to first order has n ~ 0)
looking for the crossing of rho(r) - r (regula falsi, Illinois variant, between the largest passing and
the smallest failing r, shaded towards the passing end and kept 10 % inside the bracket; before any failure, the
passing r's own rho; before any pass, the failing r's own rho, or r / 4 where that is below r / 20). The
radius is the best rho found.

The margin bound uses optimised lower ReLU slopes when `crown_steps` > 0 (CertContext; the CLI's
--crown-steps, speccert.bounds.crown): at each tested r, per row never worse than the adaptive slopes
(the search may then test other radii, so a point's final radius can differ either way slightly).

Before the CROWN intervals, the local certificate's per-unit Lipschitz intervals tighten the
intervals (both proven, intersected) where they are cheap enough (UNIT_BUDGET: units that get them
times nonlinear layers): a few % on zoo cnn, fewer units left for CROWN; on the residual nets they
cost more than they give.
"""

from __future__ import annotations

import math

import torch

from speccert.bounds.certificate import CertContext, register_certificate
from speccert.bounds.certificates._per_point import PerPointCertificate, search_cap
from speccert.bounds.certificates.local import LocalModel
from speccert.bounds.crown import Crown
from speccert.bounds.crown_slopes import score

Tensor = torch.Tensor
SEARCH_STEPS = 7
TOLERANCE = 0.01  # stop once the crossing is pinned to 1 % (bracket, or rho(r) within 1 % of r)
FIRST = 0.25  # first radius tested, times the first-order value
SHADE = 0.98
UNIT_BUDGET = 20_000  # per-unit Lipschitz intervals too where units x nonlinear layers is at most this
CHUNK = 8  # points per pass (memory: CHUNK x 2 x 128 rows x the widest layer, float64)


def _rho(crown: Crown, x: Tensor, y: Tensor, r: Tensor) -> Tensor:
    """min_j a_j / n_j over B(x, r) per point (negative where a bound is; NaN-free)."""
    a, n = crown.margin_bounds(x, y, r)
    return torch.nan_to_num(score(a, n).amin(1), nan=-math.inf, neginf=-1e300)


def crown_radius(crown: Crown, x: Tensor, y: Tensor, alive: Tensor) -> Tensor:
    """Per point the best certified rho (module docstring); 0 where `alive` is False."""
    out = torch.zeros(x.shape[0], dtype=torch.float64)
    idx = torch.nonzero(alive).flatten()
    if idx.numel() == 0:
        return out
    xs, ys = x[idx], y[idx]
    top = _rho(crown, xs, ys, torch.zeros(idx.numel(), dtype=torch.float64))
    best = torch.zeros_like(top)
    a, fa = torch.zeros_like(top), top.clone()  # largest passing r (0: none yet) and rho(r) - r there
    b, fb = torch.full_like(top, math.inf), torch.full_like(top, -1.0)  # smallest failing r
    # a margin constant to first order (every unit dead at x: ||Lam|| ~ 0) gives top ~ a / 1e-300;
    # the first test is then capped at a ball far wider than the input itself
    r = torch.minimum(top * FIRST, search_cap(xs))
    failed = torch.zeros_like(top, dtype=torch.bool)  # the last test failed
    for _ in range(SEARCH_STEPS):
        close = (b <= a * (1.0 + TOLERANCE)) | ((a > 0) & (fa <= a * TOLERANCE))  # rho(a) ~ a
        todo = (r > 0) & torch.isfinite(r) & ~close
        if not bool(todo.any()):
            break
        t = torch.nonzero(todo).flatten()
        rt = r[t]
        rho = _rho(crown, xs[t], ys[t], rt)
        best[t] = torch.maximum(best[t], torch.minimum(rt, rho).clamp_min(0.0))
        f = rho - rt
        passed = f >= 0
        # Illinois: an end kept twice in a row has its f halved (regula falsi would stall there)
        a[t], fa[t] = (
            torch.where(passed, rt, a[t]),
            torch.where(passed, f, fa[t] * torch.where(failed[t], 0.5, 1.0)),
        )
        b[t], fb[t] = (
            torch.where(passed, b[t], rt),
            torch.where(passed, fb[t] * torch.where(failed[t], 1.0, 0.5), f),
        )
        failed[t] = ~passed
        at, bt, fat, fbt = a[t], b[t], fa[t], fb[t]
        # secant between the bracket ends, shaded towards the passing end (it then passes and
        # certifies nearly the crossing); no failing end yet: the passing r's own proposal rho
        secant = at + SHADE * fat * (bt - at) / (fat - fbt)
        bracketed = torch.minimum(torch.maximum(secant, at + 0.1 * (bt - at)), bt - 0.1 * (bt - at))
        open_end = torch.maximum(rho, rt * 1.5)
        # nothing passed yet: a failing r's own rho (a fixed-point step) unless it is tiny, then r / 4
        unbracketed = torch.where(rho > rt * 0.05, rho * (1.0 - 1e-3), rt / 4)
        r[t] = torch.where(at > 0, torch.where(torch.isfinite(bt), bracketed, open_end), unbracketed)
    return out.index_put((idx,), best)


@register_certificate("crown")
class CrownCertificate(PerPointCertificate):
    """Largest rho with every margin's CROWN lower bound positive on B(x, rho); opt-in."""

    order = 35  # place among the kinds in reports (speccert.bounds.certificate)
    opt_in = True
    chunk = CHUNK

    def __init__(self, ctx: CertContext) -> None:
        super().__init__(ctx)
        local = LocalModel(ctx)
        self.crown = Crown(ctx.bound, local.stages)  # one cut of the graph for both
        self.crown.steps = ctx.crown_steps
        if local.unit_count * (len(local.stages) - 1) <= UNIT_BUDGET:
            self.crown.unit_lipschitz = local.unit_lipschitz

    def search(self, x: Tensor, y: Tensor, m: Tensor) -> Tensor:
        return crown_radius(self.crown, x, y, m.amin(1) > 0)

    def first_order(self, x: Tensor, y: Tensor, m: Tensor) -> Tensor:
        return _rho(self.crown, x, y, torch.zeros(x.shape[0], dtype=torch.float64))

    def test_at(self, x: Tensor, y: Tensor, m: Tensor, r: Tensor) -> Tensor:
        """min(r, rho(r)): what every tested r of the search proves (module docstring)."""
        return torch.minimum(r, _rho(self.crown, x, y, r)).clamp_min(0.0)
