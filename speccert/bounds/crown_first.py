"""The CROWN margin bound with the first nonlinear layer kept convex (one ball, not one box per unit).

Setting. Let stage j0 be the first whose z = A x + b is affine in the input (one Linear or Conv
between reshapes and shifts), followed by units h_u = phi_u(z), each a window w(u) of candidates:
    phi_u = max(0, max_{i in w(u)} z_i)   (ReLU, or ReLU then a tiling MaxPool, or MaxPool then ReLU)
    phi_u = max_{i in w(u)} z_i           (MaxPool alone: no 0 option)
(a plain ReLU unit is a window of one). CROWN's backward pass (speccert.bounds.crown) reaches h with
the float adjoint lam [rows, units] and proves  margin(x') >= lam^T h(x') + K(x')  on B(x, r), K
affine. Write x' = x + d, z0 = z(x), Delta = A d.

Split. A unit whose window is fixed on the ball (dead: every hi <= 0; or a winner w with
lo_w >= 0 and lo_w >= hi_k for the others; speccert.bounds.local_bounds' intervals of z) has phi_u
linear there (0 or z_w). An unfixed unit with lam_u >= 0 takes the tangent line at z0, z_{i*} with
i* = argmax z0 (or 0 where max z0 < 0): phi_u >= it everywhere. Those lines go through CROWN's own
affine step (`Crown.descend` / `crown_terms.finish`: every rounding of A^T mu, b and x accounted for), giving the
float a_A and g (the input's adjoint, taken exactly as stored) with
    (their part) >= a_A + g^T d   for every ||d|| <= r.
The set S of unfixed units with lam_u < 0 stays convex. With p_i >= z0_i (box_stage's enclosure of z
at x, rounded up), phi^_u = max(0, max_i p_i) and beta_i >= p_i - phi^_u, beta_i <= 0:
    phi_u(z0 + Delta) <= phi^_u + max(0, max_i (Delta_i + beta_i)),
so  margin(x + d) >= a_A - sum_S |lam_u| phi^_u + g^T d - sum_S |lam_u| max(0, max_i(a_i^T d + beta_i)).
Over ||d|| <= rho the subtracted part -g^T d + sum_S (...) is convex; its sup is the max over choices
sigma (one candidate or none per unit) of rho ||v_sigma|| + B_sigma, v_sigma = -g + sum_u |lam_u|
a_sigma(u), B_sigma = sum_u |lam_u| beta_sigma(u). Expanding the square with M_uv >= max(0, max_{i in
u, k in v} a_i^T a_k) (every cross term a_i^T a_k <= M_uv, and M >= 0 covers units not chosen):
    ||v_sigma||^2 <= ||g||^2 + sum_{u in sigma} q_u(sigma_u),   q_u(i) = |lam_u| (-2 g^T a_i + (M |lam_S|)_u),
and sqrt(Q) <= (Q / t + t) / 2 for any t > 0 separates the units: with c = rho / (2 t),
    B_t(rho) = c ||g||^2 + rho^2 / (4 c) + sum_{u in S} max(0, max_i [c q_u(i) + |lam_u| beta_i])
bounds the sup for every t (no max(0, .) for windows without the 0 option). For fixed t, B_t is convex
in rho with B_t(0) = 0 (beta <= 0, and max_i beta_i = 0 exactly for the candidate giving phi^), so
B_t(rho) <= (rho / r) B_t(r) for rho <= r: the bound fits CROWN's form margin >= a - rho n with
a = a_A - sum_S |lam_u| phi^_u and n = min_t B_t(r) / r (a grid of t around
t* = sqrt(||g||^2 + sum_u max_i q_u(i)^+)). Any t is valid; the grid only chooses.

Floating point (exact arithmetic on the stored floats must give an upper bound of everything
subtracted; u = 2^-53):
- rows a_i: e_i^T A by the stage's reverse pass on one-hot rows: one product among zeros, exact.
- M: fl(a_i^T a_k) within gamma(n) |a_i|^T |a_k| <= gamma(n) ||a_i|| ||a_k|| (n: input size); M_uv =
  (max(0, max fl) + 2 gamma(n + 2) N_u N_v) (1 + 4u) + 1e-300, N_u >= max_i ||a_i|| (rounded up).
- g^T a_i: (A g) without the bias by one product, within gamma(K) ||a_i|| ||g|| (local_first
  ._linear_part's spread), taken at its lower end.
- (M |lam_S|)_u: non-negative terms, raised by 2 gamma(U + 2); q_u(i) and each term c q + |lam| beta
  raised by 4u times the magnitudes of their pieces plus 1e-300; beta = fl(p - phi^) (1 - 4u) (>= the
  exact difference, which is <= 0); sums over units raised by 2 gamma(U + 2) times their absolute
  sums; ||g||^2 by 2 gamma(n + 2); the final additions and the division by r by 4u.
- a: a_A from CROWN (rounded down), minus sum |lam| phi^ rounded up (2 gamma(U + 4) of its absolute
  sum) and rounded down once more.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, replace
from typing import Protocol

import torch
import torch.nn.functional as F

from speccert.bounds.crown_slopes import score
from speccert.bounds.crown_terms import TINY, Acc, Ball, U, down, finish, input_adjoint
from speccert.bounds.local_bounds import box_stage
from speccert.bounds.local_first import _linear_part
from speccert.bounds.local_stages import Stage
from speccert.ir import Activation, Graph, MaxPool
from speccert.norms.rounding import gamma

Tensor = torch.Tensor
UNIT_CAP = 8192  # units of the first layer (M is U x U float64: 0.5 GB at the cap)
DENSE_WORK = 2e9  # multiply-adds of a dense Gram of the candidates' rows; above it, sparse
SPARSE_NNZ = 1 << 24  # nonzeros of the candidates' rows kept sparse; above it, no refinement
SPARSE_WORK = 3e8  # products of a sparse Gram (sum over inputs of their rows squared; ~1e8 / s here)
ROW_CHUNK = 512
# c / c* (c = r / (2t)); 64 values instead moved verivital's radii by +0.5 % on 6 points
GRID = torch.logspace(math.log10(0.5), math.log10(20.0), 16, dtype=torch.float64)


@dataclass
class FirstPlan:
    """The units of the first nonlinear layer: stage j0 (z = A x + b), stage `top` (h = the units),
    candidates `cand` [U, K] (flat indices into z), `zero`: the 0 option, M [U, U] (docstring)."""

    j0: int
    top: int
    cand: Tensor
    zero: bool
    m: Tensor


def _tiling(op: MaxPool) -> bool:
    """Windows that never share a candidate (and have no padding): the tangent adjoints then land
    on distinct entries of z (no sums)."""
    return (
        all(s >= k for s, k in zip(op.stride, op.kernel, strict=True))
        and all(d == 1 for d in op.dilation)
        and all(p == 0 for pair in op.padding for p in pair)
        and not op.ceil_mode
    )


def _windows(op: MaxPool, z_shape: tuple[int, ...]) -> Tensor:
    """[U, K] flat indices into z [C, H, W] of every window's candidates (U = C x windows)."""
    c = z_shape[0]
    idx = torch.arange(math.prod(z_shape), dtype=torch.float64).reshape(1, *z_shape)
    cols = F.unfold(idx.reshape(c, 1, *z_shape[1:]), op.kernel, op.dilation, 0, op.stride)
    return cols.permute(0, 2, 1).reshape(-1, cols.shape[1]).round().to(torch.int64)


def _relu(st: Stage) -> bool:
    return st.act is not None and isinstance(st.act.op, Activation) and st.act.op.fn == "relu"


def _sole_follower(stages: list[Stage], j: int) -> Stage | None:
    """Stage j + 1 where it only applies a nonlinearity to h_j and nothing else reads h_j."""
    if j + 1 >= len(stages):
        return None
    nxt = stages[j + 1]
    users = [k for k, st in enumerate(stages) if any(s.index == j for s in st.sources)]
    if nxt.nodes or users != [j + 1] or len(nxt.sources) != 1:
        return None
    return nxt


def _units(stages: list[Stage], j0: int) -> tuple[int, Tensor, bool] | None:
    """(top, cand, zero) of the layer starting at stage j0, None where it is not covered."""
    st = stages[j0]
    assert st.act is not None
    op = st.act.op
    nxt = _sole_follower(stages, j0)
    if _relu(st):
        pool = nxt.act.op if nxt is not None and nxt.act is not None else None
        if isinstance(pool, MaxPool) and _tiling(pool) and len(st.z_shape) == 3:
            return j0 + 1, _windows(pool, st.z_shape), True
        return j0, torch.arange(math.prod(st.z_shape))[:, None], True
    if isinstance(op, MaxPool) and _tiling(op) and len(st.z_shape) == 3:
        if nxt is not None and _relu(nxt):
            return j0 + 1, _windows(op, st.z_shape), True
        return j0, _windows(op, st.z_shape), False
    return None


def _rows(graph: Graph, st: Stage, cand: Tensor) -> Tensor:
    """a_i = e_i^T A [candidates, n_in] as sparse COO: the product without its bias on the input's
    one-hot vectors e_m gives the columns A e_m (one product among zeros: exact)."""
    n_in = math.prod(graph.input_shape)
    flat = cand.flatten()
    parts = []
    for s in range(0, n_in, ROW_CHUNK):
        m = min(ROW_CHUNK, n_in - s)
        one = torch.zeros((m, n_in), dtype=torch.float64)
        one[torch.arange(m), torch.arange(s, s + m)] = 1.0
        found = _linear_part(graph, st, one.reshape(m, *graph.input_shape))
        assert found is not None
        parts.append(found[0].reshape(m, -1)[:, flat].T.to_sparse())
    return torch.cat(parts, 1).coalesce()


def _gram_max(rows: Tensor, units: int, k: int) -> Tensor:
    """max(0, max_{i in u, k in v} fl(a_i^T a_k)) [U, U] (dense for small dense rows, else sparse)."""
    n_in = rows.shape[1]
    out = torch.zeros(units * units, dtype=torch.float64)
    if rows.shape[0] ** 2 * n_in <= DENSE_WORK:  # the same test as build_plan's
        dense = rows.to_dense()
        g = (dense @ dense.T).reshape(units, k, units, k)
        return g.amax((1, 3)).clamp_min(0.0)
    with warnings.catch_warnings():  # torch's note that its sparse kernels are in beta
        warnings.simplefilter("ignore", UserWarning)
        prod = torch.sparse.mm(rows, rows.t()).coalesce()
    i, j = prod.indices()
    key = (i // k) * units + (j // k)
    out = out.scatter_reduce(0, key, prod.values(), "amax", include_self=True)
    return out.reshape(units, units)


def build_plan(graph: Graph, stages: list[Stage]) -> FirstPlan | None:
    """The first layer's units and M (once per model); None where the refinement does not apply."""
    first = [k for k, st in enumerate(stages) if st.nodes and all(s.index == -1 for s in st.sources)]
    if not first or stages[first[0]].act is None or len(stages[first[0]].sources) != 1:
        return None
    j0 = first[0]
    st = stages[j0]
    found = _units(stages, j0)
    probe = torch.zeros((1, *graph.input_shape), dtype=torch.float64)
    if found is None or _linear_part(graph, st, probe) is None:
        return None
    top, cand, zero = found
    units, k = cand.shape
    if units > UNIT_CAP:
        return None
    rows = _rows(graph, st, cand)
    per_input = torch.bincount(rows.indices()[1], minlength=rows.shape[1]).double()
    dense = rows.shape[0] ** 2 * rows.shape[1] <= DENSE_WORK
    if not dense and (rows._nnz() > SPARSE_NNZ or float(per_input.square().sum()) > SPARSE_WORK):
        return None  # the Gram's products would cost more than the bound gives
    n_in = rows.shape[1]
    norms = rows.pow(2).sum(1).to_dense().sqrt() * (1.0 + gamma(n_in + 4)) + TINY
    n_u = norms.reshape(units, k).amax(1)
    allow = 2 * gamma(n_in + 2) * n_u[:, None] * n_u[None, :]
    m = (_gram_max(rows, units, k) + allow) * (1.0 + 4 * U) + TINY
    return FirstPlan(j0, top, cand, zero, m)


@dataclass
class Split:
    """One ball's split of the units (docstring): mu [B, N, *z] the tangent adjoints of the linear
    units, lam_s [B, N, U] = |lam_u| on S (0 elsewhere), phi [B, U] = phi^, beta [B, U, K]."""

    mu: Tensor
    lam_s: Tensor
    phi: Tensor
    beta: Tensor


def split(plan: FirstPlan, graph: Graph, st: Stage, lam: Tensor, ball: Ball) -> Split:
    """The units' adjoints lam [B, N, *h_top] split into tangent lines and the convex set S."""
    b, rows = lam.shape[:2]
    lam_u = lam.reshape(b, rows, -1)
    lo, hi = (t.reshape(b, -1)[:, plan.cand] for t in ball.bb.z[plan.j0])  # [B, U, K]
    centre, rad = box_stage(graph, st, {st.sources[0].name: (ball.x, torch.zeros_like(ball.x))})
    p = centre + rad
    p = (p + 4 * U * p.abs() + TINY).reshape(b, -1)[:, plan.cand]
    best_lo, win = lo.max(2)
    others = hi.scatter(2, win[:, :, None], -math.inf).amax(2)
    won = best_lo >= others
    dead = hi.amax(2) <= 0 if plan.zero else torch.zeros_like(won)
    if plan.zero:
        won = won & (best_lo >= 0)
    fixed = won | dead
    c_max, c_arg = centre.reshape(b, -1)[:, plan.cand].max(2)
    pick = torch.where(won, win, c_arg)
    on = ~dead & (won | (c_max >= 0) | (not plan.zero))  # the tangent is z_pick (else 0)
    in_s = (lam_u < 0) & ~fixed[:, None, :]
    coeff = torch.where(in_s | ~on[:, None, :], 0.0, lam_u)
    target = plan.cand[torch.arange(plan.cand.shape[0])[None, :], pick]  # [B, U] flat index into z
    n_z = math.prod(st.z_shape)
    mu = torch.zeros((b, rows, n_z), dtype=torch.float64)
    mu = mu.scatter(2, target[:, None, :].expand(b, rows, -1), coeff)
    phi = p.amax(2).clamp_min(0.0) if plan.zero else p.amax(2)
    beta = (p - phi[:, :, None]) * (1.0 - 4 * U)
    lam_s = torch.where(in_s, -lam_u, 0.0)
    return Split(mu.reshape(b, rows, *st.z_shape), lam_s, phi, beta)


def q_upper(plan: FirstPlan, graph: Graph, st: Stage, g: Tensor, lam_s: Tensor) -> Tensor:
    """>= q_u(i) = |lam_u| (-2 g^T a_i + (M |lam_S|)_u) [B, N, U, K] (module docstring), for the input
    adjoints g [B, N, *x] and lam_s = |lam_u| on S [B, N, U]."""
    b, rows = g.shape[:2]
    found = _linear_part(graph, st, g.reshape(b * rows, *g.shape[2:]))
    assert found is not None  # build_plan checked the stage
    lin, spread = found  # g^T a_i in lin +- spread
    lin = lin.reshape(b, rows, -1)[:, :, plan.cand]
    spread = spread.reshape(b, rows, -1)[:, :, plan.cand]
    ml = (lam_s @ plan.m.T) * (1.0 + 2 * gamma(plan.cand.shape[0] + 2)) + TINY  # >= (M |lam_S|)_u
    ml = ml[..., None]
    s = ml + 2.0 * spread - 2.0 * lin
    s = s + 4 * U * (ml + 2.0 * spread + 2.0 * lin.abs()) + TINY
    q = lam_s[..., None] * s
    return q + 4 * U * q.abs() + TINY


def convex_bound(
    plan: FirstPlan, graph: Graph, st: Stage, a_lin: Tensor, g: Tensor, parts: Split, r: Tensor
) -> tuple[Tensor, Tensor]:
    """(a, n) [B, N] with margin >= a - rho n on B(x, rho), rho <= r > 0 (module docstring), from
    CROWN's a_lin and input adjoint g [B, N, *x] for the linear units and the convex set S."""
    b, rows = g.shape[:2]
    units = plan.cand.shape[0]
    n_in = g[0, 0].numel()
    lam_s = parts.lam_s
    in_s = lam_s > 0
    q = q_upper(plan, graph, st, g, lam_s)
    lb = lam_s[..., None] * parts.beta[:, None]  # <= 0, within u of |lam| beta
    g2 = g.flatten(2).square().sum(2) * (1.0 + 2 * gamma(n_in + 2)) + TINY
    rr = r[:, None]
    pos = torch.where(in_s, q.amax(3).clamp_min(0.0), 0.0).sum(2)
    t_star = (g2 + pos).sqrt()
    c_star = rr / (2.0 * t_star)
    best = torch.full_like(g2, math.inf)
    # each c q + |lam| beta is raised by 4u (c |q| + |lam beta|) + 1e-300; max(0, v + e) <= max(0, v) + e
    # for e >= 0, so these go onto the sum over the units once: 4u (c sum max|q| + sum max|lam beta|)
    q = torch.where(in_s[..., None], q, 0.0)
    q_abs, lb_abs = q.abs().amax(3).sum(2), lb.abs().amax(3).sum(2)
    for f in GRID.tolist():
        c = c_star * f
        t = torch.addcmul(lb, q, c[:, :, None, None])
        per = t[..., 0] if t.shape[3] == 1 else t.amax(3)
        if plan.zero:
            per = per.clamp_min(0.0)
        else:  # windows outside S take no part (with q = 0 there, their max is lam beta = 0: exact)
            per = torch.where(in_s, per, 0.0)
        total = per.sum(2)
        total = total + 2 * gamma(units + 2) * (total if plan.zero else per.abs().sum(2))
        total = total + 4 * U * (c * q_abs + lb_abs) * (1.0 + 4 * U) + units * TINY
        head = (c * g2 + rr * rr / (4.0 * c)) * (1.0 + 8 * U)
        bound = head + total
        bound = bound + 4 * U * (head + total.abs()) + TINY
        best = torch.minimum(best, bound)
    n = best / rr
    n = n + 4 * U * n.abs() + TINY
    d = (lam_s * parts.phi[:, None]).sum(2)
    e = 2 * gamma(units + 4) * (lam_s * parts.phi.abs()[:, None]).sum(2)
    a = down((a_lin - d) - e - 4 * U * (a_lin.abs() + d.abs() + e) - TINY)
    return torch.nan_to_num(a, nan=-math.inf), torch.nan_to_num(n, nan=math.inf)


class FirstCrown(Protocol):
    """What `best_of_both` calls of speccert.bounds.crown.Crown (a Protocol: crown imports this module)."""

    graph: Graph
    stages: list[Stage]
    first_layer: str

    def descend(
        self,
        above: int,
        last: int,
        adj: dict[int, Tensor],
        ball: Ball,
        acc: Acc,
        slopes: dict[int, Tensor] | None = None,
    ) -> None: ...

    def through(self, k: int, lam: Tensor, ball: Ball, acc: Acc, adj: dict[int, Tensor]) -> None: ...


def best_of_both(
    crown: FirstCrown, plan: FirstPlan, acc: Acc, adj: dict[int, Tensor], ball: Ball, rows: int
) -> tuple[Tensor, Tensor]:
    """Per row the better (larger a / n) of CROWN's own (a, n) and the convex layer's, from a backward
    pass stopped above the layer's units (`acc`, `adj`: its running terms and adjoints; both bounds
    proven). crown.first_layer == "only": the convex layer's wherever r > 0 (tests)."""
    acc_own, adj_own = replace(acc), dict(adj)
    crown.descend(plan.top + 1, 0, adj_own, ball, acc_own)
    a, n = finish(acc_own, input_adjoint(adj_own, ball, rows), ball)
    if plan.top not in adj:
        return a, n
    st = crown.stages[plan.j0]
    parts = split(plan, crown.graph, st, adj.pop(plan.top), ball)
    crown.through(plan.j0, parts.mu, ball, acc, adj)
    crown.descend(plan.j0, 0, adj, ball, acc)
    g = input_adjoint(adj, ball, rows)
    a_lin, _ = finish(acc, g, ball)
    a2, n2 = convex_bound(plan, crown.graph, st, a_lin, g, parts, ball.r)
    better = ((score(a2, n2) > score(a, n)) | (crown.first_layer == "only")) & (ball.r[:, None] > 0)
    return torch.where(better, a2, a), torch.where(better, n2, n)


__all__ = ["UNIT_CAP", "FirstPlan", "Split", "best_of_both", "build_plan", "convex_bound", "q_upper", "split"]
