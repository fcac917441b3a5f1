"""Optimised lower ReLU slopes for the crown certificate's margin bound (alpha-CROWN style).

For an unstable ReLU / leaky ReLU unit (lo < 0 < hi) every line a z with a in [alpha, 1] lies below
f(z) = max(z, alpha z) on the whole real line (speccert.bounds.crown_relax), so the lower slope may be
chosen per point, row and unit and `Crown.lower` stays a proven bound: it clamps whatever slopes it is
given into [alpha, 1] and takes the rounding weight of such a unit for the largest slope, 1.

`optimised_margins` picks, per point, the OPT_ROWS margin rows with the smallest a / n (the radius is
their minimum), starts from the adaptive slopes, takes `crown.steps` Adam steps of projected gradient
ascent (clamped to [alpha, 1] after each) on the estimate a - r n (`Crown.estimate`: autograd through
the same backward pass), then evaluates `Crown.lower` once more without autograd with those slopes and
keeps per row the larger a / n of the adaptive and the optimised bound. Both are proven, so the result
is never worse; the estimate only chooses slopes, it never feeds the certificate.
"""

from __future__ import annotations

import math
from typing import Protocol, TypeVar

import torch

Tensor = torch.Tensor


class SlopeBall(Protocol):
    """What the optimisation reads of speccert.bounds.crown.Ball (crown imports this module, so the
    class itself is not imported back: the layering test counts that as a cycle, typing included)."""

    @property
    def lines(self) -> dict[int, tuple[Tensor, ...]]: ...

    @property
    def free(self) -> dict[int, tuple[Tensor, float]]: ...


BallT = TypeVar("BallT", bound=SlopeBall)
BallC = TypeVar("BallC", bound=SlopeBall, contravariant=True)


class SlopeCrown(Protocol[BallC]):
    """What the optimisation calls of speccert.bounds.crown.Crown (see SlopeBall)."""

    @property
    def steps(self) -> int: ...

    def estimate(self, top: int, lam: Tensor, ball: BallC, slopes: dict[int, Tensor]) -> Tensor: ...

    def lower(
        self, top: int, lam: Tensor, ball: BallC, slopes: dict[int, Tensor] | None = None
    ) -> tuple[Tensor, Tensor]: ...


STEP_SIZE = 0.1  # Adam step (the slopes live in [alpha, 1])
OPT_ROWS = 2  # margin rows per point whose slopes are optimised (the smallest a / n)


def score(a: Tensor, n: Tensor) -> Tensor:
    """a / n, the radius a bound certifies (+-inf where n = 0)."""
    return torch.where(n > 0, a / n, torch.where(a > 0, math.inf, -math.inf))


def ascend(
    crown: SlopeCrown[BallT], top: int, lam: Tensor, ball: BallT, steps: int
) -> tuple[Tensor, Tensor] | None:
    """`crown.lower(top, lam, ball, slopes)` with slopes chosen by `steps` Adam steps on the estimate
    from the adaptive ones (None: no unstable ReLU unit). `ball` holds the lines of every stage (filled
    by an evaluation with the adaptive slopes)."""
    rows = lam.shape[1]
    slopes = {
        j: ball.lines[j][0].unsqueeze(1).expand(-1, rows, *ball.lines[j][0].shape[1:]).clone()
        for j, (unstable, _) in ball.free.items()
        if bool(unstable.any())
    }
    if not slopes:
        return None
    params = list(slopes.values())
    with torch.enable_grad():
        for p in params:
            p.requires_grad_(True)
        opt = torch.optim.Adam(params, lr=STEP_SIZE)
        for _ in range(steps):
            opt.zero_grad()
            loss = -crown.estimate(top, lam, ball, slopes).nan_to_num(nan=0.0, neginf=-1e30).sum()
            # retain_graph: the stages' recorded tapes (stage_vjp) are part of this graph and are reused
            loss.backward(retain_graph=True)  # type: ignore[no-untyped-call]
            opt.step()
            with torch.no_grad():
                for j, p in slopes.items():
                    p.clamp_(ball.free[j][1], 1.0)
    with torch.no_grad():
        return crown.lower(top, lam, ball, {j: p.detach() for j, p in slopes.items()})


def optimised_margins(
    crown: SlopeCrown[BallT], top: int, lam: Tensor, ball: BallT, bound: tuple[Tensor, Tensor], skip: Tensor
) -> tuple[Tensor, Tensor]:
    """Per row the better of `bound` = (a, n) [B, N] (adaptive slopes) and the optimised bound (module
    docstring); `skip` [B, N]: rows never optimised (the label's own)."""
    full_a, full_n = bound
    k = min(OPT_ROWS, lam.shape[1])
    pick = score(full_a, full_n).masked_fill(skip, math.inf).topk(k, dim=1, largest=False).indices
    a, nrm = full_a.gather(1, pick), full_n.gather(1, pick)
    lam = lam.gather(1, pick.reshape(*pick.shape, *[1] * (lam.dim() - 2)).expand(-1, -1, *lam.shape[2:]))
    found = ascend(crown, top, lam, ball, crown.steps)
    if found is None:
        return full_a, full_n
    better = score(*found) > score(a, nrm)
    a, nrm = torch.where(better, found[0], a), torch.where(better, found[1], nrm)
    return full_a.scatter(1, pick, a), full_n.scatter(1, pick, nrm)


__all__ = ["OPT_ROWS", "STEP_SIZE", "SlopeBall", "SlopeCrown", "ascend", "optimised_margins", "score"]
