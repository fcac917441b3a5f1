"""MaxMin (Sort over pairs) in the CROWN certificate: its linear relaxation and its pairs' intervals.

Per pair (a, b) of the Sort's input with d = a - b (speccert.bounds.local_sort), for every real a, b
    l_max max(a, b) + l_min min(a, b) = l_min a + l_max b + w relu(d),    w = l_max - l_min,
so rows lam on the Sort's outputs relax through ReLU's lines on d's interval [dlo, dhi]
(speccert.bounds.crown_relax): relu(d) >= s_lo d for w >= 0 (s_lo in [0, 1], intercept 0: valid on
the whole line) and relu(d) <= s_up d + t_up for w < 0 (the chord, its intercept checked at both
ends). With s the chosen slope and t its intercept (0 below):
    lam^T h >= (l_min + w s)^T a + (l_max - w s)^T b + sum_{w < 0} w t_up,
exact (s in {0, 1}, t = 0) where the pair's order is fixed on the ball. This is tighter than
relaxing max and min separately from the boxes of a and b: d's interval comes from rows e_a - e_b
(`pair_interval`: the same CROWN bound with rows +-(e_a - e_b)), which cancel what a and b share.

Floating point (the exact w is not stored: w~ = fl(l_max - l_min), same sign, |w~ - w| <= u |w|):
the computed adjoints mu_a = fl(l_min + fl(w~ s)), mu_b = fl(l_max - fl(w~ s)) differ from the exact
l_min + w s, l_max - w s by e_a, e_b with |e_a| + |e_b| <= gamma(4) (1 + 2 S) (|l_max| + |l_min|),
S >= |s| (three roundings per entry and |w~| <= (1 + u)(|l_max| + |l_min|)), so the bound moves by
at most that times Z >= max(|a|, |b|) on the box. The constant fl(sum w~ t_up) is within
(gamma(n + 4) + gamma(2)) (|l_max| + |l_min|) |t_up| of the exact sum w t_up (the dot's rounding and
w~'s). And lam at h may be a sum of adjoints (an output used twice): gamma(2) |lam|^T H, H >= |h|.
All of it is one error weight per output entry, summed against |lam| like crown's other weights.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from speccert.bounds.crown_relax import relax
from speccert.bounds.crown_terms import TINY, U, open_intervals, padded_index, sub_down
from speccert.bounds.local_sort import back, out_halves
from speccert.ir import Sort
from speccert.norms.rounding import gamma

Tensor = torch.Tensor
ROW_CHUNK = 128  # pairs whose difference rows go backward together (x2: lower and upper)
PAIR_MAX = 8192  # stages with more unfixed pairs per point keep their other intervals only
Lower = Callable[[Tensor], tuple[Tensor, Tensor]]  # rows lam [B, N, *z] -> (a, n) over the ball


def relax_sort(
    op: Sort, lam: Tensor, d: tuple[Tensor, Tensor], z: tuple[Tensor, Tensor], h_abs: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """(mu, const, err) for rows lam [B, N, *h] on a MaxMin's outputs (module docstring):
    lam^T h >= mu^T z + const - err on the ball, mu [B, N, *z], const and err [B, N]."""
    dim = op.axis + 2
    dlo, dhi = d
    a_lo, _, a_up, b_up = relax("relu", 0.0, dlo, dhi)
    l_max, l_min = out_halves(op, lam, dim)
    w = l_max - l_min
    s = torch.where(w >= 0, a_lo.unsqueeze(1), a_up.unsqueeze(1))
    mu = back(op, lam, s, dim)
    const = (w.clamp_max(0.0) * b_up.unsqueeze(1)).flatten(2).sum(2)
    zlo, zhi = z
    z_abs = torch.maximum(zlo.abs(), zhi.abs())
    z_pair = torch.maximum(z_abs.select(dim - 1, 0), z_abs.select(dim - 1, 1))
    n = lam[0, 0].numel()
    big_s = torch.maximum(a_lo.abs(), a_up.abs())
    per_pair = gamma(4) * (1.0 + 2.0 * big_s) * z_pair + (gamma(n + 4) + gamma(2)) * b_up.abs()
    weight = torch.stack([per_pair, per_pair], dim - 1) + gamma(2) * h_abs
    weight = weight * (1.0 + 8 * U) + TINY
    err = (lam.abs() * weight.unsqueeze(1)).flatten(2).sum(2) * (1.0 + 2 * gamma(n + 2))
    return mu, const, err


def pair_interval(
    op: Sort, z_shape: tuple[int, ...], lower: Lower, r: Tensor, dlo: Tensor, dhi: Tensor
) -> tuple[Tensor, Tensor] | None:
    """CROWN interval of d = a - b for the pairs whose order [dlo, dhi] leaves open: rows
    +-(e_a - e_b) on z give a - r n <= +-d on the ball (the crown certificate's own argument)."""
    b = dlo.shape[0]
    shape = dlo.shape[1:]
    flat = ((dlo < 0) & (dhi > 0)).reshape(b, -1)
    n_pairs = flat.shape[1]
    index, count = padded_index(flat)
    if count == 0 or count > PAIR_MAX:
        return None
    new_lo, new_hi = open_intervals(b, n_pairs)
    rr = r[:, None]
    for start in range(0, count, ROW_CHUNK):
        idx = index[:, start : start + ROW_CHUNK]
        c = idx.shape[1]
        slot = idx.remainder(n_pairs + 1)  # -1 -> the spare column
        ones = torch.zeros((b, c, n_pairs + 1), dtype=torch.float64).scatter(2, slot[:, :, None], 1.0)
        ones = ones[:, :, :n_pairs].reshape(b, c, *shape)
        rows = torch.stack([ones, -ones], op.axis + 2)
        a, nrm = lower(torch.cat([rows, -rows], 1).reshape(b, 2 * c, *z_shape))
        span = rr * nrm * (1.0 + 4 * U)
        new_lo.scatter_(1, slot, sub_down(a[:, :c], span[:, :c]))
        new_hi.scatter_(1, slot, -sub_down(a[:, c:], span[:, c:]))
    return new_lo[:, :n_pairs].reshape(b, *shape), new_hi[:, :n_pairs].reshape(b, *shape)


__all__ = ["pair_interval", "relax_sort"]
