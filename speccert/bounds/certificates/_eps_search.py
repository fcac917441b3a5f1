"""Eps mode of the per-point kinds (`--radius-search eps`): decide the requested eps values only.

Certified accuracy at eps needs one bit per point: is some radius >= eps proven? A full radius search
(crown up to 1 + 7 bound evaluations per point, local 13-17) finds the largest radius it can prove,
which certified accuracy does not need. Here, per point:

1. skip it if it is misclassified (some margin <= 0) or if the kinds run before (the closed-form
   kinds, then `local` before `crown`) already certify every eps: `known` >= max eps;
2. one evaluation at r = 0 gives the first-order value top = min_j m_j / ||grad m_j(x)||; an eps above
   it is not tested (`local` never passes there: its bound over any ball is at least the gradient
   norm at the centre, and its full search never tests above top either; `crown` could in principle,
   a margin that flattens away from x, but its tests there cost the most and practically never pass);
3. the probe: the smallest eps still open (known < eps <= top) is tested first. If it fails, the
   point is done (a larger ball is not tested: its bound is no tighter in practice, and on models
   whose radii sit below the requested eps, as zoo cnn's at the README's 0.1-0.5, this makes most
   points cost one test);
4. otherwise the open eps above it are tested largest first, stopping at the first pass (a pass at
   eps certifies every smaller eps).

Every test is one evaluation of the kind's bound at r = eps (1 + 2 RADIUS_SLACK), exactly the test
the full search makes at any r (`test_at`): a pass proves r, and after the reported radius's relative
slack (finish_radius) the point still counts at eps. `crown`'s failing test at r still proves
min(r, rho(r)) and is kept (it may reach a smaller eps: that one is then not tested). The radius
returned is the best proven by the tests made: a lower bound on the point's radius, not a searched
one (the report says so, environment.radius_search = "eps").

So a point is certified at eps in this mode iff a test at some requested eps' >= eps (or a failing
crown test) proved it; it is not certified at eps although a full search would be only where the
bound is not monotone in r (a test at eps, or at the probe's smaller eps, fails while a larger tested
ball passes) or, for `crown`, where it proves more than the first-order value (tests/
test_certify_search.py checks both explanations point by point).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

import torch

from speccert.bounds.certificate import RADIUS_SLACK, finish_radius

Tensor = torch.Tensor
ABOVE = 1.0 + 2.0 * RADIUS_SLACK  # test at eps * ABOVE: finish_radius of a pass is still >= eps


class BallTests(Protocol):
    """What eps mode needs of a per-point kind (speccert.bounds.certificates._per_point)."""

    def first_order(self, x: Tensor, y: Tensor, m: Tensor) -> Tensor: ...

    def test_at(self, x: Tensor, y: Tensor, m: Tensor, r: Tensor) -> Tensor: ...


def ball_radius(eps: float) -> float:
    """The radius tested for `eps`: finish_radius of it is >= eps (so a pass counts at eps)."""
    return eps * ABOVE


def settled(m: Tensor, known: Tensor, eps: Sequence[float]) -> Tensor:
    """[B] the correctly classified points `decide_eps` does not test: the kinds run before already
    certify them at the largest requested eps (`known` [B], finished radii; `m` [B, C] margins)."""
    top = max((float(e) for e in eps if e > 0), default=math.inf)
    return (m.amin(1) > 0) & (known >= top)


def decide_eps(
    kind: BallTests, x: Tensor, y: Tensor, m: Tensor, known: Tensor, eps: Sequence[float]
) -> Tensor:
    """[B] per point the best radius proven by the tests of the module docstring (0 if none)."""
    out = torch.zeros(x.shape[0], dtype=torch.float64)
    levels = sorted({float(e) for e in eps if e > 0})
    if not levels:
        return out
    alive = (m.amin(1) > 0) & ~settled(m, known, levels)
    if not bool(alive.any()):
        return out
    idx = torch.nonzero(alive).flatten()
    xs, ys, ms, kn = x[idx], y[idx], m[idx], known[idx]
    top = kind.first_order(xs, ys, ms)
    best = torch.zeros_like(top)

    def open_at(e: float) -> Tensor:
        """Points still undecided at e that a test at e could certify."""
        return (kn < e) & (finish_radius(best) < e) & (top >= e)

    def run(todo: Tensor, r: Tensor) -> Tensor:
        """Test the points `todo` at their radii `r`; True where the test certified r."""
        t = torch.nonzero(todo).flatten()
        got = kind.test_at(xs[t], ys[t], ms[t], r[t]).clamp_min(0.0)
        best[t] = torch.maximum(best[t], got)
        passed = torch.zeros_like(todo)
        passed[t] = got >= r[t]
        return passed

    # the probe: per point its smallest open eps
    probe = torch.full_like(top, torch.inf)
    for e in reversed(levels):
        probe = torch.where(open_at(e), ball_radius(e), probe)
    todo = torch.isfinite(probe)
    if not bool(todo.any()):
        return out.index_put((idx,), best)
    going = run(todo, probe)
    for e in reversed(levels):  # largest first; stop at the first pass (open_at is False below it)
        todo = going & open_at(e) & (ball_radius(e) > probe)
        if bool(todo.any()):
            run(todo, torch.full_like(top, ball_radius(e)))
    return out.index_put((idx,), best)
