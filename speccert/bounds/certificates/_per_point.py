"""Shared by the per-point kinds (local, crown): run a radius search on the CPU in chunks of points
and spread each point's radius over its classes (every class gets the point's radius, the label inf).

A per-point kind (`PerPointCertificate`) proves a radius by testing balls: `test_at(r)` evaluates its
bound over B(x, r) once and returns the radius that evaluation proves on its own. It then answers in
one of two ways (CertifyOptions.radius_search):
- `full` (`radii`): its own search over radii (local: log-bisection; crown: regula falsi), the best
  tested radius per point;
- `eps` (`decide`): only the requested eps values are tested (speccert.bounds.certificates._eps_search).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from speccert.bounds.certificate import Batch, Certificate
from speccert.bounds.certificates._eps_search import decide_eps

Tensor = torch.Tensor
Search = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]  # (x, y, margins, known) of a chunk -> radius
Tick = Callable[[int], None]  # the batch's points done so far
START_CAP = 10.0  # a search's largest tested radius is at most this times 1 + ||x||


def search_cap(x: Tensor) -> Tensor:
    """[B]: the largest radius a per-point search tests, 10 (1 + ||x||). A margin constant to first order
    (every unit dead at x: the first-order value m / ||grad m|| is ~ m / 1e-300 or inf) would otherwise
    send the search far beyond any meaningful ball; every tested radius is still checked on its own,
    so the cap only decides where to look."""
    cap: Tensor = START_CAP * (1.0 + x.flatten(1).norm(dim=1))
    return cap


def per_point_radii(
    batch: Batch, search: Search, chunk: int, known: Tensor | None = None, tick: Tick | None = None
) -> Tensor:
    """[B, C] radii from `search` run on float64 CPU copies of the batch, `chunk` points at a time
    (`search(x, y, m, known)`, `known` [B] a radius already proven per point, 0 if None); `tick(done)`
    after each chunk with the batch's points done so far (progress: a chunk can take minutes)."""
    x = batch.x.detach().to("cpu", torch.float64)
    y, m = batch.y.cpu(), batch.margins.cpu()
    k = torch.zeros(x.shape[0], dtype=torch.float64) if known is None else known.to("cpu", torch.float64)
    parts = []
    for i in range(0, x.shape[0], chunk):
        parts.append(search(x[i : i + chunk], y[i : i + chunk], m[i : i + chunk], k[i : i + chunk]))
        if tick is not None:
            tick(min(i + chunk, x.shape[0]))
    r = torch.cat(parts)
    out = r[:, None].expand_as(m).clone().scatter(1, y[:, None], math.inf)
    return out.to(batch.margins.device)


class PerPointCertificate(Certificate):
    """A kind that proves each point's radius by evaluating its bound over balls B(x, r).

    Subclasses give `search` (the full radius search), `first_order` (the value at r = 0, which caps
    where a test can pass) and `test_at` (one evaluation at r per point, the radius it proves on its
    own); `chunk` is the points per evaluation (memory)."""

    chunk: int = 8

    def search(self, x: Tensor, y: Tensor, m: Tensor) -> Tensor:
        """[B] the best radius of the kind's own search over radii (0 where m <= 0)."""
        raise NotImplementedError

    def first_order(self, x: Tensor, y: Tensor, m: Tensor) -> Tensor:
        """[B] min_j m_j / ||grad m_j(x)|| (as the bound at r = 0 gives it): no test at r above it passes
        for `local`; for `crown` in practice (eps mode does not test above it)."""
        raise NotImplementedError

    def test_at(self, x: Tensor, y: Tensor, m: Tensor, r: Tensor) -> Tensor:
        """[B] the radius proven by one evaluation of the bound over B(x_b, r_b) (0 if none): r_b where
        the margins stay positive on the ball, possibly less (crown: min(r, rho(r)))."""
        raise NotImplementedError

    def radii(self, batch: Batch, tick: Tick | None = None) -> Tensor:
        """[B, C] the full search's radii (each kind's own: nothing known from the other kinds)."""
        return per_point_radii(batch, lambda x, y, m, k: self.search(x, y, m), self.chunk, tick=tick)

    def decide(self, batch: Batch, eps: Sequence[float], known: Tensor, tick: Tick | None = None) -> Tensor:
        """[B, C] radii that decide only the requested `eps` (speccert.bounds.certificates._eps_search);
        `known` [B]: the radius the kinds run before already give each point (finished, 0 if none)."""
        return per_point_radii(
            batch, lambda x, y, m, k: decide_eps(self, x, y, m, k, eps), self.chunk, known, tick
        )
