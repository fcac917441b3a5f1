"""Local certificate: the largest r for which the margin provably stays positive on the ball B(x, r).

The network is cut at its nonlinearities (speccert.bounds.local_stages): z_k = sum_j A_kj h_j + b_k,
h_k = n_k(z_k), residual sums giving a stage several sources. Over the ball, the gradient of the
margin m_j = f_y - f_j is (a.e., and its Clarke set in general) the reverse pass of c = e_y - e_j
through the stages with every nonlinearity's Jacobian D_k(x') in place, constrained by
speccert.bounds.local_bounds: an activation's D_k is diag(f'(z)) with f' in mid_k +- err_k on the
interval of z over the ball (ReLU: 1 active, 0 dead, 1/2 +- 1/2 unstable; smooth activations: their
local slope range, speccert.bounds.local_slopes); a max-pool window whose winner is fixed picks it;
a MaxMin pair is a ReLU of its difference d = a - b (speccert.bounds.local_sort): relu'(d) in
mid +- err, exactly 0 or 1 where the pair's order is fixed on the ball (a fixed permutation), and a
change of it moves the adjoint by err |v_max - v_min| along grad d, bounded by l_k (x -> d).
Replacing the D_k one at a time, last first, by their centres (telescoping over the stages):
    g(x')^T = a_in^T + sum_k a_k^T E_k J_k(x'),    |E_k| <= diag(err_k),
a the adjoints of the reverse pass with the centre Jacobians (a_k at h_k: the sum over all its uses,
the skip included) and J_k(x') the Jacobian of x -> z_k, whose norm on the uncertain units is at most
l_k (the Lipschitz bound of z_k over the ball on those units). Hence for every x' in the ball
    ||g(x')|| <= L_j(r) = ||a_in|| + sum_k ||a_k err_k|| l_k + rounding
(a max-pool's unfixed windows: ||a_k,unfixed|| times its window factor and the bound of all of z_k),
and m_j(x + d) >= m_j(x) - L_j(r) ||d||. The radius is the largest r (log-bisection, bounds
re-derived at each r) with m_j(x) - allowance > L_j(r) r for every j; any r that passes is proven on
its own, so the search needs no monotonicity. With no slope free to vary the bound is ||grad m_j(x)||.

Floating point: the backward vectors are products of the blocks' matrices with the centre slopes;
their rounding is at most gamma(K) sqrt(2) P (K: all inner dimensions plus the slope products; P >=
every prefix's sum over paths of prod || |A| ||_2 times the activations' global slopes, Higham 3.5),
added to every L_j once per term; norms of n-term sums are raised by gamma(n + 4).
"""

from __future__ import annotations

import math

import torch

from speccert.bounds.certificate import CertContext, register_certificate
from speccert.bounds.certificates._local_search import first_order, local_radius, margin_ok
from speccert.bounds.certificates._per_point import PerPointCertificate
from speccert.bounds.compose import RoundedUp, compose
from speccert.bounds.local_bounds import BallBounds, ball_bounds, pool_vjp
from speccert.bounds.local_first import FirstTerm, first_bound
from speccert.bounds.local_sort import back, pair_rows, weight_gap
from speccert.bounds.local_stages import Stage, build_stages, stage_vjp
from speccert.ir import INPUT, Conv, Linear, MaxPool, Node, Sort
from speccert.norms.result import round_up
from speccert.norms.rounding import gamma, svd_error

Tensor = torch.Tensor
U = 2.0**-53
REFINE_MAX_ROWS = 128  # unstable units of one layer whose rows are propagated exactly (else norms)
UNIT_MAX = 4096  # layers up to this many units get per-unit Lipschitz intervals
UNIT_CHUNK = 256
CHUNK = 32  # points per backward pass (memory: CHUNK x classes x features float64)


def spectral_upper(r: Tensor) -> Tensor:
    """Per point >= ||R_b||_2 for a batch of matrices R [B, m, n] (SVD + its error margin)."""
    m, n = r.shape[1], r.shape[2]
    sigma = torch.linalg.svdvals(r)[:, 0]
    fro = r.flatten(1).norm(dim=1) * (1.0 + gamma(m * n + 2))
    out: Tensor = (sigma + svd_error(m, n) * fro) * (1.0 + 4 * U)
    return out


def _norms(v: Tensor) -> Tensor:
    out: Tensor = v.flatten(2).norm(dim=2) * (1.0 + gamma(v[0, 0].numel() + 4))
    return out


class LocalModel:
    """What the local bound needs of a model: its stages, the logits' rows per source, rounding."""

    def __init__(self, ctx: CertContext) -> None:
        self.graph = ctx.bound.folded
        self.stages: list[Stage] = build_stages(ctx.bound)
        self.shapes = {INPUT: self.graph.input_shape} | {n.name: n.shape for n in self.graph.nodes}
        final = self.stages[-1]
        classes = math.prod(final.z_shape)
        eye = torch.eye(classes, dtype=torch.float64).reshape(classes, *final.z_shape)
        self.tail = {i: g.reshape(classes, -1) for i, g in stage_vjp(final, eye, self.shapes).items()}
        # + 2 per stage: the slope products; + 8 per MaxMin: its subtraction, product and sum (each
        # entry's error within gamma(3) (|v_max| + |v_min|), the two halves' norm within sqrt 2 of it)
        sorts = sum(1 for st in self.stages if st.act is not None and isinstance(st.act.op, Sort))
        inner = sum(st.inner for st in self.stages) + 2 * len(self.stages) + 8 * sorts + 8
        # stages whose z is affine in the input (their err terms get the cross-term bound)
        self.first = [bool(st.nodes) and all(s.index == -1 for s in st.sources) for st in self.stages]
        self.pair_cache: dict[int, Tensor] = {}  # MaxMin stages of the input: per-pair norms of grad d
        terms = len(self.stages) + 1
        self.rounding = terms * gamma(inner) * math.sqrt(2.0) * _abs_product(ctx) * (1.0 + 1e-6)

    def descend(self, adj: dict[int, Tensor], bb: BallBounds, top: int, spectral: bool = False) -> Tensor:
        """Bound over the ball of ||sum_j v_j^T dh_j/dx|| for rows v_j [B, N, n_j] at the outputs of
        stages j <= top (key -1: at the input): per row [B, N], or of the whole matrix [B] with
        `spectral`. Each stage's centre Jacobian carries v on exactly (reverse pass over the stages, so
        an output used twice, as by a residual skip, sums its adjoints before its own stage); its
        half-width err adds ||v err|| l_unstable. Rounding is added by the caller.

        Before each stage the descent may also stop: the terms so far are exact, g^T = sum_i v_i^T
        J_i(x') + (err terms so far) over the pending outputs h_i, and ||J_i(x')|| <= M_i (the
        Lipschitz bound of h_i over the ball, `bb.m`; 1 at the input), so total + sum_i ||v_i|| M_i
        bounds it too; the least of these is returned (at the top: the pairwise-like ||v|| M, so
        unfixed units deep down never make the bound worse than that).

        A stage whose z is affine in the input (J constant: the first layer) keeps its err term e
        apart: ||a_in + e|| (per row, or of the matrix) is bounded with the cross term
        (speccert.bounds.local_first), not by ||a_in|| + ||e||."""
        b, n = next(iter(adj.values())).shape[:2]

        def norm(t: Tensor) -> Tensor:
            return spectral_upper(t.flatten(2)) if spectral else _norms(t)

        def per(t: Tensor) -> Tensor:
            return t if spectral else t[:, None]

        def stop(total: Tensor) -> Tensor:
            for i, v in adj.items():
                m_i = bb.m[i] if i >= 0 else torch.ones((b,), dtype=torch.float64)
                total = total + norm(v.reshape(b, n, -1)) * per(m_i)
            return total

        total = torch.zeros((b,) if spectral else (b, n), dtype=torch.float64)
        best = torch.full_like(total, math.inf)
        apart: list[FirstTerm] = []  # err terms of stages affine in the input
        kept = torch.zeros_like(total)  # their norm bounds, summed

        def add(j: int, gap: Tensor, scale: Tensor) -> Tensor:
            """The err term ||gap|| scale of stage j (or, with per-unit Lipschitz bounds l_i of the
            units, sum_i ||gap_i|| l_i): into `total`, or kept apart (docstring)."""
            term = norm(gap) * per(scale)
            if j in bb.unit_lip:
                lip = bb.unit_lip[j][:, None]
                size = gap.abs() if not spectral else gap.norm(dim=1, keepdim=True) * (1 + gamma(n + 4))
                alt = torch.where(size == 0, 0.0, size * lip).flatten(2).sum(2)
                alt = alt * (1.0 + gamma(alt.shape[-1] + gap[0, 0].numel() + 2))
                term = torch.minimum(term, alt[:, 0] if spectral else alt)
            if not self.first[j]:
                return total + term
            apart.append(FirstTerm(self.stages[j], gap.abs(), term))
            nonlocal kept
            kept = kept + term
            return total

        for j in range(top, -1, -1):
            if j not in adj:
                continue
            best = torch.minimum(best, stop(total + kept))
            st = self.stages[j]
            assert st.act is not None
            v = adj.pop(j).reshape(b, n, *st.act.shape)
            mid, err = bb.mid[j][:, None], bb.err[j][:, None]
            winner = bb.winner[j]
            if isinstance(st.act.op, Sort):  # relu'(d) = mid + delta, |delta| <= err, per pair
                dim = st.act.op.axis + 2
                total = add(j, weight_gap(st.act.op, v, dim) * err, bb.l_unstable[j])
                vs = back(st.act.op, v, mid, dim)
            elif isinstance(st.act.op, MaxPool) and winner is not None:
                total = total + norm(v * err) * per(bb.l_unstable[j] * st.pool_factor)
                vs = pool_vjp(st.act.op, v * mid, winner, st.z_shape)
            else:  # f' = mid + d, |d| <= err: the centre goes on exactly, the rest is bounded
                total = add(j, v * err, bb.l_unstable[j])
                vs = v * mid
            for i, g in stage_vjp(st, vs.reshape(b * n, *st.z_shape), self.shapes).items():
                g = g.reshape(b, n, -1)
                adj[i] = adj[i] + g if i in adj else g
        if -1 in adj and apart:
            a_in = adj[-1].reshape(b, n, *self.graph.input_shape)
            a_norm = norm(a_in)
            total = total + torch.minimum(
                a_norm + kept, first_bound(self.graph, a_in, apart, a_norm, spectral)
            )
        elif -1 in adj:
            total = total + norm(adj[-1].reshape(b, n, -1)) + kept
        else:
            total = total + kept
        return torch.minimum(best, total)

    def _finish(self, total: Tensor, rows: float) -> Tensor:
        slack = 1.0 + gamma(4 * len(self.stages) + 8)
        return (total + self.rounding * math.sqrt(rows)) * slack

    def _units(self, k: int) -> tuple[int, ...]:
        """The shape of stage k's units: z_k's, or its pairs' at a MaxMin (the Sort axis dropped)."""
        st = self.stages[k]
        if st.act is not None and isinstance(st.act.op, Sort):
            ax = st.act.op.axis
            return st.z_shape[:ax] + st.z_shape[ax + 1 :]
        return st.z_shape

    def _unit_rows(self, k: int, index: Tensor, b: int) -> dict[int, Tensor]:
        """Rows e_i of z_k (i in `index` [B, N] flat units; -1 = none) sent back to the sources; at a
        MaxMin stage i is a pair and the row e_a - e_b (its difference d)."""
        st = self.stages[k]
        shape = self._units(k)
        n_units = math.prod(shape)
        rows = torch.zeros((b, index.shape[1], n_units + 1), dtype=torch.float64)
        rows.scatter_(2, index.clamp_min(-1).remainder(n_units + 1)[:, :, None], 1.0)
        rows = rows[:, :, :n_units].reshape(-1, *shape)
        if st.act is not None and isinstance(st.act.op, Sort):
            rows = pair_rows(rows, st.act.op.axis + 1)
        return {i: g.reshape(b, index.shape[1], -1) for i, g in stage_vjp(st, rows, self.shapes).items()}

    def refine(self, k: int, bb: BallBounds) -> None:
        """Tighten l_unstable of activation stage k: the rows R = P_U A_k of its uncertain units go
        backward like the margin vectors (spectral norms by SVD): ||R D J|| <= ||R_c J'|| + ||R err|| l.
        At a MaxMin stage the rows are those of d = a - b on its unfixed pairs."""
        st = self.stages[k]
        if st.act is None or isinstance(st.act.op, MaxPool):
            return
        flat = (bb.err[k] > 0).reshape(bb.err[k].shape[0], -1)
        b, count = flat.shape[0], int(flat.sum(1).max())
        if count == 0 or count > REFINE_MAX_ROWS:
            return
        order = torch.sort(flat.to(torch.int64), dim=1, descending=True, stable=True).indices[:, :count]
        index = torch.where(flat.gather(1, order), order, torch.full_like(order, -1))
        rows = 2 * count if isinstance(st.act.op, Sort) else count  # a pair's row e_a - e_b: norm sqrt 2
        total = self._finish(self.descend(self._unit_rows(k, index, b), bb, k - 1, spectral=True), rows)
        bb.l_unstable[k] = torch.minimum(bb.l_unstable[k], total)

    def unit_lipschitz(self, k: int, bb: BallBounds, want: Tensor | None) -> Tensor | None:
        """Per unit of z_k in `want` ([B, *z_shape] bool, None = all), >= sup over the ball of
        ||grad z_k,i|| (its row of A_k sent down); inf elsewhere; None where not worth it. At a MaxMin
        stage the units are its pairs and the bound is of ||grad d||, d = a - b (`want` over pairs);
        where d is affine in the input that norm is the same for every point and ball (cached)."""
        st = self.stages[k]
        shape = self._units(k)
        n_units = math.prod(shape)
        sort = st.act is not None and isinstance(st.act.op, Sort)
        if not st.nodes or n_units > UNIT_MAX:
            return None
        first = all(s.index == -1 for s in st.sources)
        if first and not sort:  # the interval's row norms are exact already
            return None
        # the batch: from `want`, else (all units wanted, before a max-pool) from an earlier stage; a
        # first stage has none, but it returned above (MaxMin stages always say which pairs they want)
        b = want.shape[0] if want is not None else bb.mid[0].shape[0]
        if first:
            if k not in self.pair_cache:
                every = torch.arange(n_units)[None]
                self.pair_cache[k] = self._finish(self.descend(self._unit_rows(k, every, 1), bb, -1), 2.0)
            return self.pair_cache[k].expand(b, n_units).reshape(b, *shape)
        flat = torch.ones((b, n_units), dtype=torch.bool) if want is None else want.reshape(b, -1)
        count = int(flat.sum(1).max())
        if count == 0:
            return None
        order = torch.sort(flat.to(torch.int64), dim=1, descending=True, stable=True).indices[:, :count]
        index = torch.where(flat.gather(1, order), order, torch.full_like(order, -1))
        out = torch.full((b, n_units + 1), math.inf, dtype=torch.float64)
        for start in range(0, count, UNIT_CHUNK):
            idx = index[:, start : start + UNIT_CHUNK]
            val = self._finish(self.descend(self._unit_rows(k, idx, b), bb, k - 1), 2.0)
            out.scatter_(1, idx.remainder(n_units + 1), val)
        return out[:, :n_units].reshape(b, *shape)

    @property
    def unit_count(self) -> int:
        """Units of the stages that get per-unit Lipschitz bounds (a backward pass each)."""
        return sum(
            math.prod(self._units(k))
            for k, st in enumerate(self.stages[:-1])
            if st.nodes and math.prod(self._units(k)) <= UNIT_MAX and any(s.index >= 0 for s in st.sources)
        )

    def lipschitz(self, x: Tensor, y: Tensor, r: Tensor, units: bool = True) -> Tensor:
        """L[b, j] >= sup over B(x_b, r_b) of ||grad (f_y - f_j)|| (0 at j = y); `units`: with the
        per-unit Lipschitz intervals (tighter, a backward pass per unit)."""
        unit = self.unit_lipschitz if units else None
        bb: BallBounds = ball_bounds(self.graph, self.stages, x, r, self.refine, unit)
        adj = {i: rows[y][:, None, :] - rows[None, :, :] for i, rows in self.tail.items()}  # [B, C, n_i]
        total = self._finish(self.descend(adj, bb, len(self.stages) - 2), 2.0)
        return total.scatter(1, y[:, None], 0.0)


def _abs_product(ctx: CertContext) -> float:
    """>= every prefix's sum over paths of prod || |A| ||_2 (times the activations' global slopes): the
    scale of the rounding in the backward products (Higham 3.5)."""
    uppers = {n.name: n.upper.value for n in ctx.bound.layers}

    def norm_of(node: Node) -> float:
        op = node.op
        if isinstance(op, (Linear, Conv)):
            return max(_schur(op), uppers[node.name])
        return uppers[node.name]

    lip = compose(ctx.bound.folded, norm_of, RoundedUp()).lipschitz
    return max(max(lip.values()), 1.0)


def _schur(op: Linear | Conv) -> float:
    """|| |A| ||_2 <= sqrt(max row sum * max column sum) of |A| (Schur test), rounded up."""
    w = op.weight.detach().abs()
    if isinstance(op, Linear):
        return round_up(math.sqrt(float(w.sum(1).max()) * float(w.sum(0).max())), 8)
    g = op.groups
    rows = float(w.flatten(1).sum(1).max())
    cols = float(w.reshape(g, w.shape[0] // g, w.shape[1], -1).sum((1, 3)).max())
    return round_up(math.sqrt(rows * cols), 8)


@register_certificate("local")
class LocalCertificate(PerPointCertificate):
    """Largest r with m_j(x) > L_j(r) r for all j (L_j the local bound over B(x, r)); opt-in."""

    order = 30  # place among the kinds in reports (speccert.bounds.certificate)
    opt_in = True
    chunk = CHUNK

    def __init__(self, ctx: CertContext) -> None:
        super().__init__(ctx)
        self.model = LocalModel(ctx)

    def search(self, x: Tensor, y: Tensor, m: Tensor) -> Tensor:
        return local_radius(self.model, x, y, m)

    def first_order(self, x: Tensor, y: Tensor, m: Tensor) -> Tensor:
        return first_order(self.model, x, y, m)

    def test_at(self, x: Tensor, y: Tensor, m: Tensor, r: Tensor) -> Tensor:
        """r where m_j > L_j(r) r for every j with the per-unit bounds (the sharpening steps' test), else 0."""
        ok = margin_ok(m, self.model.lipschitz(x, y, r, units=True), r)
        return torch.where(ok, r, torch.zeros_like(r))
