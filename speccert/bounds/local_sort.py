"""MaxMin (a Sort over groups of two) over a ball: the pair's order, its Jacobian, its adjoint.

The IR writes MaxMin / GroupSort-2 as Sort along an axis of length 2 (speccert.ir.Sort): per pair
(a, b) of entries of the Sort's input z, at that axis' index 0 and 1, the outputs are max(a, b) and
min(a, b) (index 0 and 1 when descending, 1 and 0 when ascending). With d = a - b,
    max(a, b) = b + relu(d),    min(a, b) = a - relu(d)        (exact for all reals),
so the pair is a ReLU of the difference d between two linear pieces. Over a ball where d has the
interval [dlo, dhi]:
- dlo >= 0 (a >= b on the whole ball) or dhi <= 0: the order is fixed and the Sort is the fixed
  permutation (max = a, min = b, or the reverse) there: sigma = relu'(d) is 1 or 0 exactly;
- otherwise relu'(d) (Clarke's set at d = 0 included) lies in [0, 1] = 1/2 +- 1/2.
The Jacobian of (max, min) w.r.t. (a, b) is [[sigma, 1 - sigma], [1 - sigma, sigma]], so a row
vector v on the outputs goes back to (a, b) as
    v_a = v_min + sigma w,   v_b = v_max - sigma w,   w = v_max - v_min,
and a change of sigma by delta moves the product by delta w (e_a - e_b): the error of using the
centre sigma_c is at most ||err w|| times the Lipschitz bound of x -> d on the unfixed pairs (the
local certificate), and the CROWN certificate relaxes w relu(d) by the ReLU's lines.

The interval of d is at least the difference of the intervals of a and b, [alo - bhi, ahi - blo],
tightened where possible by bounds of d itself (rows e_a - e_b sent back: much tighter when a and b
share most of their inputs). Sorting is monotone in each entry, so sort(lo) <= sort(z) <= sort(hi)
entrywise: the box of the outputs.
"""

from __future__ import annotations

import math

import torch

from speccert.ir import Sort

Tensor = torch.Tensor


def _down(t: Tensor) -> Tensor:
    return t.nextafter(torch.full_like(t, -math.inf))


def _up(t: Tensor) -> Tensor:
    return t.nextafter(torch.full_like(t, math.inf))


def halves(t: Tensor, dim: int) -> tuple[Tensor, Tensor]:
    """(a, b): the pair's entries at index 0 and 1 of axis `dim` of t."""
    return t.select(dim, 0), t.select(dim, 1)


def out_halves(op: Sort, t: Tensor, dim: int) -> tuple[Tensor, Tensor]:
    """(the max outputs, the min outputs) of a tensor on the Sort's output."""
    first, second = halves(t, dim)
    return (first, second) if op.descending else (second, first)


def difference_box(lo: Tensor, hi: Tensor, dim: int) -> tuple[Tensor, Tensor]:
    """[lo, hi] of d = a - b from the boxes of a and b, rounded outward."""
    (alo, blo), (ahi, bhi) = halves(lo, dim), halves(hi, dim)
    return _down(alo - bhi), _up(ahi - blo)


def slope(dlo: Tensor, dhi: Tensor) -> tuple[Tensor, Tensor]:
    """(sigma_c, err): relu'(d) in sigma_c +- err on [dlo, dhi], exactly (0, 1/2 and 1 are floats)."""
    one = torch.ones_like(dlo)
    mid = torch.where(dlo >= 0, one, torch.where(dhi <= 0, 0.0 * one, 0.5 * one))
    err = torch.where((dlo >= 0) | (dhi <= 0), 0.0 * one, 0.5 * one)
    return mid, err


def back(op: Sort, v: Tensor, sigma: Tensor, dim: int) -> Tensor:
    """Rows v on the Sort's outputs to its input with relu'(d) = sigma (module docstring): [.., z].
    Where sigma is 0 or 1 (a fixed order) the rows are permuted exactly, with no rounding."""
    v_max, v_min = out_halves(op, v, dim)
    w = v_max - v_min
    a, b = v_min + sigma * w, v_max - sigma * w
    a = torch.where(sigma == 1, v_max, torch.where(sigma == 0, v_min, a))
    b = torch.where(sigma == 1, v_min, torch.where(sigma == 0, v_max, b))
    return torch.stack([a, b], dim)


def weight_gap(op: Sort, v: Tensor, dim: int) -> Tensor:
    """w = v_max - v_min per pair: what a change of relu'(d) multiplies."""
    v_max, v_min = out_halves(op, v, dim)
    return v_max - v_min


def pair_rows(ones: Tensor, dim: int) -> Tensor:
    """Rows e_a - e_b on the Sort's input from rows over the pairs (stacked +ones, -ones)."""
    return torch.stack([ones, -ones], dim)


def is_max_min(op: Sort, in_shape: tuple[int, ...]) -> bool:
    """Whether the Sort sorts groups of two (MaxMin / GroupSort-2): the only groups bounded here."""
    return in_shape[op.axis] == 2


__all__ = ["back", "difference_box", "halves", "is_max_min", "out_halves", "pair_rows", "slope", "weight_gap"]
