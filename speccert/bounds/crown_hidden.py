"""CROWN intervals of a model's hidden units over L2 balls (the `interval` hook of `ball_bounds`).

For each stage k whose activation's relaxation is not exact on the units' current intervals [lo, hi]
(the boxes, Lipschitz and per-unit bounds of speccert.bounds.local_bounds), the rows +-e_i of z_k go
backward through `Crown.lower` (speccert.bounds.crown: every rounding accounted for), giving
    +-z_i(x') >= a_+- - r n_+-   on B(x, r)
so [a_+ - r n_+, -(a_- - r n_-)] encloses z_i there (rounded outward); `ball_bounds` intersects it with
the other proven intervals. Rows go in chunks of ROW_CHUNK units, over only the points that still have
uncertain units left (Ball.select; SELECT = False pads every point to the largest count, the same bounds
to the allowances), reading the first backward step from the model's unit columns where they fit.
A MaxMin stage bounds its pairs' differences instead (speccert.bounds.crown_sort.pair_interval).
"""

from __future__ import annotations

from typing import Protocol

import torch

from speccert.bounds.crown_sort import pair_interval
from speccert.bounds.crown_terms import Ball, U, open_intervals, padded_index, sub_down
from speccert.bounds.local_bounds import BallBounds, Interval
from speccert.bounds.local_slopes import slope_range
from speccert.bounds.local_stages import Stage, identity_like
from speccert.ir import Activation, Conv, Linear, MaxPool, Sort

Tensor = torch.Tensor
ROW_CHUNK = 128  # hidden units whose bounds go backward together (x2: lower and upper rows)
UNIT_MAX = 8192  # stages with more uncertain units per point keep their interval bounds only
SELECT = True  # later chunks of hidden-bound rows run only over the points with rows left


class HiddenCrown(Protocol):
    """What the hidden bounds call of speccert.bounds.crown.Crown (a Protocol: crown imports this module)."""

    @property
    def stages(self) -> list[Stage]: ...

    def columns_of(self, k: int) -> dict[int, Tensor] | None: ...

    def lower(
        self,
        top: int,
        lam: Tensor,
        ball: Ball,
        slopes: dict[int, Tensor] | None = None,
        units: tuple[Tensor, dict[int, Tensor]] | None = None,
    ) -> tuple[Tensor, Tensor]: ...


def _wanted(st: Stage, lo: Tensor, hi: Tensor) -> Tensor | None:
    """Units of z_k whose relaxation is not exact on [lo, hi] (all units before a max-pool)."""
    assert st.act is not None
    if isinstance(st.act.op, MaxPool):
        return lo < hi
    op = st.act.op
    assert isinstance(op, Activation)
    dlo, dhi = slope_range(op.fn, op.alpha, lo, hi)
    return dlo != dhi


def _exact_rows(st: Stage) -> bool:
    """z = (shift/reshape)* Linear|Conv (shift/reshape)* of the input: the Lipschitz interval's
    row norms are exact, CROWN gives the same interval."""
    if any(s.index != -1 for s in st.sources):
        return False
    weighted = [n for n in st.nodes if not identity_like(n)]
    return len(weighted) == 1 and isinstance(weighted[0].op, (Linear, Conv))


def hidden_interval(crown: HiddenCrown, x: Tensor, r: Tensor) -> Interval:
    """The hook of `ball_bounds` for the points x with radii r: CROWN intervals of the uncertain units
    of z_k (a MaxMin stage: of its pairs' differences, speccert.bounds.crown_sort)."""

    def hook(k: int, bb: BallBounds, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor] | None:
        st = crown.stages[k]
        if st.act is not None and isinstance(st.act.op, Sort):  # lo, hi: the pairs' differences
            sort_ball = Ball(x, r, bb)
            return pair_interval(st.act.op, st.z_shape, lambda lam: crown.lower(k, lam, sort_ball), r, lo, hi)
        want = _wanted(st, lo, hi)
        if want is None or _exact_rows(st):
            return None
        b = x.shape[0]
        flat = want.reshape(b, -1)
        n_units = flat.shape[1]
        index, count = padded_index(flat)
        if count == 0 or count > UNIT_MAX:
            return None
        new_lo, new_hi = open_intervals(b, n_units)
        ball = Ball(x, r, bb)
        rr = r[:, None]
        cols = crown.columns_of(k)
        counts = flat.sum(1)
        for start in range(0, count, ROW_CHUNK):
            # after the first chunk (which fills the ball's caches for every point), only the
            # points with rows left: no pass over rows that are all padding
            live = torch.nonzero(counts > start).flatten() if start > 0 and SELECT else torch.arange(b)
            part = ball if live.numel() == b else ball.select(live)
            idx = index[live, start : start + ROW_CHUNK]
            c = idx.shape[1]
            slot = idx.remainder(n_units + 1)  # -1 -> the spare column
            if cols is None:
                rows = torch.zeros((live.numel(), c, n_units + 1), dtype=torch.float64)
                rows = rows.scatter(2, slot[:, :, None], 1.0)[:, :, :n_units]
                lam = torch.cat([rows, -rows], 1).reshape(live.numel(), 2 * c, *st.z_shape)
                a, nrm = crown.lower(k, lam, part)
            else:
                shape_only = torch.empty((live.numel(), 2 * c, 0))
                a, nrm = crown.lower(k, shape_only, part, units=(slot, cols))
            span = rr[live] * nrm * (1.0 + 4 * U)
            new_lo[live] = new_lo[live].scatter(1, slot, sub_down(a[:, :c], span[:, :c]))
            new_hi[live] = new_hi[live].scatter(1, slot, -sub_down(a[:, c:], span[:, c:]))
        shape = (b, *st.z_shape)
        return new_lo[:, :n_units].reshape(shape), new_hi[:, :n_units].reshape(shape)

    return hook
