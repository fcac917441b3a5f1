"""The deflated torus bound: a zero-padded convolution's norm without the torus' boundary excess.

The torus bound (speccert.norms.torus) writes A = S C E (E embeds the input window into a torus, C is
the circular conv, S keeps the true outputs) and uses ||A|| <= ||C|| = max_w ||B(w)||. On small maps
(ResNet-18's 7x7) that is 2-4% loose: a vector supported on the window cannot put all its energy at the
frequency where ||B(w)|| peaks. This bound keeps the window. Input side (the output side is the same
with A^T = E^T C^T S^T and B(w)^H): H = A^T A = E^T C^T S^T S C E <= E^T K E, K = C^T C, and with the
window's polyphase transform z(w)[(r, c)] = sum_{m : m s + r in window} x[c, m s + r] exp(-2 pi i w.m / M)
(Parseval: ||x||^2 = M^-2 sum_w ||z(w)||^2 over the M1 x M2 frequencies),

    x^T H x <= M^-2 sum_w z(w)^H G(w) z(w),   G(w) = B(w)^H B(w).

Per frequency, take any vectors Y_w (here sqrt(lambda - tau) times the eigenvectors of G(w) with
eigenvalue lambda above a threshold tau) and prove G(w) - Y_w Y_w^H <= mu I by one Cholesky
factorisation (speccert.norms.psd, every rounding error bounded; mu ~ tau). Then

    x^T H x <= mu ||x||^2 + ||L x||^2,   (L x)_j = M^-1 y_j^H z(w_j),

so ||A||^2 <= mu + lambda_max(L L^H), and L L^H is small (k x k, k the number of deflated vectors
over the full spectrum; B(-w) = conj(B(w)) gives Y_-w = conj(Y_w)):

    (L L^H)[j, j'] = M^-2 sum_r <y_j[r], y_j'[r]> D_r(w_j' - w_j),   D_r(d) = sum_{m valid for r} exp(2 pi i d.m / M),

a Dirichlet kernel of the window per polyphase slot r. Its lambda_max is certified by Cholesky too.
With tau = lambda_max(K) this is the torus bound; as tau decreases the bound decreases monotonically
to lambda_max(E^T K E) (the conv with its output cropping removed; ~0.5% above ||A|| on ResNet-18's
7x7 maps). On stride-1 convs speccert.norms.crop also subtracts the cropped outputs' energy
(H = E^T K E - R^T R): the bound then tends to ||A||^2 itself, and at tau = 0.85 lambda_max(K) it is
within 1% on ResNet-18's 7x7 maps where the window alone leaves 2-2.5%. Soundness never depends on the eigenvectors being accurate: any Y gives a proven bound.

Rounding: fl(G) from tap products errs by h_err (speccert.norms.torus); forming G - Y Y^H adds
<= 2 gamma(k + 4) sum_j ||y_j||^2 + 2 u ||fl(G - Y Y^H)||_F; every entry of fl(L L^H) errs by
<= kappa M^-2 sum_r cnt_r <|y_j[r]|, |y_j'[r]|> (kappa below, cnt_r <= M1 M2 the window size per
slot), a matrix dominated entrywise by a PSD one of trace sum_j ||y_j||^2, so the spectral error is
<= kappa sum_j ||y_j||^2.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import scipy.linalg
import torch

from speccert.norms.crop import applies as crop_applies
from speccert.norms.crop import crop_bound
from speccert.norms.layer import ConvGeometry
from speccert.norms.psd import (
    bound_after_cholesky,
    max_eigenvalue,
    passes,
    per_block_lapack,
    power_estimates,
)
from speccert.norms.rounding import U, gamma, round_up
from speccert.norms.torus import AxisPlan, FrequencyGrams, candidate_plans, cheap_plans, frequency_grams

Tensor = torch.Tensor
THETA = 0.85  # tau = THETA * lambda_max(K): the eigenvalues above it are deflated
THETA_LIGHT = 0.98  # `auto`'s light refine tier (brackets of 1.001-1.01): few vectors, near the peak
MAX_RANK = 1024  # at most this many deflated vectors (the k x k certificate stays cheap)
EXCESS = 0.4  # `expected_excess`'s constant (a low fit of the measured torus excess)


@dataclass(frozen=True)
class DeflatedBound:
    """A proven bound on ||A||_2, the number of deflated vectors and the torus used."""

    value: float
    rank: int
    torus: tuple[int, int]


def applies(g: ConvGeometry | None) -> bool:
    """Zero-padded 1-d/2-d convs with a kernel larger than 1x1 and no negative padding."""
    return (
        g is not None
        and not g.circular
        and g.ndim in (1, 2)
        and any(k > 1 for k in g.kernel)
        and all(p >= 0 for pp in g.padding for p in pp)
    )


def expected_excess(g: ConvGeometry) -> float:
    """A low guess of the torus bound's excess over ||A|| (torus / ||A|| - 1) from the geometry alone:
    EXCESS (k_eff - 1) / n^2 on the worst axis (k_eff = d (k - 1) + 1, n the input size). Measured on
    ResNet-18's 3x3 convs (random init and trained): 7x7 maps 1.7-3.5% (guess 1.6%), 14x14 0.4-0.8%
    (0.41%), 28x28 0.1-0.2% (0.1%), 4x4 ~11% (5%). It only decides whether `auto` runs this bound
    before the torus bound (which it then supersedes), never what is proven."""
    g2 = g.as_2d()
    return max(
        (
            EXCESS * d * (k - 1) / n**2
            for n, k, d in zip(g2.size, g2.kernel, g2.dilation, strict=True)
            if k > 1
        ),
        default=0.0,
    )


def cost(g: ConvGeometry) -> tuple[int, int]:
    """(number of frequency blocks on the smallest admissible torus, Gram dimension per block)."""
    g2 = g.as_2d()
    plans = candidate_plans(g2, 0)[0]
    co, ci = g2.weight.shape[0] // g2.groups, g2.weight.shape[1]
    slots = plans[0].s * plans[1].s
    return plans[0].M * plans[1].M, min(co, slots * ci)


def _dirichlet(plan: AxisPlan, window: int, left: bool, device: torch.device) -> tuple[Tensor, int]:
    """(D[r, d] = sum over window indices m of slot r of exp(2 pi i d m / M), the largest count)."""
    s = plan.s if left else 1
    d = torch.arange(plan.M, dtype=torch.int64, device=device)[:, None]
    rows, most = [], 0
    for r in range(s):
        count = max(0, -(-(window - r) // s)) if left else window
        most = max(most, count)
        m = torch.arange(count, dtype=torch.int64, device=device)[None, :]
        ang = (2.0 * math.pi / plan.M) * torch.remainder(d * m, plan.M).to(torch.float64)
        rows.append(torch.polar(torch.ones_like(ang), ang).sum(-1))
    return torch.stack(rows), most


class TopPairs(NamedTuple):
    """`_top_pairs`' answer: lam [W, kw] float64, vec [W, dim, kw] complex128, tau, and `cleared`, the
    blocks whose Cholesky factorisation of cleared_at I - fl(G(w)) ran through (so, with the rounding
    of `psd.bound_after_cholesky`, lambda_max(G(w)) <= that bound at cleared_at <= tau: proven, and never
    factorised again)."""

    lam: Tensor
    vec: Tensor
    tau: float
    cleared: Tensor
    cleared_at: float


def _top_pairs(h: Tensor, theta: float, max_rank: int) -> TopPairs:
    """Per block the eigenpairs above tau = theta * the largest eigenvalue of all blocks (raised to keep
    at most max_rank // 2 pairs: each half-spectrum pair counts up to twice), ascending, padded with
    (tau, 0) where a block has fewer.

    Single precision steers (any Y is sound): the deflated eigenvalues land within ~1e-7 of tau, inside
    the 1e-6 slack the certificate of mu allows. Only the eigenpairs above a first guess of tau are
    computed, the guess theta * lambda_max of the two blocks power iteration says are largest; tau is then
    set from the largest eigenvalue found, which is >= the guess, so no pair above it is missed. A block
    whose Cholesky factorisation of guess I - G(w) runs through (`psd.passes`, a third of an eigenvalue
    solve's work) has no eigenvalue above the guess and gets no solve at all: at theta near 1 that is
    most blocks (ResNet-18's 28x28 maps at theta 0.97: ~20 of 435 blocks solved). On the CPU at one thread
    (`psd.per_block_lapack`) the solves are LAPACK's MRRR (cheevr) restricted to the eigenvalues above the
    guess (~1.9x faster than the full eigh on ResNet-18's 512 x 512 blocks); elsewhere torch's batched eigh."""
    h32 = h.to(torch.complex64)
    est = power_estimates(h32)
    pick = torch.topk(est, min(2, h.shape[0])).indices
    guess = theta * float(torch.linalg.eigvalsh(h32[pick]).max()) if h.shape[0] else 0.0
    cleared = torch.zeros(h.shape[0], dtype=torch.bool, device=h.device)
    # A block whose estimate (below its lambda_max) is already above the guess cannot pass: not tried.
    maybe = torch.nonzero(est < guess)[:, 0] if guess > 0 else est.new_zeros(0, dtype=torch.int64)
    if maybe.numel():
        cleared[maybe] = passes(h if maybe.numel() == h.shape[0] else h[maybe], guess).to(h.device)
    solve = torch.nonzero(~cleared)[:, 0]
    none = (
        torch.zeros(0, dtype=torch.float32, device=h.device),
        torch.zeros((h.shape[-1], 0), dtype=torch.complex64, device=h.device),
    )
    pairs = [none] * h.shape[0]
    if not per_block_lapack(h):
        if solve.numel():
            lam_s, vec_s = torch.linalg.eigh(h32[solve])
            for j, i in enumerate(solve.tolist()):
                pairs[i] = (lam_s[j], vec_s[j])
    else:
        blocks = h32.numpy()
        for i in solve.tolist():
            lam_i, vec_i = scipy.linalg.eigh(
                blocks[i], subset_by_value=(guess, math.inf), driver="evr", check_finite=False
            )
            pairs[i] = (torch.from_numpy(lam_i), torch.from_numpy(vec_i))
    found = torch.cat([lam_i for lam_i, _ in pairs]).to(torch.float64)
    tau = theta * float(found.max()) if found.numel() else guess
    top = torch.sort(found, descending=True).values
    if top.numel() > max_rank // 2:
        tau = max(tau, float(top[max_rank // 2]))
    kw = max(1, max(int((lam_i.to(torch.float64) > tau).sum()) for lam_i, _ in pairs))
    dim = h.shape[-1]
    lam = torch.full((h.shape[0], kw), tau, dtype=torch.float64, device=h.device)
    vec = torch.zeros((h.shape[0], dim, kw), dtype=torch.complex128, device=h.device)
    for i, (lam_i, vec_i) in enumerate(pairs):
        above = lam_i.to(torch.float64) > tau  # ascending: the last ones
        n = int(above.sum())
        if n:
            lam[i, kw - n :] = lam_i[above].to(device=h.device, dtype=torch.float64)
            vec[i, :, kw - n :] = vec_i[:, above].to(device=h.device, dtype=torch.complex128)
    return TopPairs(lam, vec, tau, cleared, guess)


def _deflate(fg: FrequencyGrams, top: TopPairs) -> tuple[Tensor, float]:
    """(Y [W, dim, kw]: sqrt(lambda - tau) times the eigenvectors above tau (`_top_pairs`; any vectors
    would do), proven mu with G(w) - Y_w Y_w^H <= mu I for every block). Overwrites fg.h with the
    deflated blocks.

    The blocks `_top_pairs` cleared (no vector deflated: G(w) itself) are already proven below
    bound_after_cholesky(cleared_at) <= ~tau; the others get one Cholesky factorisation each here, with
    no power-iteration steer first (every block is expected to pass at tau)."""
    lam, vec, tau = top.lam, top.vec, top.tau
    kw = lam.shape[-1]
    s = torch.sqrt(torch.clamp(lam - tau, min=0.0))
    y = vec * s[:, None, :].to(vec.dtype)
    # Only the blocks with a deflated vector change (the others are fl(G) itself, no new rounding).
    # fg.h is overwritten in place (its last use: the caller keeps only the layout).
    some = torch.nonzero(s.amax(-1) > 0)[:, 0]
    ys = y[some]
    changed = fg.h[some] - ys @ ys.mH
    g_def = fg.h.index_copy_(0, some, changed)
    ysq = float(ys.abs().square().sum((-2, -1)).max()) if some.numel() else 0.0
    parts = torch.view_as_real(changed) if changed.is_complex() else changed[..., None]  # (a fast reduction)
    fro = float(torch.linalg.vector_norm(parts, dim=(-3, -2, -1)).max()) if some.numel() else 0.0
    e_def = 2.0 * gamma(kw + 4.0) * ysq * (1.0 + 1e-6) + 2.0 * U * fro * (1.0 + 1e-6)
    left = ~top.cleared
    mu = bound_after_cholesky(top.cleared_at, g_def.shape[-1], fg.h_err) if bool(top.cleared.any()) else 0.0
    if bool(left.any()):
        rest = g_def if bool(left.all()) else g_def[left]
        mu = max(mu, max_eigenvalue(rest, round_up(fg.h_err + e_def), tau, rel=1e-6, steer=False)[0])
    return y, mu


def _full_spectrum(fg: FrequencyGrams, y: Tensor, m1: int, m2: int) -> tuple[Tensor, Tensor]:
    """(Y over every frequency [k, dim], frequencies [k, 2]): the half spectrum plus conjugates."""
    w1, w2 = fg.freqs[:, 0], fg.freqs[:, 1]
    mirror = (w2 != 0) & ~((m2 % 2 == 0) & (w2 == m2 // 2))
    wf = torch.cat([fg.freqs, torch.stack([(-w1) % m1, (-w2) % m2], 1)[mirror]])
    yf = torch.cat([y, y[mirror].conj()])  # [W', dim, kw]
    kw = y.shape[-1]
    keep = yf.abs().square().sum(1) > 0  # [W', kw]
    cols = yf.permute(0, 2, 1)[keep]  # [k, dim]
    freqs = wf[:, None, :].expand(-1, kw, -1)[keep]
    return cols, freqs


def _window_gram(
    g2: ConvGeometry, plans: tuple[AxisPlan, AxisPlan], fg: FrequencyGrams, cols: Tensor, freqs: Tensor
) -> tuple[Tensor, float]:
    """(fl(L L^H) [k, k], bound on its error) (module docstring)."""
    windows = g2.size if fg.left else g2.out_size
    d1, c1 = _dirichlet(plans[0], windows[0], fg.left, cols.device)
    d2, c2 = _dirichlet(plans[1], windows[1], fg.left, cols.device)
    m1, m2 = plans[0].M, plans[1].M
    dw1 = torch.remainder(freqs[None, :, 0] - freqs[:, None, 0], m1)
    dw2 = torch.remainder(freqs[None, :, 1] - freqs[:, None, 1], m2)
    slots = fg.n_slots if fg.left else 1  # the output side's Gram has no polyphase slots
    per_slot = cols.shape[1] // slots
    ys = cols.reshape(cols.shape[0], slots, per_slot)
    q = torch.zeros((cols.shape[0], cols.shape[0]), dtype=torch.complex128, device=cols.device)
    s2 = d2.shape[0]
    for r in range(slots):
        yr = ys[:, r, :]
        q += (yr.conj() @ yr.T) * (d1[r // s2][dw1] * d2[r % s2][dw2])
    q = q / float(m1 * m2)  # exact when M1 M2 is a power of two; else one rounding (in kappa)
    kappa = 4.0 * gamma(per_slot + slots + 2.0 * (c1 + c2) + 500.0)
    return q, kappa * float(cols.abs().square().sum()) * (1.0 + 1e-6)


def deflated_bound(
    g: ConvGeometry,
    device: torch.device,
    theta: float = THETA,
    max_rank: int = MAX_RANK,
    crop: bool = True,
    tell: Callable[[str], None] | None = None,
    extra: int = 0,
) -> DeflatedBound:
    """The proven deflated torus bound on ||A||_2 (module docstring), max over groups, on the smallest
    admissible torus, or (`extra` = 2) min over the tori `torus.fft_bound` tries (`torus.cheap_plans`: the
    larger ones only on small layers), so that it is never above that bound (to the 1e-6 of its
    single-precision steer) even with few vectors deflated; `tell(step)` hears which step runs (progress
    displays)."""
    g2 = g.as_2d()
    found = [_deflated_on(g2, plans, device, theta, max_rank, crop, tell) for plans in cheap_plans(g2, extra)]
    return min(found, key=lambda db: db.value)


def _deflated_on(
    g2: ConvGeometry,
    plans: tuple[AxisPlan, AxisPlan],
    device: torch.device,
    theta: float,
    max_rank: int,
    crop: bool,
    tell: Callable[[str], None] | None,
) -> DeflatedBound:
    """`deflated_bound` on one torus."""
    say = tell or (lambda step: None)
    w = g2.weight.to(device=device, dtype=torch.float64)
    co = w.shape[0] // g2.groups
    best, rank = 0.0, 0
    for gi in range(g2.groups):
        part = f", group {gi + 1}/{g2.groups}" if g2.groups > 1 else ""
        say(f"frequency blocks{part}")
        fg = frequency_grams(w[gi * co : (gi + 1) * co], plans)
        say(f"eigenvectors of {fg.h.shape[0]} blocks{part}")
        top = _top_pairs(fg.h, theta, max_rank)
        say(f"Cholesky of {int((~top.cleared).sum())} deflated blocks{part}")
        y, mu = _deflate(fg, top)
        cols, freqs = _full_spectrum(fg, y, plans[0].M, plans[1].M)
        q, q_err = _window_gram(g2, plans, fg, cols, freqs)
        lam_q = max_eigenvalue(q[None], q_err)[0] if cols.shape[0] else 0.0
        if crop and crop_applies(
            g2, fg.left, cols.shape[0]
        ):  # the output crop kept too (speccert.norms.crop)
            say(f"output crop, {cols.shape[0]} vectors{part}")
            cropped = crop_bound(w[gi * co : (gi + 1) * co], g2, plans, cols, freqs, q, q_err)
            lam_q = lam_q if cropped is None else min(lam_q, cropped)
        best = max(best, round_up(math.sqrt(round_up(mu + lam_q)) * (1.0 + 4.0 * U)))
        rank = max(rank, cols.shape[0])
    return DeflatedBound(best, rank, (plans[0].N, plans[1].N))
