"""Torus blocks: a proven upper bound for convolutions from the frequency blocks of a circular convolution.

Why it is sound. Per spatial axis, let the zero-padded conv read input index t = i*s + a*d - p_begin for
output i < out and tap a < k (indices outside [0, n) read zeros). Embed x at [0, n) of a torus Z_N. If
N >= n + p_begin, N > t_max = (out-1)s + (k-1)d - p_begin and N >= s*out, every padding index lands on
a torus zero and every output is a distinct torus position, so A = S C E: E embeds (isometry), C is the
circular conv on Z_N, S keeps the true outputs (a coordinate restriction). Hence ||A|| <= ||C||.

With N = M s, C's strided output is a sum of stride-1 circular convs over the s polyphase components
x_r[m] = x[m s + r]: tap a reads component r_a = off_a mod s at shift q_a = floor(off_a / s). A plane
wave x_r[m] = v_r exp(2 pi i w m / M) maps to exp(2 pi i w i / M) B(w) v with
    B(w)[o, (r, c)] = sum_{a : r_a = r} W[o, c, a] exp(2 pi i w q_a / M),
so ||C|| = max over w of ||B(w)||_2 (block-diagonalisation by the unitary DFT); per group likewise,
block-diagonal over groups. The max of ||B(w)|| is certified by Cholesky factorisations in float64 (speccert.norms.psd), plus the error made
building B. Circular padding uses the layer's own torus Z_n (exact when s divides n and every output
position is distinct; a duplicated output row multiplies by sqrt(multiplicity)). Any admissible N gives
a bound; we take the min over a few. Only half of the spectrum is needed: B(-w) = conj(B(w)).

The per-block bound is pluggable (`BlockBound`): by default the Cholesky certificate of speccert.norms.psd
(with the Gram matrices assembled from tap products when they fit); the `gram` method passes Gram
iteration (speccert.norms.gram_chain.max_gram_bound). This module knows no norm method.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from speccert.norms.layer import ConvGeometry
from speccert.norms.psd import max_block_norm, max_eigenvalue
from speccert.norms.rounding import U, gamma, round_up

Tensor = torch.Tensor
# (blocks [B, m, n], a value known to be below the answer) -> (proven bound on max_i ||blocks[i]||_2,
# index of a block attaining it)
BlockBound = Callable[[Tensor, float], tuple[float, int]]


@dataclass(frozen=True)
class AxisPlan:
    """One axis of a torus: size N = M*s, polyphase stride s, per-tap (shift q, phase r)."""

    n: int
    M: int
    s: int
    q: tuple[int, ...]
    r: tuple[int, ...]
    multiplicity: int = 1

    @property
    def N(self) -> int:
        return self.M * self.s


def _axis_plans(
    n: int, pb: int, pe: int, k: int, d: int, s: int, out: int, circular: bool, extra: int
) -> list[AxisPlan]:
    offs = [a * d - pb for a in range(k)]
    if circular:
        if n % s == 0:
            m = n // s
            return [AxisPlan(n, m, s, tuple(o // s for o in offs), tuple(o % s for o in offs), -(-out // m))]
        pos = [(i * s) % n for i in range(out)]
        mult = max(pos.count(p) for p in set(pos))
        # Stride-1 torus Z_n with the outputs as selected (possibly repeated) rows.
        return [AxisPlan(n, n, 1, tuple(offs), (0,) * k, mult)]
    t_max = (out - 1) * s + (k - 1) * d - pb
    n_min = max(n + pb, t_max + 1, s * out, 1)
    n_min = -(-n_min // s) * s
    return [
        AxisPlan(n, (n_min + j * s) // s, s, tuple(o // s for o in offs), tuple(o % s for o in offs))
        for j in range(extra + 1)
    ]


def _phases(plan: AxisPlan, half: bool, device: torch.device) -> Tensor:
    """P[w, r, a] = exp(2 pi i w q_a / M) if r_a == r else 0, for w in [0, M) (or [0, M//2] if half)."""
    m = plan.M
    nw = m // 2 + 1 if half else m
    w = torch.arange(nw, dtype=torch.int64, device=device)[:, None]
    q = torch.tensor(plan.q, dtype=torch.int64, device=device)[None, :]
    ang = (2.0 * math.pi / m) * torch.remainder(w * q, m).to(torch.float64)  # reduce exactly first
    ph = torch.polar(torch.ones_like(ang), ang)  # [nw, k]
    sel = torch.zeros((plan.s, len(plan.q)), dtype=torch.float64, device=device)
    sel[torch.tensor(plan.r, device=device), torch.arange(len(plan.q), device=device)] = 1.0
    return ph[:, None, :] * sel[None, :, :]


@dataclass(frozen=True)
class TorusBound:
    """The bound on one torus and where it is attained (for warm-starting power iteration)."""

    value: float
    plans: tuple[AxisPlan, AxisPlan]
    group: int
    freq: tuple[int, int]
    blocks: int


def _block_max(
    wg: Tensor, p1: Tensor, p2: Tensor, rows: int, cols: int, chunk_bytes: int, block_bound: BlockBound
) -> tuple[float, tuple[int, int, int], int]:
    """max over the explicit frequency blocks B(w) (built in complex128) of a proven bound on ||B(w)||."""
    groups = wg.shape[0]
    wc = wg.to(torch.complex128)
    per_x = p2.shape[0] * groups * rows * cols * 16
    step = max(1, chunk_bytes // max(per_x, 1))
    best, where = 0.0, (0, 0, 0)
    nblocks = 0
    for x0 in range(0, p1.shape[0], step):
        x1 = min(p1.shape[0], x0 + step)
        # B[x, y, G, o, r1, r2, c]
        t = torch.einsum("gocab,xra->xgocrb", wc, p1[x0:x1])
        b = torch.einsum("xgocrb,ysb->xygorsc", t, p2).reshape(-1, rows, cols)
        val, i = block_bound(b, best)
        nblocks += b.shape[0]
        if val > best:
            x, rem = divmod(i, p2.shape[0] * groups)
            y, gi = divmod(rem, groups)
            best, where = val, (gi, x0 + x, y)
    return best, where, nblocks


_TapPair = tuple[int, int, Tensor, Tensor, Tensor, Tensor]
ALL_PAIRS_BYTES = 1 << 27  # `_chunk_gram` sums every ordered tap pair in one complex product below this


def _tap_gram_err(wt: Tensor, slot: Tensor, n_slots: int, left: bool) -> float:
    """The bound kappa ||V||_F^2 (rounded up) on ||fl(H) - H||_2 for one group's taps wt [taps, co, ci]."""
    co, ci = wt.shape[1], wt.shape[2]
    absv = torch.zeros((n_slots, co, ci), dtype=torch.float64, device=wt.device)
    absv.index_add_(0, slot, wt.abs())
    inner = co if left else ci
    kappa = 2.0 * gamma(inner + wt.shape[0] ** 2 + 100.0)
    return kappa * float(absv.square().sum()) * (1.0 + gamma(absv.numel() + 2.0))


def _tap_pairs(wt: Tensor, slot: Tensor, n_slots: int, left: bool) -> list[_TapPair]:
    """The tap products of one group, per slot block (r, q): (r, q, a, b, half, products)."""
    # Only pairs a <= b: the (b, a) term is the conjugate transpose of the (a, b) one, so with X the
    # sum over a < b plus half the a = b terms, H = X + X^H (the same sums, one more addition).
    taps = wt.shape[0]
    ia, ib = torch.triu_indices(taps, taps, device=wt.device)
    if left:
        g = torch.einsum("poc,pod->pcd", wt[ia], wt[ib])  # W_a^T W_b
        sel = [
            (r, q, torch.nonzero(slot[ia].eq(r) & slot[ib].eq(q))[:, 0])
            for r in range(n_slots)
            for q in range(n_slots)
        ]
    else:
        g = torch.einsum("poc,pqc->poq", wt[ia], wt[ib])  # W_a W_b^T
        sel = [(0, 0, torch.nonzero(slot[ia].eq(slot[ib]))[:, 0])]
    g = g.reshape(ia.shape[0], -1)
    half = torch.where(ia == ib, 0.5, 1.0).to(torch.float64)
    return [
        (r, q, ia[p], ib[p], half[p], g if p.shape[0] == ia.shape[0] else g[p])
        for r, q, p in sel
        if p.shape[0]
    ]


def _chunk_gram(ph: Tensor, pairs: list[_TapPair], dim: int, n_slots: int, left: bool, wt: Tensor) -> Tensor:
    """The Gram matrices H = X + X^H of a chunk of frequencies (phases ph [w, taps]) from the tap products."""
    ci = wt.shape[2]
    nw = ph.shape[0]

    def block(a: Tensor, b: Tensor, hf: Tensor, gm: Tensor) -> Tensor:
        coef = ph[:, a].conj() * ph[:, b] if left else ph[:, a] * ph[:, b].conj()  # [w, pairs]
        coef = coef * hf
        both = torch.cat([coef.real, coef.imag]) @ gm  # one product for the real and imaginary parts
        return torch.complex(both[:nw], both[nw:])

    if n_slots == 1 or not left:  # one slot block: it is the whole matrix (no zero fill, no accumulation)
        (_, _, a, b, hf, gm), *rest = pairs
        assert not rest
        if gm.shape[0] * 2 * dim * dim * 16 <= ALL_PAIRS_BYTES:
            # every ordered pair (the (b, a) product is the (a, b) one transposed, exactly): H in one
            # complex product, no X + X^H pass (~2x faster on 64/128 channels); each entry is a sum over
            # <= taps^2 pairs, as the error bound assumes. Exactly Hermitian no more, but only the lower
            # triangle (and the diagonal's real part) is read by the certificates.
            off = a != b
            gm_t = gm[off].reshape(-1, dim, dim).mT.reshape(-1, dim * dim)
            ia, ib = torch.cat([a, b[off]]), torch.cat([b, a[off]])
            coef = ph[:, ia].conj() * ph[:, ib] if left else ph[:, ia] * ph[:, ib].conj()
            return (coef @ torch.cat([gm, gm_t]).to(torch.complex128)).reshape(nw, dim, dim)
        x = block(a, b, hf, gm).reshape(nw, dim, dim)
        return x + x.mH
    h = torch.zeros((nw, dim, dim), dtype=torch.complex128, device=wt.device)
    hv = h.view(nw, n_slots, ci, n_slots, ci)
    for r, q, a, b, hf, gm in pairs:
        hv[:, r, :, q, :] += block(a, b, hf, gm).reshape(nw, ci, ci)
    return h + h.mH


def _tap_gram_max(
    wg: Tensor, plans: tuple[AxisPlan, AxisPlan], p1: Tensor, p2: Tensor, chunk_bytes: int
) -> tuple[float, tuple[int, int, int], int]:
    """max over w of a proven bound on ||B(w)||, with the Gram matrices built from tap products.

    With phi_a(w) the phase of tap a and r(a) its polyphase slot, B(w) = sum_a phi_a(w) W_a P_r(a), so
        B^H B = sum_{a,b} conj(phi_a) phi_b P_r(a)^T (W_a^T W_b) P_r(b)   (slot blocks (r(a), r(b))),
        B B^H = sum_{a,b: r(a) = r(b)} phi_a conj(phi_b) W_a W_b^T.
    The tap products are computed once per torus (real, taps^2 small matrix products) and every
    frequency's Gram matrix is a short phase-weighted sum of them: taps^2 n^2 work per frequency
    instead of the n^3 of forming B^H B. Rounding: each tap product errs by <= gamma(k) |W_a|^T |W_b|,
    each phase coefficient conj(phi_a) phi_b by <= 60 u (each of its four phase factors: the angle
    2 pi k / M after <= 3 roundings, <= 13 u absolute, cos/sin <= 1 ulp), the sum over <= taps^2 pairs by gamma(taps^2) times the sum of
    magnitudes, so entrywise |fl(H) - H| <= kappa sum_{a,b} |W_a|^T |W_b| restricted to the pairs used
    <= kappa V^T V (or sum_r V_r V_r^T), V_r = sum_{a: r(a) = r} |W_a|; hence
    ||fl(H) - H||_2 <= kappa ||V||_F^2 with kappa = 2 gamma(k + taps^2 + 100) (the 2 for complex arithmetic).
    """
    groups, co, ci = wg.shape[0], wg.shape[1], wg.shape[2]
    k1, k2 = wg.shape[3], wg.shape[4]
    s2 = plans[1].s
    slot = torch.tensor(
        [plans[0].r[a1] * s2 + plans[1].r[a2] for a1 in range(k1) for a2 in range(k2)], device=wg.device
    )
    n_slots = plans[0].s * s2
    # phi[w1, w2, a] = p1[w1, r1(a1), a1] p2[w2, r2(a2), a2] (each tap sits in exactly one slot)
    phi = torch.einsum("xa,yb->xyab", p1.sum(1), p2.sum(1)).reshape(-1, k1 * k2)
    n_w = phi.shape[0]
    left = co >= n_slots * ci  # B^H B is the smaller Gram matrix
    dim = n_slots * ci if left else co
    best, where, nblocks = 0.0, (0, 0, 0), 0
    for gi in range(groups):
        wt = wg[gi].flatten(2).permute(2, 0, 1)  # [taps, co, ci]
        h_err = _tap_gram_err(wt, slot, n_slots, left)
        pairs = _tap_pairs(wt, slot, n_slots, left)
        step = max(1, chunk_bytes // (dim * dim * 16))
        for w0 in range(0, n_w, step):
            ph = phi[w0 : w0 + step]
            h = _chunk_gram(ph, pairs, dim, n_slots, left, wt)
            lam, i = max_eigenvalue(h, h_err, best * best)
            val = round_up(math.sqrt(lam) * (1.0 + 4.0 * U))
            nblocks += ph.shape[0]
            if val > best:
                x, y = divmod(w0 + i, p2.shape[0])
                best, where = val, (gi, x, y)
    return best, where, nblocks


@dataclass(frozen=True)
class FrequencyGrams:
    """The Gram matrices of one group's frequency blocks on one torus, and how they are laid out.

    h[i] = B(w_i)^H B(w_i) (`left`: rows/columns (slot, c_in), slot = r1 s2 + r2) or B(w_i) B(w_i)^H
    (c_out) for w_i = freqs[i] over the half spectrum w2 <= M2 // 2 (B(-w) = conj(B(w)) gives the rest);
    ||fl(h[i]) - h[i]||_2 <= h_err for every i (`_tap_gram_max`'s error analysis).
    """

    h: Tensor
    h_err: float
    left: bool
    n_slots: int
    freqs: Tensor  # [W, 2] int64


def frequency_grams(wg: Tensor, plans: tuple[AxisPlan, AxisPlan]) -> FrequencyGrams:
    """All frequency-block Gram matrices of one group's kernel wg [c_out, c_in/groups, k1, k2] (float64),
    from the tap products (the smaller side, as `_tap_gram_max` chooses it)."""
    dev = wg.device
    co, ci, k1, k2 = wg.shape
    s2 = plans[1].s
    slot = torch.tensor(
        [plans[0].r[a1] * s2 + plans[1].r[a2] for a1 in range(k1) for a2 in range(k2)], device=dev
    )
    n_slots = plans[0].s * s2
    p1 = _phases(plans[0], False, dev).to(torch.complex128)
    p2 = _phases(plans[1], True, dev).to(torch.complex128)
    phi = torch.einsum("xa,yb->xyab", p1.sum(1), p2.sum(1)).reshape(-1, k1 * k2)
    left = co >= n_slots * ci
    dim = n_slots * ci if left else co
    wt = wg.flatten(2).permute(2, 0, 1)
    h = _chunk_gram(phi, _tap_pairs(wt, slot, n_slots, left), dim, n_slots, left, wt)
    w1 = torch.arange(p1.shape[0], device=dev).repeat_interleave(p2.shape[0])
    w2 = torch.arange(p2.shape[0], device=dev).repeat(p1.shape[0])
    return FrequencyGrams(h, _tap_gram_err(wt, slot, n_slots, left), left, n_slots, torch.stack([w1, w2], 1))


def torus_bound(
    g: ConvGeometry,
    plans: tuple[AxisPlan, AxisPlan],
    device: torch.device,
    chunk_bytes: int = 1 << 28,
    block_bound: BlockBound | None = None,
) -> TorusBound:
    """max over frequencies and groups of the proven upper bound on ||B(w)||_2.

    block_bound None: the maximum certified by Cholesky factorisations (speccert.norms.psd), tight to
    ~1e-10, from tap-product Gram matrices when they fit in `chunk_bytes`; otherwise the given bound on
    every explicit block (e.g. a fixed 12-step Gram iteration, speccert.norms.gram_chain.max_gram_bound).
    """
    w = g.weight.to(device=device, dtype=torch.float64)
    cout, cin_g = w.shape[0], w.shape[1]
    groups = g.groups
    co = cout // groups
    wg = w.reshape(groups, co, cin_g, *w.shape[2:])
    p1 = _phases(plans[0], False, device).to(torch.complex128)
    p2 = _phases(plans[1], True, device).to(torch.complex128)
    taps = w.shape[2] * w.shape[3]
    s_tot = plans[0].s * plans[1].s
    rows, cols = co, s_tot * cin_g
    # Each B entry is a sum of <= taps complex products with phases accurate to ~8 u (angle reduced
    # exactly, then one multiply and cos/sin); bound the construction error's Frobenius norm per block.
    w_fro = float(torch.linalg.norm(w)) * (1 + gamma(w.numel() + 2))
    build_err = 4.0 * (taps + 300) * U * math.sqrt(taps) * w_fro
    if block_bound is None and taps * taps * min(rows, cols) ** 2 * 8 <= chunk_bytes:
        best, where, nblocks = _tap_gram_max(wg, plans, p1, p2, chunk_bytes)
        build_err = 0.0  # the tap route never builds B: its error is inside the bound on H
    else:
        bound = _cholesky_block_bound if block_bound is None else block_bound
        best, where, nblocks = _block_max(wg, p1, p2, rows, cols, chunk_bytes, bound)
    mult = plans[0].multiplicity * plans[1].multiplicity
    value = round_up((best + build_err) * math.sqrt(mult) * (1 + 4 * U))
    return TorusBound(value, plans, where[0], (where[1], where[2]), nblocks)


def _cholesky_block_bound(b: Tensor, floor: float) -> tuple[float, int]:
    return max_block_norm(b, floor=floor)


def candidate_plans(g: ConvGeometry, extra: int = 2) -> list[tuple[AxisPlan, AxisPlan]]:
    g = g.as_2d()
    per_axis = [
        _axis_plans(n, pb, pe, k, d, s, out, g.circular, extra)
        for n, (pb, pe), k, d, s, out in zip(
            g.size, g.padding, g.kernel, g.dilation, g.stride, g.out_size, strict=True
        )
    ]
    count = max(len(p) for p in per_axis)
    return [
        (per_axis[0][min(j, len(per_axis[0]) - 1)], per_axis[1][min(j, len(per_axis[1]) - 1)])
        for j in range(count)
    ]


BUDGET_BLOCKS = 2_000_000  # `cheap_plans`: frequency-block entries (c_out x c_in x slots each) over all tori


def cheap_plans(
    g2: ConvGeometry, extra: int = 2, budget_blocks: int = BUDGET_BLOCKS
) -> list[tuple[AxisPlan, AxisPlan]]:
    """The smallest admissible torus, then up to `extra` larger ones while their half spectra's block
    entries stay within `budget_blocks` in all (`fft_bound` and the deflated bound take the min over them)."""
    co, ci = g2.weight.shape[0] // g2.groups, g2.weight.shape[1]
    chosen: list[tuple[AxisPlan, AxisPlan]] = []
    spent = 0
    for plans in candidate_plans(g2, extra):
        size = plans[0].M * (plans[1].M // 2 + 1) * g2.groups * co * ci * plans[0].s * plans[1].s
        if chosen and spent + size > budget_blocks:
            break
        spent += size
        chosen.append(plans)
    return chosen


def fft_bound(
    g: ConvGeometry,
    device: torch.device,
    extra: int = 2,
    budget_blocks: int = BUDGET_BLOCKS,
    block_bound: BlockBound | None = None,
) -> TorusBound:
    """The min over a few admissible tori of the torus bound (extra tori only while they are cheap)."""
    g2 = g.as_2d()
    best: TorusBound | None = None
    for plans in cheap_plans(g2, extra, budget_blocks):
        tb = torus_bound(g2, plans, device, block_bound=block_bound)
        if best is None or tb.value < best.value:
            best = tb
    assert best is not None
    return best


def applies(g: ConvGeometry | None) -> bool:
    """Whether the torus bound covers this convolution (1-d or 2-d, no cropping by negative padding)."""
    return g is not None and g.ndim in (1, 2) and all(p >= 0 for pp in g.padding for p in pp)


def memory_bytes(g: ConvGeometry) -> int:
    """Peak extra memory of `fft_bound`: one first-axis frequency of blocks at a time, times SVD workspace."""
    plans = candidate_plans(g, 0)[0]
    g2 = g.as_2d()
    co, ci = g2.weight.shape[0] // g2.groups, g2.weight.shape[1]
    one_row = (plans[1].M // 2 + 1) * g2.groups * co * ci * plans[0].s * plans[1].s * 16
    return 4 * one_row


def torus_label(tb: TorusBound, ndim: int) -> str:
    """The torus size as shown to users, e.g. "16x16" (a 1-d conv's unit axis left out)."""
    return "x".join(str(p.N) for p in tb.plans[2 - ndim :])
