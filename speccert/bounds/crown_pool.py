"""Linear lower and upper lines of max-pool windows on boxes (for the CROWN certificate).

A window holds candidates x_1, ..., x_k (k = the kernel's taps; padding taps are -inf and never
chosen) with proven intervals l_i <= x_i <= u_i over the ball. `pool_lines` gives, per window, a
lower line sum_i t_i x_i and an upper line sum_i s_i x_i + B, stored as tap coefficients, with
    sum_i t_i x_i <= max_i x_i <= sum_i s_i x_i + B      for every x in the box (exact arithmetic).

Lower: any convex combination (t_i >= 0, sum_i t_i = 1) is below the max. A window whose winner is
fixed (its best lower bound beats every other candidate's upper bound: speccert.bounds.local_bounds
.pool_fixed) takes t = e_p, p that winner, and then max = x_p exactly (both lines are x_p, B = 0).
Elsewhere t is uniform over the candidates that tie for the best lower bound (windows over a constant
background, whose candidates have identical intervals): over a ball a mean of several candidates can
be pushed down far less than any one of them. Only the first m of them are used, m the largest power
of two not above their count, so that t = 1/m is exact and sum_i t_i = 1 exactly (a sum other than 1
would not be below the max for every sign of x).

Upper (windows whose winner is not fixed): let i* have the largest upper bound u* = u_{i*}, l* its lower
bound, u2 the largest upper bound of the others. For any slope s in [0, 1] and the line s x_{i*} + B:
- x_j <= u2 <= s x_{i*} + B for j != i* as soon as B >= u2 - s l* (x_{i*} >= l*, s >= 0);
- x_{i*} <= s x_{i*} + B on [l*, u*] as soon as B >= (1 - s) u* ((1 - s) x_{i*} is largest at u*, s <= 1).
So max_i x_i <= s x_{i*} + B with B = max(u2 - s l*, (1 - s) u*), each computed in float64 and
raised by 4u (|first| + |product|) + 1e-300 (speccert.bounds.crown_relax._up_intercept: above the
rounding of one product and one subtraction). The slope is s = (u* - u2) / (u* - l*) (any float in
[0, 1] is valid; this one makes both conditions meet, the line through (l*, u2) and (u*, u*)); with
u2 replaced by max(u2, l*) beforehand (a stronger condition, still valid; s = 1 where i* cannot lose).
Where s = 0 (ties for the largest upper bound) the line is the constant u* itself, B = u* exactly.

`route` sends row adjoints back through these lines: lam_w >= 0 through t, lam_w < 0 through s (the
adjoint of every tap lam_w t_i or lam_w s_i, summed over the windows covering each input by a fold).
Per window sum_i t_i = 1 and sum_i s_i <= 1, so the rounding of those products and sums is within
gamma(k + 2) sum_w |lam_w| max |x| (at most k windows cover an input, each through one tap).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from speccert.bounds.crown_relax import _up_intercept as up_intercept
from speccert.bounds.local_bounds import _pool_windows
from speccert.ir import MaxPool

Tensor = torch.Tensor


@dataclass
class PoolLines:
    """Tap coefficients [B, C, K, L] of the lower (`low`) and upper (`up`) lines and the upper line's
    constant `b_up` [B, C, L] (0 on fixed windows) of every window (module docstring)."""

    low: Tensor
    up: Tensor
    b_up: Tensor


def pool_lines(op: MaxPool, lo: Tensor, hi: Tensor, fixed: Tensor, winner: Tensor) -> PoolLines:
    """The lines of every window of `op` for candidates in [lo, hi] [B, C, H, W]; `fixed`, `winner`
    [B, C, L]: speccert.bounds.local_bounds.pool_fixed's (module docstring)."""
    lw, hw = _pool_windows(op, lo), _pool_windows(op, hi)
    k = lw.shape[2]
    one_hot = torch.zeros_like(lw).scatter(2, winner[:, :, None, :], 1.0)
    # lower: uniform over the first m (a power of two) candidates tying for the best lower bound
    tied = lw == lw.amax(2, keepdim=True)
    count = tied.sum(2, keepdim=True).clamp_min(1)
    m = torch.pow(2.0, torch.floor(torch.log2(count.to(lw.dtype))))
    chosen = tied & (torch.cumsum(tied.to(torch.int64), 2) <= m)
    mean = chosen.to(lw.dtype) / m
    fix = fixed[:, :, None, :]
    low = torch.where(fix, one_hot, mean)
    # upper: the line through (l*, u2) and (u*, u*) on the candidate with the largest upper bound
    u_top, top = hw.max(2, keepdim=True)
    l_top = lw.gather(2, top)
    u_second = hw.scatter(2, top, -math.inf).amax(2, keepdim=True)
    u_second = torch.maximum(u_second, l_top)
    width = u_top - l_top
    s = torch.where(width > 0, (u_top - u_second) / torch.where(width > 0, width, 1.0), 1.0)
    s = torch.nan_to_num(s, nan=0.0).clamp(0.0, 1.0)
    b_line = torch.maximum(up_intercept(u_second, s, l_top), up_intercept(u_top, s, u_top))
    b_line = torch.where(s > 0, b_line, u_top)
    up = torch.where(fix, one_hot, torch.zeros_like(lw).scatter(2, top, s))
    b_up = torch.where(fix, torch.zeros_like(b_line), b_line)[:, :, 0, :]
    assert up.shape[2] == k
    return PoolLines(low, up, b_up)


def route(op: MaxPool, lam: Tensor, lines: PoolLines, in_shape: tuple[int, ...]) -> Tensor:
    """lam [B, N, C, Ho, Wo] through the windows' lines (lam >= 0: lower, < 0: upper), summed back
    onto the inputs: [B, N, C, H, W] (module docstring)."""
    b, n, c = lam.shape[:3]
    flat = lam.reshape(b, n, c, 1, -1)
    taps = torch.where(flat >= 0, flat * lines.low[:, None], flat * lines.up[:, None])
    (pt, pb), (pl, pr) = op.padding
    h, w = in_shape[1] + pt + pb, in_shape[2] + pl + pr
    k = math.prod(op.kernel)
    out = F.fold(taps.reshape(b * n * c, k, -1), (h, w), op.kernel, op.dilation, 0, op.stride)
    return out.reshape(b, n, c, h, w)[..., pt : pt + in_shape[1], pl : pl + in_shape[2]]


__all__ = ["PoolLines", "pool_lines", "route"]
