"""Sound bounds of a chain network over an L2 ball B(x, r): pre-activation intervals, fixed ReLU units
and max-pool winners, and masked Lipschitz constants (the forward half of speccert.bounds.certificates.local).

The network (folded, float64) is a chain h_0 = x -> z_1 = A_1 h_0 -> h_1 = s_1(z_1) -> ... -> logits,
each A_k an affine block (speccert.bounds.linear_tail) and s_k a ReLU or a max-pool. Over the ball:
- intervals [lo, hi] of every z_k: the intersection of box propagation (centre/radius, |A| radius,
  Higham's gamma(k) rounding of every product added) and a per-unit Lipschitz interval
  z_k,i(x) +- r ||row_i A_k|| M_{k-1} around an enclosure of the exact z_k(x);
- ReLU unit stable-active (lo > 0: slope 1), dead (hi <= 0: constant 0) or unstable; a max-pool window's
  winner is fixed when its lower bound beats every other candidate's upper bound;
- M_k >= the Lipschitz constant of h_k over the ball: ||P_N A_k P_N'|| M_{k-1} with only the non-dead
  rows and columns (dead units are 0 everywhere on the ball), the masked norm bounded by the layer's
  proven bound (masking never increases a norm), the masked Frobenius norm, or a dense SVD with its
  error margin for small Linear blocks; a max-pool multiplies by its window-count factor.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from speccert.bounds.certificate import NotApplicable
from speccert.bounds.compose import maxpool_factor
from speccert.bounds.linear_tail import absolute_op, affine_chain
from speccert.bounds.lipschitz import LipschitzBound
from speccert.ir import INPUT, Activation, Affine, BatchNorm, Conv, Graph, Linear, MaxPool, Node, Reshape
from speccert.norms.result import round_up
from speccert.norms.rounding import gamma, svd_error

Tensor = torch.Tensor
U = 2.0**-53
SVD_MAX_ENTRIES = 1 << 18  # masked Linear blocks up to this size get a per-point dense SVD


def _down(t: Tensor) -> Tensor:
    return t.nextafter(torch.full_like(t, -math.inf))


def _up(t: Tensor) -> Tensor:
    return t.nextafter(torch.full_like(t, math.inf))


@dataclass
class Stage:
    """One affine block followed by a nonlinearity (`act` None: the affine tail to the logits)."""

    block: list[Node]
    act: Node | None
    z_shape: tuple[int, ...]
    upper: float  # >= ||A_k||_2 (product of the proven per-node bounds)
    schur: float  # >= || |A_k| ||_2, for the rounding of the backward pass
    rownorm: Tensor  # [*z_shape] >= ||row_i A_k||
    weight: Tensor | None  # the Linear of a [Reshape*] Linear block (masked norms), else None
    pool_factor: float = 1.0


def inner_dimension(graph: Graph, node: Node) -> int:
    op = node.op
    if isinstance(op, (Linear, Conv)):
        return int(op.weight[0].numel()) + 4
    if hasattr(op, "weight") and isinstance(op.weight, Tensor) and not isinstance(op, BatchNorm):
        return int(op.weight.numel()) + 4
    if isinstance(op, Reshape) or op.op_type in ("Transpose", "Pad"):
        return 0
    return math.prod(graph.shape_of(node.inputs[0])) + 4  # pooling, Affine, BatchNorm: generous


def _schur(op: object) -> float:
    """|| |A| ||_2 <= sqrt(max row sum * max column sum) of |A| (Schur test), for Linear/Conv."""
    if isinstance(op, Linear):
        w = op.weight.detach().abs()
        return math.sqrt(float(w.sum(1).max()) * float(w.sum(0).max()))
    assert isinstance(op, Conv)
    w = op.weight.detach().abs()
    g = op.groups
    rows = float(w.flatten(1).sum(1).max())
    cols = float(w.reshape(g, w.shape[0] // g, w.shape[1], -1).sum((1, 3)).max())
    return math.sqrt(rows * cols)


def _identity_like(node: Node) -> bool:
    """Reshape (keeps the flat order) or a pure shift (what folding leaves of a normalisation)."""
    op = node.op
    return isinstance(op, Reshape) or (isinstance(op, Affine) and bool((op.scale == 1).all()))


def _rownorm(graph: Graph, block: list[Node], upper: float, z_shape: tuple[int, ...]) -> Tensor:
    """||row_i A||: exact (rounded up) for [Reshape*] Linear/Conv [Reshape*], else the block's norm."""
    weighted = [n for n in block if not _identity_like(n)]
    if len(weighted) == 1:
        node = weighted[0]
        op = node.op
        sq: Tensor | None = None
        if isinstance(op, Linear):
            sq = op.weight.detach().square().sum(1)
        elif isinstance(op, Conv) and op.padding_mode == "zeros":
            w2 = op.weight.detach().square()
            ones = torch.ones((1, *graph.shape_of(node.inputs[0])), dtype=torch.float64)
            sq = Conv(w2, None, op.stride, op.padding, op.dilation, op.groups).forward(ones)[0]
        if sq is not None:
            r = (sq * (1.0 + gamma(inner_dimension(graph, node) + 4))).sqrt() * (1.0 + 4 * U)
            return r.reshape(z_shape).clamp_max(upper)
    return torch.full(z_shape, upper, dtype=torch.float64)


def build_stages(bound: LipschitzBound) -> list[Stage]:
    """Split the folded chain graph into stages; NotApplicable if it is not a ReLU/max-pool chain."""
    graph = bound.folded
    uppers = {n.name: n.upper.value for n in bound.layers}
    prev = INPUT
    for node in graph.nodes:
        if node.inputs != (prev,):
            raise NotApplicable("the local certificate needs a chain network (no Add/Concat branches)")
        op = node.op
        if isinstance(op, Activation) and op.fn != "relu":
            raise NotApplicable(f"the local certificate supports relu and max-pool, not {op.fn}")
        if isinstance(op, MaxPool) and (op.ceil_mode or len(op.kernel) != 2):
            raise NotApplicable("the local certificate supports 2-d max-pool without ceil_mode")
        if not type(op).linear and not isinstance(op, (Activation, MaxPool)):
            raise NotApplicable(f"the local certificate does not support {op.op_type}")
        prev = node.name
    acts = [n for n in graph.nodes if not type(n.op).linear]
    stages: list[Stage] = []
    for end in [*(a.inputs[0] for a in acts), graph.output]:
        start, block = affine_chain(graph, end)
        del start
        up, schur = 1.0, 1.0
        for n in block:
            up = round_up(up * uppers[n.name])
            schur = round_up(schur * (_schur(n.op) if isinstance(n.op, (Linear, Conv)) else uppers[n.name]))
        act = acts[len(stages)] if len(stages) < len(acts) else None
        z_shape = graph.shape_of(end)
        lin = [n for n in block if not _identity_like(n)]
        op0 = lin[0].op if len(lin) == 1 and block[-1] is lin[0] else None
        weight = op0.weight.detach() if isinstance(op0, Linear) else None
        st = Stage(block, act, z_shape, up, max(schur, up), _rownorm(graph, block, up, z_shape), weight)
        if act is not None and isinstance(act.op, MaxPool):
            st.pool_factor = maxpool_factor(act.op, z_shape, act.shape)
        stages.append(st)
    return stages


def box_affine(graph: Graph, block: list[Node], c: Tensor, rad: Tensor) -> tuple[Tensor, Tensor]:
    """(centre, radius) enclosing A h + b for every h in the box c +- rad (rounding included)."""
    for node in block:
        op = node.op
        k = inner_dimension(graph, node)
        absop = absolute_op(op, c.dim() - 1)
        new_c = op.forward(c)
        if k == 0:  # permutations and zero padding: exact
            c, rad = new_c, absop.forward(rad)
            continue
        g = gamma(k + 16)
        const = op.forward(torch.zeros_like(c[:1])).abs()
        if isinstance(op, BatchNorm):  # (x - mean) / sqrt(var + eps) * w + b: bound each rounding
            s = op.scale_shift()[0].abs().reshape((-1,) + (1,) * (c.dim() - 2))
            const = const + s * op.mean.abs().reshape(s.shape) + op.bias.abs().reshape(s.shape)
        err = g * (absop.forward(c.abs()) + const)
        rad = (absop.forward(rad) + err) * (1.0 + g)
        c = new_c
    return c, rad


def centre_radius(lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    c = (lo + hi) / 2
    return c, _up(torch.maximum(hi - c, c - lo) * (1.0 + 4 * U))


def masked_norm(st: Stage, rows: Tensor, cols: Tensor | None) -> Tensor:
    """Per point >= ||P_rows A P_cols||_2 (rows/cols: 0/1 float masks [B, *shape]; cols None = all)."""
    b = rows.shape[0]
    best = torch.full((b,), st.upper, dtype=torch.float64)
    r2 = rows.reshape(b, -1)
    frob2 = (r2 * st.rownorm.reshape(1, -1).square()).sum(1)
    if st.weight is not None:
        w = st.weight
        c2 = cols.reshape(b, -1) if cols is not None else torch.ones(b, w.shape[1], dtype=torch.float64)
        frob2 = torch.minimum(frob2, ((c2 @ w.square().T) * r2).sum(1))
        if w.numel() <= SVD_MAX_ENTRIES:
            wm = w[None] * r2[:, :, None] * c2[:, None, :]
            sigma = torch.linalg.svdvals(wm)[:, 0]
            fro = wm.flatten(1).norm(dim=1) * (1.0 + gamma(w.numel() + 2))
            svd = (sigma + svd_error(*w.shape) * fro + 1e-300) * (1.0 + 4 * U)
            best = torch.minimum(best, svd)
    frob = (frob2 * (1.0 + gamma(r2.shape[1] + 4))).sqrt() * (1.0 + 4 * U)
    return torch.minimum(best, frob)


@dataclass
class BallBounds:
    """Per stage k (a nonlinearity): masks over its input z_k and Lipschitz bounds, per point."""

    fixed: list[Tensor]  # relu: active units; max-pool: windows (outputs) whose winner is fixed
    unstable: list[Tensor]  # relu: units neither active nor dead; max-pool: windows not fixed
    winner: list[Tensor | None]  # max-pool: flat index (in the padded input) of each window's winner
    l_unstable: list[Tensor]  # >= Lipschitz of x -> z_k restricted to the unstable units (relu), all (pool)


def _pool_windows(op: MaxPool, t: Tensor) -> Tensor:
    """[B, C, K, L] candidate values of every window (padding -inf)."""
    (pt, pb), (pl, pr) = op.padding
    t = F.pad(t, [pl, pr, pt, pb], value=-math.inf)
    b, c = t.shape[:2]
    cols = F.unfold(t.reshape(b * c, 1, *t.shape[2:]), op.kernel, op.dilation, 0, op.stride)
    return cols.reshape(b, c, cols.shape[1], cols.shape[2])


def pool_fixed(op: MaxPool, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    """(fixed [B, C, L] bool, winner [B, C, L] tap index) of every max-pool window over the ball."""
    lw, hw = _pool_windows(op, lo), _pool_windows(op, hi)
    best, arg = lw.max(2)
    others = hw.scatter(2, arg[:, :, None], -math.inf).amax(2)
    return best >= others, arg  # a_p >= a_q on the whole ball: max = a_p there (ties included)


def _lip_interval(
    st: Stage, r: Tensor, m: Tensor, ec: Tensor, erad: Tensor, unit: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(lo, hi) of z over the ball from Lipschitz rows, and (lo, hi) enclosing the exact z(x)."""
    view = (-1,) + (1,) * (ec.dim() - 1)
    per_unit = st.rownorm[None] * m.reshape(view)
    if unit is not None:
        per_unit = torch.minimum(per_unit, unit)
    lip = _up(r.reshape(view) * per_unit * (1.0 + 4 * U))
    elo, ehi = _down(ec - erad), _up(ec + erad)
    return _down(elo - lip), _up(ehi + lip), elo, ehi


def ball_bounds(
    graph: Graph,
    stages: list[Stage],
    x: Tensor,
    r: Tensor,
    refine: Callable[[int, BallBounds], None] | None = None,
    unit_lipschitz: Callable[[int, BallBounds], Tensor | None] | None = None,
) -> BallBounds:
    """Masks and Lipschitz bounds of every nonlinear stage over B(x_b, r_b), per point (float64).

    `unit_lipschitz(k, bounds so far)` may give per-unit Lipschitz bounds of z_k over the ball (tighter
    than ||row_i|| M); `refine(k, bounds)` may tighten stage k's l_unstable once its masks are known."""
    b = x.shape[0]
    rr = r.reshape((-1,) + (1,) * (x.dim() - 1))
    lo, hi = _down(x - rr), _up(x + rr)
    ec, erad = x, torch.zeros_like(x)  # enclosure of the exact activations at x itself
    m = torch.ones(b, dtype=torch.float64)
    cols: Tensor | None = None  # non-dead units of the previous h (dead ones are 0 on the whole ball)
    out = BallBounds([], [], [], [])
    for st in stages[:-1]:
        assert st.act is not None
        if st.block:
            c, rad = centre_radius(lo, hi)
            zc, zrad = box_affine(graph, st.block, c, rad)
            ec, erad = box_affine(graph, st.block, ec, erad)
            unit = unit_lipschitz(len(out.fixed), out) if unit_lipschitz is not None else None
            llo, lhi, elo, ehi = _lip_interval(st, r, m, ec, erad, unit)
            zlo = torch.maximum(_down(zc - zrad), llo)
            zhi = torch.minimum(_up(zc + zrad), lhi)
        else:  # a nonlinearity right after another: its intervals as they are (exact zeros stay exact)
            zlo, zhi = lo, hi
            elo, ehi = _down(ec - erad), _up(ec + erad)
        op = st.act.op
        if isinstance(op, MaxPool):
            fixed, arg = pool_fixed(op, zlo, zhi)
            l_z = _up(masked_norm(st, torch.ones_like(zlo), cols) * m * (1.0 + 4 * U))
            out.fixed.append(fixed.reshape(b, *st.act.shape))
            out.unstable.append(~fixed.reshape(b, *st.act.shape))
            out.winner.append(arg)
            out.l_unstable.append(l_z)
            m = _up(l_z * st.pool_factor * (1.0 + 4 * U))
            lo, hi = op.forward(zlo), op.forward(zhi)
            elo, ehi = op.forward(elo), op.forward(ehi)
            ec, erad = centre_radius(elo, ehi)
            cols = None
            continue
        active, dead = zlo > 0, zhi <= 0
        unstable = ~active & ~dead
        nondead = (~dead).to(torch.float64)
        out.fixed.append(active)
        out.unstable.append(unstable)
        out.winner.append(None)
        out.l_unstable.append(_up(masked_norm(st, unstable.to(torch.float64), cols) * m * (1.0 + 4 * U)))
        m = _up(masked_norm(st, nondead, cols) * m * (1.0 + 4 * U))
        if refine is not None:
            refine(len(out.fixed) - 1, out)
        lo, hi = zlo.clamp_min(0.0), zhi.clamp_min(0.0)
        ec, erad = centre_radius(elo.clamp_min(0.0), ehi.clamp_min(0.0))
        cols = nondead
    return out
