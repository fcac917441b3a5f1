"""The local certificate's radius search (speccert.bounds.certificates.local holds the bound).

A radius r passes when m_j(x) - allowance > L_j(r) r for every class j, L_j(r) the local bound over
B(x, r); any r that passes is proven on its own, so the search needs no monotonicity. Full search:
log-bisection on [SEARCH_SPAN top, top] below the first-order value top = min_j m_j / L_j(0), with the
per-unit bounds on models with at most UNIT_ALWAYS such units, else without them and then UNIT_STEPS
sharpening steps with them.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch

from speccert.bounds.certificates._per_point import search_cap

Tensor = torch.Tensor
U = 2.0**-53
SEARCH_STEPS = 12  # log-bisection over [1e-4, 1] x the upper end: radius within 0.2 % of the best
UNIT_STEPS = 4  # then steps with per-unit bounds (each costs a backward pass per unit)
SEARCH_SPAN = 1e-4
UNIT_ALWAYS = 2048  # models with at most this many such units get them at every bisection step


class LocalBound(Protocol):
    """What the search needs of speccert.bounds.certificates.local.LocalModel (a Protocol: that module
    imports this one)."""

    @property
    def unit_count(self) -> int: ...

    def lipschitz(self, x: Tensor, y: Tensor, r: Tensor, units: bool = True) -> Tensor: ...


def margin_ok(m: Tensor, lip: Tensor, r: Tensor) -> Tensor:
    return ((m > lip * r[:, None] * (1.0 + 4 * U)) | torch.isinf(m)).all(1)


def _bisect(model: LocalBound, x: Tensor, y: Tensor, m: Tensor, top: Tensor, units: bool) -> Tensor:
    """Log-bisection on [SEARCH_SPAN top, top]: the largest tested r that passes (else 0)."""
    lo, hi = top * SEARCH_SPAN, top.clone()
    best = torch.zeros_like(lo)
    for _ in range(SEARCH_STEPS):
        mid = torch.sqrt(lo * hi)
        ok = margin_ok(m, model.lipschitz(x, y, mid, units=units), mid)
        best = torch.where(ok, mid, best)
        lo, hi = torch.where(ok, mid, lo), torch.where(ok, hi, mid)
    return best


def _sharpen(model: LocalBound, x: Tensor, y: Tensor, m: Tensor, best: Tensor, top: Tensor) -> Tensor:
    """A few steps above `best` with the per-unit bounds (UNIT_STEPS evaluations): each failing r
    proposes r' = min_j m_j / L_j(r) (it passes when L does not grow from r' to r), each passing r
    the geometric mean of r and its proposal; bisection where a proposal leaves (lo, hi)."""
    lo, hi = torch.where(best > 0, best, top * SEARCH_SPAN), top.clone()
    r = torch.sqrt(lo * hi)
    for _ in range(UNIT_STEPS):
        lip = model.lipschitz(x, y, r, units=True)
        ok = margin_ok(m, lip, r)
        best = torch.where(ok & (r > best), r, best)
        lo, hi = torch.where(ok, r, lo), torch.where(ok, hi, r)
        guess = torch.where(torch.isinf(m), math.inf, m / lip).amin(1) * (1.0 - 1e-6)
        guess = torch.where(ok, torch.sqrt(r * torch.minimum(guess, hi)), guess)
        r = torch.where((guess > lo) & (guess < hi), guess, torch.sqrt(lo * hi))
    return best


def first_order(model: LocalBound, x: Tensor, y: Tensor, m: Tensor) -> Tensor:
    """min_j m_j / L_j(0), the first-order value: no r above it passes but by the rounding allowance in
    L_j(0) (a pass needs r < m_j / L_j(r), and L_j(r) >= ||grad m_j(x)||, which L_j(0) is up to it)."""
    lip0 = model.lipschitz(x, y, torch.zeros(x.shape[0], dtype=torch.float64), units=False)
    top: Tensor = torch.where(torch.isinf(m), math.inf, m / lip0).amin(1)
    return top


def local_radius(model: LocalBound, x: Tensor, y: Tensor, m: Tensor) -> Tensor:
    """Per point the largest tested r that passes (0 if none): log-bisection below m / L(0), with the
    per-unit bounds where the model has few units (UNIT_ALWAYS), else without them and then a few
    steps with them above the result. Every
    returned r passed its own test, so the search needs no monotonicity. Points with a non-positive
    margin are skipped (radius 0)."""
    out = torch.zeros(x.shape[0], dtype=torch.float64)
    alive = m.amin(1) > 0
    if not bool(alive.any()):
        return out
    x, y, m = x[alive], y[alive], m[alive]
    top = first_order(model, x, y, m)
    # L(0) = 0 (every unit dead at x) gives top = inf: the search runs below search_cap instead
    top = torch.where(top > 0, torch.minimum(top, search_cap(x)), torch.zeros_like(top))
    few = model.unit_count <= UNIT_ALWAYS
    best = _bisect(model, x, y, m, top, units=few)
    if not few:
        best = _sharpen(model, x, y, m, best, top)
    return out.masked_scatter(alive, torch.where(top > 0, best, torch.zeros_like(best)))
