"""CROWN-style linear lower bounds over an L2 ball, with every floating-point error accounted for.

The network is cut at its nonlinearities (speccert.bounds.local_stages): z_k = A_k h + b_k (h: the
stage's sources, earlier outputs h_j = n_j(z_j) or the input x), h_k = n_k(z_k). For rows lam at a
stage t (the margin rows e_y - e_j at the logits, or +-e_i at a hidden layer), `lower` proves
    lam^T z_t(x') >= Lam^T x' + c - err      for every x' in B(x, r)
and returns a = Lam^T x + c - err (rounded down) and n >= ||Lam||_2, so that over B(x, rho), rho <= r,
the minimum is >= a - rho n (Cauchy-Schwarz), and lam^T z_t > 0 on B(x, a / n) intersected with the
ball. Backward, stage by stage (last first), with the adjoint lam_k of every output h_k (the sum over
its uses: a residual skip adds two):
- through an affine stage: lam^T z = (A^T lam)^T h + lam^T b. The computed g = fl(A^T lam) (one reverse
  pass of the stage's operators) is within gamma(K) |A|^T |lam| of A^T lam componentwise (Higham,
  Accuracy and Stability, 3.5; K >= the summed backward inner dimensions of the operators), so
  |(g - A^T lam)^T h| <= gamma(K) |lam|^T (|A| H), H >= |h| on the ball (the proven boxes of the
  sources). b is enclosed in bc +- brad (speccert.bounds.local_bounds.box_stage at h = 0), and
  fl(lam^T bc) is within gamma(n + 4) |lam|^T |bc| of lam^T bc. All of this is one weight vector
  W >= gamma(K) |A| H + gamma(n + 4) |bc| + brad per stage and point; the error grows by |lam|^T W.
- through an activation: with valid lines a_lo z + b_lo <= f(z) <= a_up z + b_up on the unit's
  interval (speccert.bounds.crown_relax), lam_i f(z_i) >= mu_i z_i + lam_i b_i, mu_i = lam_i a_lo,i
  (lam_i >= 0) or lam_i a_up,i (lam_i < 0). The computed fl(mu_i) is within u |mu_i| of the exact
  product, so the error grows by gamma(2) |mu|^T Z (Z >= |z| on the interval), and the constant's dot
  product by gamma(n + 4) |lam|^T |b|.
- through a max-pool: per window a lower line sum_i t_i x_i (a convex combination: the fixed winner,
  or the mean of the candidates tying for the best lower bound) and an upper line s x_{i*} + B (the
  fixed winner, or the line through (l*, u2) and (u*, u*) on the candidate i* with the largest upper
  bound; speccert.bounds.crown_pool proves both). lam_w >= 0 goes through the lower line, lam_w < 0
  through the upper one; the constant's dot product adds gamma(n + 4) |lam|^T |B| to the error.
  Windows that overlap sum their adjoints (fold): that rounding is within gamma(k + 2) ||lam||_1 max Z.
- an output used twice sums its adjoints: within u |sum|, so the error grows by gamma(2) |lam|^T H.
- at the input: fl(Lam^T x) within gamma(n + 4) |Lam|^T |x|; ||Lam|| raised by gamma(n + 4).
Constants are summed in a running float64 sum (recursive summation: within gamma(P) sum |pieces|), the
error terms (all >= 0) too (raised by gamma(P)). Nothing here is an estimate.

Optimised lower slopes (`steps` > 0, margin rows only): for an unstable ReLU / leaky ReLU unit
(lo < 0 < hi) every line a z with a in [alpha, 1] is below f on the whole real line (crown_relax), so
the slope may be chosen per point, row and unit and the bound above stays valid.
speccert.bounds.crown_slopes takes `steps` Adam steps of projected gradient ascent (slopes clamped to [alpha, 1] after each step) on the
differentiable estimate a - r n (`estimate`: autograd through this very backward pass, the stage
products kept differentiable by stage_vjp's create_graph), starting from the adaptive slopes; then
`lower` evaluates the bound once more without autograd, clamping the slopes into [alpha, 1] itself
(whatever it is passed), with the error weight of such a unit taken for the largest slope, 1. Per row
the better a / n of the adaptive and the optimised bound is kept: both are proven, so it is never worse.
The estimate only chooses slopes; the certificate is the re-evaluated bound.

Convex first layer (speccert.bounds.crown_first, `first_layer` = "best"): where the first stage is
one Linear / Conv of the input followed by ReLU and/or a tiling MaxPool (at most UNIT_CAP units), a
row's backward pass stops above those units; besides CROWN's lines it also bounds the negatively
weighted unfixed units jointly over the ball (one perturbation cannot push every window up at
once), and per row the larger a / n of the two is kept. Hidden-bound rows do the same where the
layer has at most HIDDEN_UNITS units.

Intermediate bounds (full CROWN): the interval of every unit of z_k whose relaxation is not exact is
the same bound with rows +-e_i, taken with the bounds of the stages before k, and intersected with the
interval/Lipschitz bounds of speccert.bounds.local_bounds (`ball_bounds(..., interval=...)`).
Cost: the first step of a row +-e_i is e_i^T A_k, the same for every point, so it is read from the
stage's columns (computed once per model by the same reverse pass: a one-hot row's result is one
product among zeros, exact in any batch), with the constant +-bc_i and the error weight W_i gathered;
and the rows go in chunks over only the points that still have uncertain units left (Ball.select; speccert.bounds.crown_hidden),
not padded to the largest count. Both change no bound (the allowances above hold for any order of the
sums inside batched kernels).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from speccert.bounds.certificate import NotApplicable
from speccert.bounds.crown_first import FirstPlan, best_of_both, build_plan
from speccert.bounds.crown_hidden import hidden_interval
from speccert.bounds.crown_pool import pool_lines, route
from speccert.bounds.crown_relax import relax, supported
from speccert.bounds.crown_slopes import optimised_margins
from speccert.bounds.crown_sort import relax_sort
from speccert.bounds.crown_terms import TINY, Ball, U, backward_terms, finish, input_adjoint
from speccert.bounds.crown_terms import Acc as _Acc
from speccert.bounds.crown_terms import dot as _dot
from speccert.bounds.crown_terms import err_dot as _err_dot
from speccert.bounds.linear_tail import absolute_op
from speccert.bounds.lipschitz import LipschitzBound
from speccert.bounds.local_bounds import BallBounds, Interval, ball_bounds, box_stage
from speccert.bounds.local_stages import Stage, build_stages, inner_dimension, stage_vjp
from speccert.ir import INPUT, Activation, Add, Concat, MaxPool, Sort
from speccert.norms.rounding import gamma

Tensor = torch.Tensor
COLUMN_BYTES = 1 << 29  # per model: the stages' unit columns e_i^T A_kj kept for the hidden bounds
COLUMN_CHUNK = 256
HIDDEN_UNITS = 1024  # first layers up to this many units serve the hidden bounds' rows too
UnitHook = Callable[[int, BallBounds, Tensor | None], Tensor | None]


class Crown:
    """The CROWN bound of a model (module docstring); NotApplicable for what it does not cover."""

    def __init__(self, bound: LipschitzBound, stages: list[Stage] | None = None) -> None:
        """`stages`: `build_stages(bound)` when the caller already has them (the local model's)."""
        self.graph = bound.folded
        self.stages: list[Stage] = build_stages(bound) if stages is None else stages
        for st in self.stages[:-1]:
            assert st.act is not None
            op = st.act.op
            if isinstance(op, Activation) and not supported(op.fn, op.alpha):
                raise NotApplicable(f"the crown certificate has no linear relaxation of {op.fn}")
        self.shapes = {INPUT: self.graph.input_shape} | {n.name: n.shape for n in self.graph.nodes}
        self.terms = [
            sum(backward_terms(self.graph.input_shape, n) for n in st.nodes) + 2 * len(st.nodes) + 8
            for st in self.stages
        ]
        self.consts = [self._constant(st) for st in self.stages]
        # optional per-unit Lipschitz intervals (the local certificate's backward passes), applied
        # before the CROWN intervals: both proven, intersected; fewer units are left for CROWN
        self.unit_lipschitz: UnitHook | None = None
        self.steps = 0  # > 0: optimised lower slopes of the margin bound (speccert.bounds.crown_slopes)
        self.columns: dict[int, dict[int, Tensor] | None] = {}
        self.column_bytes = 0
        # the margin rows: "best" per row of CROWN and the convex first layer (crown_first), "off",
        # or "only" the convex first layer's bound where r > 0 (tests)
        self.first_layer = "best"
        self._plan: list[FirstPlan | None] = []

    def _constant(self, st: Stage) -> tuple[Tensor, Tensor]:
        """(bc, brad) [1, *z] enclosing b_k = z_k at zero sources."""
        if not st.nodes:
            z = torch.zeros((1, *st.z_shape), dtype=torch.float64)
            return z, z
        leaves = {s.name: torch.zeros((1, *self.shapes[s.name]), dtype=torch.float64) for s in st.sources}
        c, rad = box_stage(self.graph, st, {n: (v, v) for n, v in leaves.items()})
        return c, rad

    def _abs_source(self, ball: Ball, j: int) -> Tensor:
        """H >= |h_j| on the ball (j = -1: the input)."""
        if j == -1:
            return ball.abs_input()
        lo, hi = ball.bb.h[j]
        return torch.maximum(lo.abs(), hi.abs())

    def _weight(self, ball: Ball, k: int) -> Tensor:
        """W_k >= gamma(K) |A_k| H + gamma(n + 4) |bc| + brad [B, *z] (module docstring)."""
        if k in ball.weights:
            return ball.weights[k]
        st = self.stages[k]
        b = ball.x.shape[0]
        if not st.nodes:
            w = torch.zeros((b, *st.z_shape), dtype=torch.float64)
        else:
            values = {s.name: self._abs_source(ball, s.index) for s in st.sources}
            for node in st.nodes:
                if isinstance(node.op, (Add, Concat)):  # |sum| <= sum of |.|; Concat: side by side
                    values[node.name] = node.op.forward(*(values[i] for i in node.inputs))
                else:
                    v = values[node.inputs[0]]
                    values[node.name] = absolute_op(node.op, v.dim() - 1).forward(v)
            k_terms = self.terms[k]
            gain = values[st.z_name].clamp_min(0.0) * (1.0 + gamma(k_terms + 8))
            bc, brad = self.consts[k]
            n = math.prod(st.z_shape)
            w = gamma(k_terms) * gain + gamma(n + 4) * bc.abs() + brad
            w = w * (1.0 + 8 * U) + TINY
        ball.weights[k] = w
        return w

    def through(self, k: int, lam: Tensor, ball: Ball, acc: _Acc, adj: dict[int, Tensor]) -> None:
        """lam [B, N, *z_k] through stage k's affine map: adjoints of its sources, constant, error."""
        st = self.stages[k]
        b, n = lam.shape[:2]
        if st.nodes:
            acc.add_const(_dot(lam, self.consts[k][0].expand(b, *st.z_shape)))
            acc.add_err(_err_dot(lam, self._weight(ball, k)))
        for i, g in stage_vjp(st, lam.reshape(b * n, *st.z_shape), self.shapes).items():
            g = g.reshape(b, n, *g.shape[1:])
            adj[i] = adj[i] + g if i in adj else g

    def _relax(
        self, j: int, lam: Tensor, ball: Ball, acc: _Acc, slopes: dict[int, Tensor] | None = None
    ) -> Tensor:
        """lam [B, N, *h_j] through the nonlinearity of stage j: the adjoint of z_j. `slopes[j]`
        [B, N, *z_j]: lower slopes of the unstable ReLU / leaky ReLU units, clamped to [alpha, 1]."""
        st = self.stages[j]
        assert st.act is not None
        op = st.act.op
        pos = lam >= 0
        if isinstance(op, MaxPool):
            return self._pool(j, op, lam, pos, ball, acc)
        if isinstance(op, Sort):  # MaxMin: speccert.bounds.crown_sort
            mu, const, err = relax_sort(op, lam, ball.bb.pairs[j], ball.bb.z[j], self._abs_source(ball, j))
            acc.add_const(const)
            acc.add_err(err)
            return mu
        assert isinstance(op, Activation)
        if j not in ball.lines:
            lo, hi = ball.bb.z[j]
            lines = relax(op.fn, op.alpha, lo, hi)
            a_lo, b_lo, a_up, b_up = lines
            n = lo[0].numel()
            # per unit, >= every error weight of the module docstring whichever line is used
            w = gamma(2) * self._abs_source(ball, j)  # summed adjoints
            w = w + gamma(n + 4) * torch.maximum(b_lo.abs(), b_up.abs())
            slope = torch.maximum(a_lo.abs(), a_up.abs())
            if op.fn in ("relu", "leaky_relu"):
                # unstable units: any lower slope in [alpha, 1] (intercept 0) is valid (crown_relax);
                # the error weight allows for the largest, 1
                unstable = (lo < 0) & (hi > 0)
                ball.free[j] = (unstable, float(op.alpha) if op.fn == "leaky_relu" else 0.0)
                slope = torch.where(unstable, slope.clamp_min(1.0), slope)
            w = w + gamma(2) * slope * torch.maximum(lo.abs(), hi.abs())
            ball.lines[j] = (*lines, w * (1.0 + 8 * U))
            if bool((b_lo != 0).any()):
                ball.offset.add(j)
        a_lo, b_lo, a_up, b_up, w = ball.lines[j]
        lower_slope = a_lo.unsqueeze(1)
        if slopes is not None and j in slopes and j in ball.free:
            unstable, alpha = ball.free[j]
            # clamped into [alpha, 1] here, whatever was passed: the bound is valid for any slopes
            lower_slope = torch.where(unstable.unsqueeze(1), slopes[j].clamp(alpha, 1.0), lower_slope)
        mu = lam * torch.where(pos, lower_slope, a_up.unsqueeze(1))
        up_part = _dot(lam.clamp_max(0.0), b_up)
        # lower lines through 0 (ReLU, leaky ReLU): that dot product is exactly 0, skipped
        lo_part = _dot(lam.clamp_min(0.0), b_lo) if j in ball.offset else 0.0
        acc.add_const(lo_part + up_part)
        acc.add_err(_err_dot(lam, w))
        return mu

    def _pool(self, j: int, op: MaxPool, lam: Tensor, pos: Tensor, ball: Ball, acc: _Acc) -> Tensor:
        """Max-pool: each window's lower and upper lines (speccert.bounds.crown_pool)."""
        st = self.stages[j]
        lo, hi = ball.bb.z[j]
        n = lam[0, 0].numel()
        if j not in ball.pools:
            winner = ball.bb.winner[j]
            assert winner is not None
            fixed = ball.bb.mid[j].flatten(2) > 0  # windows whose winner cannot change
            lines = pool_lines(op, lo, hi, fixed, winner)
            b_up = lines.b_up.reshape(ball.bb.h[j][1].shape)
            w = gamma(2) * self._abs_source(ball, j) + gamma(n + 4) * b_up.abs()
            ball.pools[j] = (lines, b_up, w * (1.0 + 8 * U))
        lines, b_up, w = ball.pools[j]
        acc.add_const(_dot(lam.clamp_max(0.0), b_up))
        acc.add_err(_err_dot(lam, w))
        b, rows = lam.shape[:2]
        mu = route(op, lam, lines, st.z_shape)
        z_max = torch.maximum(lo.abs(), hi.abs()).flatten(1).amax(1)[:, None]
        spread = lam.abs().flatten(2).sum(2) * (1.0 + gamma(n + 2)) * z_max
        acc.add_err(gamma(math.prod(op.kernel) + 2) * spread * (1.0 + 8 * U))
        return mu.reshape(b, rows, *st.z_shape)

    def columns_of(self, k: int) -> dict[int, Tensor] | None:
        """{source j: [n + 1, *h_j]}: row i is e_i^T A_kj as stage_vjp computes it (the last row 0),
        for the hidden bounds' unit rows (per model; None where it would take more than COLUMN_BYTES).
        A one-hot row through the reverse pass is a sum of one product and zeros, so this is the very
        value the pass gives inside any batch (and stays within its gamma(K) allowance regardless)."""
        if k not in self.columns:
            st = self.stages[k]
            n = math.prod(st.z_shape)
            size = sum(math.prod(self.shapes[s.name]) for s in st.sources) * (n + 1) * 8
            self.column_bytes += size
            if not st.nodes or self.column_bytes > COLUMN_BYTES:
                self.columns[k] = None
            else:
                eye = torch.eye(n, dtype=torch.float64)
                parts: dict[int, list[Tensor]] = {}
                for i in range(0, n, COLUMN_CHUNK):
                    rows = eye[i : i + COLUMN_CHUNK].reshape(-1, *st.z_shape)
                    for j, g in stage_vjp(st, rows, self.shapes).items():
                        parts.setdefault(j, []).append(g)
                self.columns[k] = {j: torch.cat([*g, torch.zeros_like(g[0][:1])]) for j, g in parts.items()}
        return self.columns[k]

    def _through_units(
        self, k: int, slot: Tensor, cols: dict[int, Tensor], ball: Ball, acc: _Acc, adj: dict[int, Tensor]
    ) -> None:
        """`through` for the rows [+e_i, -e_i] of z_k, i = slot [B, c] (n: a zero row), read from the
        stage's columns: the same constant (+-bc_i), error (W_i) and adjoints, without the products."""
        st = self.stages[k]
        b, n = slot.shape[0], math.prod(st.z_shape)
        zero = torch.zeros((b, 1), dtype=torch.float64)
        bc = torch.cat([self.consts[k][0].reshape(1, -1).expand(b, n), zero], 1).gather(1, slot)
        acc.add_const(torch.cat([bc, -bc], 1))
        w = torch.cat([self._weight(ball, k).reshape(b, n), zero], 1).gather(1, slot)
        w = w * (1.0 + 2 * gamma(n + 2))  # as _err_dot
        acc.add_err(torch.cat([w, w], 1))
        for i, col in cols.items():
            g = col[slot]
            g = torch.cat([g, -g], 1)
            adj[i] = adj[i] + g if i in adj else g

    def _start(
        self, top: int, lam: Tensor, ball: Ball, units: tuple[Tensor, dict[int, Tensor]] | None = None
    ) -> tuple[_Acc, dict[int, Tensor]]:
        """The running constant and error and the adjoints of the sources after stage `top`'s affine map.
        `units` = (slot, columns): the rows are [+e_slot, -e_slot] of z_top (lam gives only the shape)."""
        b, rows = lam.shape[:2]
        zero = torch.zeros((b, rows), dtype=torch.float64)
        acc = _Acc(zero, zero, zero)
        adj: dict[int, Tensor] = {}
        if units is None:
            self.through(top, lam, ball, acc, adj)
        else:
            self._through_units(top, units[0], units[1], ball, acc, adj)
        return acc, adj

    def descend(
        self,
        above: int,
        last: int,
        adj: dict[int, Tensor],
        ball: Ball,
        acc: _Acc,
        slopes: dict[int, Tensor] | None = None,
    ) -> None:
        """The stages above > j >= last, last first: each adjoint through its nonlinearity and map."""
        for j in range(above - 1, last - 1, -1):
            if j in adj:
                self.through(j, self._relax(j, adj.pop(j), ball, acc, slopes), ball, acc, adj)

    def _backward(
        self,
        top: int,
        lam: Tensor,
        ball: Ball,
        slopes: dict[int, Tensor] | None,
        units: tuple[Tensor, dict[int, Tensor]] | None = None,
    ) -> tuple[_Acc, Tensor]:
        """The running constant and error and the input's adjoint Lam (before the input's terms)."""
        acc, adj = self._start(top, lam, ball, units)
        self.descend(top, 0, adj, ball, acc, slopes)
        return acc, input_adjoint(adj, ball, lam.shape[1])

    def estimate(self, top: int, lam: Tensor, ball: Ball, slopes: dict[int, Tensor]) -> Tensor:
        """The bound a - r n without the input's rounding terms and outward rounding, differentiable
        in `slopes`: only an objective to choose slopes by (never a certificate)."""
        acc, lam_x = self._backward(top, lam, ball, slopes)
        norm = (lam_x.flatten(2).square().sum(2) + 1e-30).sqrt()
        return acc.const + _dot(lam_x, ball.x) - acc.err - ball.r[:, None] * norm

    def lower(
        self,
        top: int,
        lam: Tensor,
        ball: Ball,
        slopes: dict[int, Tensor] | None = None,
        units: tuple[Tensor, dict[int, Tensor]] | None = None,
    ) -> tuple[Tensor, Tensor]:
        """(a, n) [B, N]: over B(x, rho), rho <= ball.r, lam^T z_top >= a - rho n (module docstring),
        with the lower slopes `slopes` (clamped to [alpha, 1]) at unstable ReLU units where given.
        `units`: see `_backward` (lam then only gives the rows' shape)."""
        plan = self.first_plan() if slopes is None else None
        hidden = top < len(self.stages) - 1  # rows +-e_i of a hidden layer: small first layers only
        if plan is not None and hidden and plan.cand.shape[0] > HIDDEN_UNITS:
            plan = None
        if plan is not None and plan.top < top and bool((ball.r > 0).any()):
            acc, adj = self._start(top, lam, ball, units)
            self.descend(top, plan.top + 1, adj, ball, acc)
            return best_of_both(self, plan, acc, adj, ball, lam.shape[1])
        acc, lam_x = self._backward(top, lam, ball, slopes, units)
        return finish(acc, lam_x, ball)

    def interval(self, x: Tensor, r: Tensor) -> Interval:
        """The hook of `ball_bounds`: CROWN intervals of the uncertain units of z_k
        (speccert.bounds.crown_hidden)."""
        return hidden_interval(self, x, r)

    def ball(self, x: Tensor, r: Tensor) -> Ball:
        """Proven bounds of every stage over B(x_b, r_b): intervals by boxes, Lipschitz and CROWN."""
        hook = self.interval(x, r)
        bb = ball_bounds(self.graph, self.stages, x, r, None, self.unit_lipschitz, interval=hook)
        return Ball(x, r, bb)

    def first_plan(self) -> FirstPlan | None:
        """The convex first layer's units and M (speccert.bounds.crown_first; once per model)."""
        if self.first_layer == "off":
            return None
        if not self._plan:
            self._plan.append(build_plan(self.graph, self.stages))
        return self._plan[0]

    def margin_bounds(self, x: Tensor, y: Tensor, r: Tensor) -> tuple[Tensor, Tensor]:
        """(a, n) [B, C] for the margins f_y - f_j over B(x, r) (a = +inf, n = 0 at j = y)."""
        ball = self.ball(x, r)
        final = self.stages[-1]
        classes = math.prod(final.z_shape)
        eye = torch.eye(classes, dtype=torch.float64)
        lam = (eye[y][:, None, :] - eye[None, :, :]).reshape(x.shape[0], classes, *final.z_shape)
        top = len(self.stages) - 1
        a, nrm = self.lower(top, lam, ball)
        own = torch.zeros_like(a, dtype=torch.bool).scatter(1, y[:, None], True)
        if self.steps > 0:
            a, nrm = optimised_margins(self, top, lam, ball, (a, nrm), own)
        return torch.where(own, math.inf, a), torch.where(own, 0.0, nrm)


__all__ = ["Ball", "Crown", "inner_dimension"]
