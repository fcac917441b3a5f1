"""The pieces of the CROWN bound (speccert.bounds.crown) that carry no logic of their own: the
running constant and error of a backward pass, one evaluation's proven bounds and caches (Ball),
dot products and their rounding allowances, and the term counts of the reverse passes."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

import torch

from speccert.bounds.crown_pool import PoolLines
from speccert.bounds.local_bounds import BallBounds
from speccert.ir import AvgPool, Conv, ConvTranspose, Linear, Node
from speccert.norms.rounding import gamma

Tensor = torch.Tensor
U = 2.0**-53
TINY = 1e-300


def backward_terms(graph_shape: tuple[int, ...], node: Node) -> int:
    """>= the number of terms summed per entry of the operator's transposed product, plus its other
    roundings (BatchNorm's scale: square root, division, product)."""
    op = node.op
    if isinstance(op, (Linear, Conv, ConvTranspose)):
        return int(op.weight.numel()) + 8
    if isinstance(op, AvgPool):
        return math.prod(op.kernel) + 8
    return math.prod(graph_shape) + 8  # everything else: generous (the input's size)


def down(t: Tensor) -> Tensor:
    return t.nextafter(torch.full_like(t, -math.inf))


def padded_index(flat: Tensor) -> tuple[Tensor, int]:
    """(index [B, count], count) for a boolean [B, N]: per row the positions of its True entries first
    (ascending), then -1 up to the largest count over the rows (index.remainder(N + 1) sends the
    padding to a spare column N)."""
    count = int(flat.sum(1).max())
    order = torch.sort(flat.to(torch.int8), dim=1, descending=True, stable=True).indices[:, :count]
    return torch.where(flat.gather(1, order), order, torch.full_like(order, -1)), count


def open_intervals(b: int, n: int) -> tuple[Tensor, Tensor]:
    """[-inf, inf] for n entries and one spare column per point (the padding of `padded_index`)."""
    lo = torch.full((b, n + 1), -math.inf, dtype=torch.float64)
    return lo, torch.full_like(lo, math.inf)


def sub_down(a: Tensor, t: Tensor) -> Tensor:
    """<= a - t (t >= 0) for the exact values of the floats a and t."""
    return down((a - t) - 4 * U * (a.abs() + t) - TINY)


def dot(a: Tensor, b: Tensor) -> Tensor:
    """sum over the feature axes of a [B, N, ...] * b [B, ...] (broadcast over rows): [B, N]."""
    return torch.bmm(a.flatten(2), b.reshape(b.shape[0], -1, 1))[:, :, 0]


def err_dot(a: Tensor, w: Tensor) -> Tensor:
    """>= sum |a| w in exact arithmetic (w >= 0): the computed sum of n non-negative products is at
    least (1 - gamma(n + 1)) times the exact one."""
    n = w[0].numel()
    return dot(a.abs(), w) * (1.0 + 2 * gamma(n + 2))


@dataclass
class Acc:
    """Running constant c and error term of N rows per point (module docstring)."""

    const: Tensor
    cabs: Tensor
    err: Tensor
    pieces: int = 0

    def add_const(self, piece: Tensor) -> None:
        self.const = self.const + piece
        self.cabs = self.cabs + piece.abs()
        self.pieces += 1

    def add_err(self, e: Tensor) -> None:
        self.err = self.err + e
        self.pieces += 1


def pick(v: Any, idx: Tensor, batch: int) -> Any:
    """v with every tensor inside (lists, tuples, dict values) indexed by idx along its first axis,
    which must be the batch of `batch` points; other values as they are."""
    if isinstance(v, Tensor):
        assert v.shape[0] == batch, "a per-point bound without its batch axis"
        return v[idx]
    if isinstance(v, (list, tuple)):
        return type(v)(pick(t, idx, batch) for t in v)
    if isinstance(v, dict):
        return {k: pick(t, idx, batch) for k, t in v.items()}
    return v


@dataclass
class Ball:
    """One evaluation: points x [B, ...], radii r [B], the proven bounds over each ball, caches."""

    x: Tensor
    r: Tensor
    bb: BallBounds
    weights: dict[int, Tensor] = field(default_factory=dict)
    lines: dict[int, tuple[Tensor, ...]] = field(default_factory=dict)  # relax() + error weight
    free: dict[int, tuple[Tensor, float]] = field(default_factory=dict)  # unstable ReLU units, alpha
    pools: dict[int, tuple[PoolLines, Tensor, Tensor]] = field(default_factory=dict)  # lines, B, weight
    offset: set[int] = field(default_factory=set)  # stages whose lower lines have intercepts

    def select(self, idx: Tensor) -> Ball:
        """The same bounds and caches for the points `idx` only (indexing: the same values). Every
        field of BallBounds is taken, whatever it holds (lists, tuples, dicts of per-point tensors)."""
        b = self.x.shape[0]
        sub = BallBounds(**{f.name: pick(getattr(self.bb, f.name), idx, b) for f in fields(BallBounds)})
        return Ball(
            self.x[idx],
            self.r[idx],
            sub,
            pick(self.weights, idx, b),
            pick(self.lines, idx, b),
            pick(self.free, idx, b),
            {
                k: (PoolLines(p.low[idx], p.up[idx], p.b_up[idx]), b_up[idx], w[idx])
                for k, (p, b_up, w) in self.pools.items()
            },
            set(self.offset),
        )

    def abs_input(self) -> Tensor:
        rr = self.r.reshape((-1,) + (1,) * (self.x.dim() - 1))
        return (self.x.abs() + rr) * (1.0 + 4 * U) + TINY


def input_adjoint(adj: dict[int, Tensor], ball: Ball, rows: int) -> Tensor:
    """Lam [B, N, *x]: the input's adjoint after a backward pass (0 where no path reaches it)."""
    lam_x = adj.pop(-1, None)
    if lam_x is None:
        lam_x = torch.zeros((ball.x.shape[0], rows, *ball.x.shape[1:]), dtype=torch.float64)
    return lam_x


def finish(acc: Acc, lam_x: Tensor, ball: Ball) -> tuple[Tensor, Tensor]:
    """(a, n): the input's terms added to a backward pass's constant and error, rounded outward."""
    n_in = ball.x[0].numel()
    acc.add_const(dot(lam_x, ball.x))
    acc.add_err(err_dot(lam_x, (gamma(2) * ball.abs_input() + gamma(n_in + 4) * ball.x.abs()) * (1 + 8 * U)))
    p = acc.pieces + 4
    err = (acc.err + gamma(p) * acc.cabs) * (1.0 + gamma(p)) + TINY
    a = sub_down(acc.const, err)
    norm = lam_x.flatten(2).norm(dim=2) * (1.0 + gamma(n_in + 4)) + TINY
    return torch.nan_to_num(a, nan=-math.inf), torch.nan_to_num(norm, nan=math.inf)


__all__ = [
    "TINY",
    "U",
    "Acc",
    "Ball",
    "backward_terms",
    "dot",
    "down",
    "err_dot",
    "finish",
    "input_adjoint",
    "sub_down",
]
