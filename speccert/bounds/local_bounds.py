"""Sound bounds of a network over an L2 ball B(x, r): pre-activation intervals, local slope ranges,
fixed max-pool winners, and masked Lipschitz constants (the forward half of the local certificate).

The network is cut into stages (speccert.bounds.local_stages): z_k = sum_j A_kj h_j + b_k, then
h_k = n_k(z_k), an activation or a max-pool. Over the ball, per point:
- intervals [lo, hi] of every z_k: the intersection of box propagation through the stage's linear
  sub-graph (centre/radius, |A| radius, Higham's gamma(k) rounding of every product added; residual
  sums add boxes) and a per-unit Lipschitz interval z_k,i(x) +- r sum_j ||row_i A_kj|| M_j around an
  enclosure of the exact z_k(x) (or a per-unit bound from a backward pass: `unit_lipschitz`);
- the Jacobian of an activation is diag(f'(z)) with f'(z_i) in [dlo_i, dhi_i] on the interval
  (speccert.bounds.local_slopes; ReLU: 1 active, 0 dead, [0, 1] unstable), kept as centre `mid` and
  half-width `err`; a max-pool window's winner is fixed when its lower bound beats every other
  candidate's upper bound;
- M_k >= the Lipschitz constant of h_k over the ball: sum_j ||W_k A_kj P_j|| M_j, W_k = diag(sup |f'|
  on the interval) (0 on dead ReLUs), P_j the columns of h_j that are not constant (dead ReLUs are 0
  on the whole ball), each masked norm bounded by the source's proven bound times max W, the weighted
  Frobenius norm, or a dense SVD with its error margin for small Linear blocks; a max-pool multiplies
  the Lipschitz bound of z_k by its window-count factor;
- a MaxMin (Sort over pairs, speccert.bounds.local_sort) is a ReLU of the pair's difference d = a - b:
  its interval (the boxes' difference, tightened by per-pair bounds of d itself) fixes the pair's
  order or not; mid/err are relu'(d)'s centre and half-width per pair, l_unstable bounds the
  Lipschitz constant of x -> d on the unfixed pairs (sqrt 2 times that of their entries of z_k:
  ||(a, b) -> a - b|| = sqrt 2), and M_k is that of z_k (sorting is 1-Lipschitz).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from speccert.bounds.linear_tail import absolute_op
from speccert.bounds.local_slopes import image, slope_range
from speccert.bounds.local_sort import difference_box, slope
from speccert.bounds.local_stages import Source, Stage, inner_dimension
from speccert.ir import Activation, Add, BatchNorm, Concat, Graph, MaxPool, Node, Sort
from speccert.norms.rounding import gamma, svd_error

Tensor = torch.Tensor
U = 2.0**-53
SVD_MAX_ENTRIES = 1 << 18  # masked Linear blocks up to this size get a per-point dense SVD


def _down(t: Tensor) -> Tensor:
    return t.nextafter(torch.full_like(t, -math.inf))


def _up(t: Tensor) -> Tensor:
    return t.nextafter(torch.full_like(t, math.inf))


def box_add(a: tuple[Tensor, Tensor], b: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    """(centre, radius) enclosing u + v for u, v in two boxes (the rounding of the centre included)."""
    c = a[0] + b[0]
    g = gamma(4)
    return c, (a[1] + b[1] + g * c.abs()) * (1.0 + g)


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
        spread = absop.forward(rad) if bool(rad.any()) else torch.zeros_like(err)  # a point: no spread
        rad = (spread + err) * (1.0 + g)
        c = new_c
    return c, rad


def centre_radius(lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    c = (lo + hi) / 2
    return c, _up(torch.maximum(hi - c, c - lo) * (1.0 + 4 * U))


def _pool_windows(op: MaxPool, t: Tensor) -> Tensor:
    """[B, C, K, L] candidate values of every window (padding -inf)."""
    (pt, pb), (pl, pr) = op.padding
    t = F.pad(t, [pl, pr, pt, pb], value=-math.inf)
    b, c = t.shape[:2]
    cols = F.unfold(t.reshape(b * c, 1, *t.shape[2:]), op.kernel, op.dilation, 0, op.stride)
    return cols.reshape(b, c, cols.shape[1], cols.shape[2])


def pool_vjp(op: MaxPool, v: Tensor, winner: Tensor, in_shape: tuple[int, ...]) -> Tensor:
    """Route v [B, C, Co, Ho, Wo] to the fixed winners ([B, Co, L] tap index): [B, C, Co, H, W]."""
    b, c, co = v.shape[:3]
    (pt, pb), (pl, pr) = op.padding
    h, w = in_shape[1] + pt + pb, in_shape[2] + pl + pr
    k = math.prod(op.kernel)
    flat = v.reshape(b, c, co, 1, -1)
    idx = winner[:, None, :, None, :].expand(b, c, co, 1, flat.shape[-1])
    taps = torch.zeros((b, c, co, k, flat.shape[-1]), dtype=v.dtype).scatter(3, idx, flat)
    out = F.fold(taps.reshape(b * c * co, k, -1), (h, w), op.kernel, op.dilation, 0, op.stride)
    return out.reshape(b, c, co, h, w)[..., pt : pt + in_shape[1], pl : pl + in_shape[2]]


def pool_fixed(op: MaxPool, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    """(fixed [B, C, L] bool, winner [B, C, L] tap index) of every max-pool window over the ball."""
    lw, hw = _pool_windows(op, lo), _pool_windows(op, hi)
    best, arg = lw.max(2)
    others = hw.scatter(2, arg[:, :, None], -math.inf).amax(2)
    return best >= others, arg  # a_p >= a_q on the whole ball: max = a_p there (ties included)


def box_stage(graph: Graph, st: Stage, leaves: dict[str, tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    """(centre, radius) enclosing z of the stage for sources in the boxes `leaves` (by name)."""
    values = dict(leaves)
    for node in st.nodes:
        if isinstance(node.op, Add):
            values[node.name] = box_add(values[node.inputs[0]], values[node.inputs[1]])
        elif isinstance(node.op, Concat):  # exact: the boxes side by side
            parts = [values[i] for i in node.inputs]
            values[node.name] = (
                node.op.forward(*(p[0] for p in parts)),
                node.op.forward(*(p[1] for p in parts)),
            )
        else:
            values[node.name] = box_affine(graph, [node], *values[node.inputs[0]])
    return values[st.z_name]


def _nonzero_first(t: Tensor) -> Tensor:
    """[B, K] indices putting each row's nonzero entries first, K = the most nonzeros of any row."""
    nz = t != 0
    k = max(int(nz.sum(1).max()), 1)
    return torch.sort(nz.to(torch.int8), dim=1, descending=True, stable=True).indices[:, :k]


def _compact(w: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """diag(rows_b) W diag(cols_b) with its zero rows and columns dropped (padded with zeros): the
    same singular values, a smaller SVD."""
    ri, ci = _nonzero_first(rows), _nonzero_first(cols)
    b = rows.shape[0]
    wr = w[ri]  # [B, R, n_in]
    wm = wr.gather(2, ci[:, None, :].expand(b, ri.shape[1], ci.shape[1]))
    return wm * rows.gather(1, ri)[:, :, None] * cols.gather(1, ci)[:, None, :]


def masked_norm(src: Source, rows: Tensor, cols: Tensor | None) -> Tensor:
    """Per point >= ||diag(rows) A P_cols||_2 (rows: weights >= 0 [B, *z]; cols: 0/1 masks over the
    source, None = all)."""
    b = rows.shape[0]
    r2 = rows.reshape(b, -1).square()
    best = src.upper * rows.reshape(b, -1).amax(1) * (1.0 + 4 * U)
    frob2 = (r2 * src.rownorm.reshape(1, -1).square()).sum(1)
    if src.weight is not None:
        w = src.weight
        c2 = cols.reshape(b, -1) if cols is not None else torch.ones(b, w.shape[1], dtype=torch.float64)
        frob2 = torch.minimum(frob2, ((c2 @ w.square().T) * r2).sum(1))
        if w.numel() <= SVD_MAX_ENTRIES:
            wm = _compact(w, rows.reshape(b, -1), c2)
            sigma = torch.linalg.svdvals(wm)[:, 0]
            fro = wm.flatten(1).norm(dim=1) * (1.0 + gamma(w.numel() + 2))
            svd = (sigma + svd_error(*w.shape) * fro + 1e-300) * (1.0 + 4 * U)
            best = torch.minimum(best, svd)
    frob = (frob2 * (1.0 + gamma(r2.shape[1] + 4))).sqrt() * (1.0 + 4 * U)
    return torch.minimum(best, frob)


@dataclass
class BallBounds:
    """Per stage k (a nonlinearity), per point: the Jacobian's centre and half-width over the ball
    (activation: f' in mid +- err per unit of z_k; max-pool: mid = windows whose winner is fixed,
    err = the others, as 0/1 masks over h_k), the winners, and l_unstable >= the Lipschitz constant of
    x -> z_k restricted to the units with err > 0 (activation) or of all of z_k (max-pool); and the
    proven intervals of z_k and of h_k over the ball (`z`, `h`: (lo, hi) pairs). A MaxMin stage
    (speccert.bounds.local_sort) has mid/err per pair (relu'(d)), l_unstable for x -> d on the
    unfixed pairs, and d's interval in `pairs`."""

    mid: list[Tensor]
    err: list[Tensor]
    winner: list[Tensor | None]
    l_unstable: list[Tensor]
    z: list[tuple[Tensor, Tensor]] = field(default_factory=list)
    h: list[tuple[Tensor, Tensor]] = field(default_factory=list)
    pairs: dict[int, tuple[Tensor, Tensor]] = field(default_factory=dict)  # MaxMin stages: d's interval
    m: dict[int, Tensor] = field(default_factory=dict)  # M_k >= the Lipschitz constant of h_k on the ball
    # per unit of z_k (per pair of a MaxMin: of d) >= its Lipschitz constant on the ball, where asked
    unit_lip: dict[int, Tensor] = field(default_factory=dict)


Interval = Callable[[int, BallBounds, Tensor, Tensor], tuple[Tensor, Tensor] | None]


@dataclass
class _Outputs:
    """Per stage output h_k (key -1: the input x): its box (lo, hi), an enclosure of its exact value at x, the
    Lipschitz bound M_k over the ball and the mask of its non-constant units (None: all)."""

    box: dict[int, tuple[Tensor, Tensor]]
    exact: dict[int, tuple[Tensor, Tensor]]
    m: dict[int, Tensor]
    cols: dict[int, Tensor | None]


def _source_sum(st: Stage, o: _Outputs, norm: Callable[[Source], Tensor]) -> Tensor:
    """sum_j norm(A_kj) M_j, rounded up."""
    total = torch.zeros_like(o.m[-1])
    for s in st.sources:
        total = _up((total + norm(s) * o.m[s.index]) * (1.0 + 4 * U))
    return total


def _z_interval(graph: Graph, st: Stage, o: _Outputs, r: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(lo, hi) of z over the ball, (lo, hi) enclosing the exact z(x)."""
    names = {s.name: s.index for s in st.sources}
    if not st.nodes:  # a nonlinearity right after another: its intervals as they are
        (lo, hi), (ec, erad) = o.box[st.sources[0].index], o.exact[st.sources[0].index]
        return lo, hi, _down(ec - erad), _up(ec + erad)
    zc, zrad = box_stage(graph, st, {n: centre_radius(*o.box[i]) for n, i in names.items()})
    ec, erad = box_stage(graph, st, {n: o.exact[i] for n, i in names.items()})
    view = (-1,) + (1,) * (ec.dim() - 1)
    per_unit = torch.zeros_like(ec)
    for s in st.sources:
        per_unit = _up((per_unit + s.rownorm[None] * o.m[s.index].reshape(view)) * (1.0 + 4 * U))
    lip = _up(r.reshape(view) * per_unit * (1.0 + 4 * U))
    elo, ehi = _down(ec - erad), _up(ec + erad)
    zlo = torch.maximum(_down(zc - zrad), _down(elo - lip))
    zhi = torch.minimum(_up(zc + zrad), _up(ehi + lip))
    return zlo, zhi, elo, ehi


def _wanted(st: Stage, z: tuple[Tensor, Tensor, Tensor, Tensor]) -> Tensor | None:
    """Units of z_k whose tighter interval may matter: an activation's units with an uncertain slope."""
    if st.act is None or not isinstance(st.act.op, Activation):
        return None
    dlo, dhi = slope_range(st.act.op.fn, st.act.op.alpha, z[0], z[1])
    return dlo != dhi


def _tighten(
    z: tuple[Tensor, Tensor, Tensor, Tensor], r: Tensor, unit: Tensor | None
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Intersect z's interval with z(x) +- r unit (unit: per-unit Lipschitz bounds, inf = none)."""
    if unit is None:
        return z
    zlo, zhi, elo, ehi = z
    lip = _up(r.reshape((-1,) + (1,) * (elo.dim() - 1)) * unit * (1.0 + 4 * U))
    return torch.maximum(zlo, _down(elo - lip)), torch.minimum(zhi, _up(ehi + lip)), elo, ehi


def _pool_stage(
    st: Stage, o: _Outputs, k: int, z: tuple[Tensor, Tensor, Tensor, Tensor], out: BallBounds
) -> None:
    assert st.act is not None and isinstance(st.act.op, MaxPool)
    op, (zlo, zhi, elo, ehi) = st.act.op, z
    b = zlo.shape[0]
    fixed, arg = pool_fixed(op, zlo, zhi)
    l_z = _source_sum(st, o, lambda s: masked_norm(s, torch.ones_like(zlo), o.cols[s.index]))
    out.mid.append(fixed.reshape(b, *st.act.shape).to(torch.float64))
    out.err.append((~fixed).reshape(b, *st.act.shape).to(torch.float64))
    out.winner.append(arg)
    out.l_unstable.append(l_z)
    o.m[k] = _up(l_z * st.pool_factor * (1.0 + 4 * U))
    o.box[k] = op.forward(zlo), op.forward(zhi)
    o.exact[k] = centre_radius(op.forward(elo), op.forward(ehi))
    o.cols[k] = None


def _act_stage(
    st: Stage, o: _Outputs, k: int, z: tuple[Tensor, Tensor, Tensor, Tensor], out: BallBounds
) -> None:
    assert st.act is not None and isinstance(st.act.op, Activation)
    fn, alpha, (zlo, zhi, elo, ehi) = st.act.op.fn, st.act.op.alpha, z
    dlo, dhi = slope_range(fn, alpha, zlo, zhi)
    mid, rad = centre_radius(dlo, dhi)
    err = torch.where(dlo == dhi, torch.zeros_like(rad), rad)  # a fixed slope is exactly mid
    slope = torch.maximum(dlo.abs(), dhi.abs())
    uncertain = (err > 0).to(torch.float64)
    out.mid.append(mid)
    out.err.append(err)
    out.winner.append(None)
    out.l_unstable.append(_source_sum(st, o, lambda s: masked_norm(s, uncertain, o.cols[s.index])))
    o.m[k] = _source_sum(st, o, lambda s: masked_norm(s, slope, o.cols[s.index]))
    o.box[k] = image(fn, alpha, zlo, zhi)
    o.exact[k] = centre_radius(*image(fn, alpha, elo, ehi))
    o.cols[k] = (slope > 0).to(torch.float64)


def _sort_stage(
    st: Stage,
    o: _Outputs,
    k: int,
    z: tuple[Tensor, Tensor, Tensor, Tensor],
    out: BallBounds,
    r: Tensor,
    unit_lipschitz: Callable[[int, BallBounds, Tensor | None], Tensor | None] | None,
    interval: Interval | None,
) -> None:
    """A MaxMin stage (module docstring): d's interval from the boxes, then from d(x) +- r l_d with
    per-pair Lipschitz bounds l_d (`unit_lipschitz` asked with the unfixed pairs) and from `interval`
    (asked with d's interval), all intersected."""
    assert st.act is not None and isinstance(st.act.op, Sort)
    op, (zlo, zhi, elo, ehi) = st.act.op, z
    dim = op.axis + 1
    dlo, dhi = difference_box(zlo, zhi, dim)
    if unit_lipschitz is not None and st.nodes:
        lip = unit_lipschitz(k, out, (dlo < 0) & (dhi > 0))
        if lip is not None:
            out.unit_lip[k] = lip
            xlo, xhi = difference_box(elo, ehi, dim)  # encloses d(x)
            rad = _up(r.reshape((-1,) + (1,) * (lip.dim() - 1)) * lip * (1.0 + 4 * U))
            dlo, dhi = torch.maximum(dlo, _down(xlo - rad)), torch.minimum(dhi, _up(xhi + rad))
    if interval is not None and st.nodes:
        other = interval(k, out, dlo, dhi)
        if other is not None:
            dlo, dhi = torch.maximum(dlo, other[0]), torch.minimum(dhi, other[1])
    out.pairs[k] = (dlo, dhi)
    mid, err = slope(dlo, dhi)
    unsure = (err > 0).to(torch.float64)
    units = torch.stack([unsure, unsure], dim)
    l_d = _source_sum(st, o, lambda s: masked_norm(s, units, o.cols[s.index]))
    out.mid.append(mid)
    out.err.append(err)
    out.winner.append(None)
    out.l_unstable.append(_up(l_d * math.sqrt(2.0) * (1.0 + 4 * U)))
    o.m[k] = _source_sum(st, o, lambda s: masked_norm(s, torch.ones_like(zlo), o.cols[s.index]))
    o.box[k] = op.forward(zlo), op.forward(zhi)
    o.exact[k] = centre_radius(op.forward(elo), op.forward(ehi))
    o.cols[k] = None


def ball_bounds(
    graph: Graph,
    stages: list[Stage],
    x: Tensor,
    r: Tensor,
    refine: Callable[[int, BallBounds], None] | None = None,
    unit_lipschitz: Callable[[int, BallBounds, Tensor | None], Tensor | None] | None = None,
    interval: Interval | None = None,
) -> BallBounds:
    """Slope ranges, masks and Lipschitz bounds of every nonlinear stage over B(x_b, r_b), per point.

    `unit_lipschitz(k, bounds so far, wanted units)` may give per-unit Lipschitz bounds of z_k over the
    ball (tighter than sum_j ||row_i A_kj|| M_j; asked for the units whose slope is not yet fixed, all
    units before a max-pool); `refine(k, bounds)` may tighten stage k's l_unstable once its
    slopes are known; `interval(k, bounds so far, lo, hi)` may give another proven interval of z_k
    (speccert.bounds.crown: linear relaxation), intersected with this one (both hold, so does their
    intersection). At a MaxMin stage both hooks are asked about the pairs' differences d instead of
    the units of z_k (`_sort_stage`)."""
    rr = r.reshape((-1,) + (1,) * (x.dim() - 1))
    lo, hi = _down(x - rr), _up(x + rr)
    o = _Outputs({-1: (lo, hi)}, {-1: (x, torch.zeros_like(x))}, {-1: torch.ones_like(r)}, {-1: None})
    out = BallBounds([], [], [], [], m=o.m)
    for k, st in enumerate(stages[:-1]):
        z = _z_interval(graph, st, o, r)
        if st.act is not None and isinstance(st.act.op, Sort):
            out.z.append((z[0], z[1]))
            _sort_stage(st, o, k, z, out, r, unit_lipschitz, interval)
            out.h.append(o.box[k])
            if refine is not None:
                refine(k, out)
            continue
        if unit_lipschitz is not None and st.nodes:
            unit = unit_lipschitz(k, out, _wanted(st, z))
            if unit is not None:
                out.unit_lip[k] = unit
            z = _tighten(z, r, unit)
        if interval is not None and st.nodes:
            other = interval(k, out, z[0], z[1])
            if other is not None:
                z = (torch.maximum(z[0], other[0]), torch.minimum(z[1], other[1]), z[2], z[3])
        out.z.append((z[0], z[1]))
        if st.act is not None and isinstance(st.act.op, MaxPool):
            _pool_stage(st, o, k, z, out)
            out.h.append(o.box[k])
            continue
        _act_stage(st, o, k, z, out)
        out.h.append(o.box[k])
        if refine is not None:
            refine(k, out)
    return out
