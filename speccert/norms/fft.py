"""`fft`: a proven upper bound for convolutions from the frequency blocks of a circular convolution.

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
block-diagonal over groups. Each ||B(w)|| is bounded by SVD + margin in float64, plus the error made
building B. Circular padding uses the layer's own torus Z_n (exact when s divides n and every output
position is distinct; a duplicated output row multiplies by sqrt(multiplicity)). Any admissible N gives
a bound; we take the min over a few. Only half of the spectrum is needed: B(-w) = conj(B(w)).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from speccert.norms.layer import ConvGeometry, LinearLayer
from speccert.norms.method import NormContext, NormMethod, register_method
from speccert.norms.result import NormResult, UpperBound
from speccert.norms.rounding import U, gamma, round_up

Tensor = torch.Tensor


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


def _axis_plans(n: int, pb: int, pe: int, k: int, d: int, s: int, out: int, circular: bool,
                extra: int) -> list[AxisPlan]:
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
    return [AxisPlan(n, (n_min + j * s) // s, s, tuple(o // s for o in offs), tuple(o % s for o in offs))
            for j in range(extra + 1)]


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


def _as_2d(g: ConvGeometry) -> ConvGeometry:
    if g.ndim == 2:
        return g
    return ConvGeometry(g.weight.unsqueeze(2), (1, g.size[0]), (1, g.stride[0]), ((0, 0), g.padding[0]),
                        (1, g.dilation[0]), g.groups, g.circular, g.adjoint)


@dataclass(frozen=True)
class TorusBound:
    """The bound on one torus and where it is attained (for warm-starting power iteration)."""

    value: float
    plans: tuple[AxisPlan, AxisPlan]
    group: int
    freq: tuple[int, int]
    blocks: int


def block_estimates(b: Tensor, iters: int = 12) -> Tensor:
    """Batched power-iteration estimates of ||b[i]||_2 (not bounds: they only steer the pruning)."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    v = torch.randn(b.shape[0], b.shape[-1], 1, generator=gen, dtype=torch.float64).to(b.device, b.dtype)
    for _ in range(iters):
        v = b.mH @ (b @ v)
        v = v / torch.linalg.vector_norm(v, dim=(-2, -1), keepdim=True).clamp_min(1e-300)
    return torch.linalg.vector_norm(b @ v, dim=(-2, -1))


def block_uppers(b: Tensor, target: float, rtol: float = 1e-6, max_steps: int = 16) -> Tensor:
    """Proven upper bounds on ||b[i]||_2, refined (Gram iteration) only where they exceed target*(1+rtol).

    Blocks whose current bound (Frobenius, then Gram steps) is already below the largest block's
    estimate cannot set the maximum, so they are not refined further: the max stays proven.
    """
    from speccert.norms.gram import GramChain

    bound = torch.linalg.matrix_norm(b) * (1.0 + gamma(b.shape[-1] * b.shape[-2] + 2.0))
    active = torch.nonzero(bound > target * (1.0 + rtol)).flatten()
    chain = GramChain(b[active])
    while active.numel() and chain.steps < max_steps:
        chain.step()
        if chain.steps in (2, 4, 6, 8, 10, 12, 14, 16):
            bound[active] = torch.minimum(bound[active], chain.bound())
            keep = torch.nonzero(bound[active] > target * (1.0 + rtol)).flatten()
            active, chain = active[keep], chain.subset(keep)
    return bound


def torus_bound(g: ConvGeometry, plans: tuple[AxisPlan, AxisPlan], device: torch.device,
                chunk_bytes: int = 1 << 26, block_bound: str = "pruned") -> TorusBound:
    """max over frequencies and groups of the proven upper bound on ||B(w)||_2.

    block_bound "pruned": Frobenius / Gram bounds refined only for blocks that could be the max;
    "gram": a fixed 12-step Gram iteration on every block (the plain batched Gram iteration).
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
    wc = wg.to(torch.complex128)
    per_x = p2.shape[0] * groups * rows * cols * 16
    step = max(1, chunk_bytes // max(per_x, 1))
    best, target, where = -1.0, 0.0, (0, 0, 0)
    nblocks = 0
    for x0 in range(0, p1.shape[0], step):
        x1 = min(p1.shape[0], x0 + step)
        # B[x, y, G, o, r1, r2, c]
        t = torch.einsum("gocab,xra->xgocrb", wc, p1[x0:x1])
        b = torch.einsum("xgocrb,ysb->xygorsc", t, p2).reshape(-1, rows, cols)
        if block_bound == "gram":
            from speccert.norms.gram import gram_upper

            up = gram_upper(b, 12)
        else:
            target = max(target, float(block_estimates(b).max()))
            up = block_uppers(b, target)
        i = int(torch.argmax(up))
        val = float(up[i])
        nblocks += b.shape[0]
        if val > best:
            x, rem = divmod(i, p2.shape[0] * groups)
            y, gi = divmod(rem, groups)
            best, where = val, (gi, x0 + x, y)
    mult = plans[0].multiplicity * plans[1].multiplicity
    value = round_up((best + build_err) * math.sqrt(mult) * (1 + 4 * U))
    return TorusBound(value, plans, where[0], (where[1], where[2]), nblocks)


def candidate_plans(g: ConvGeometry, extra: int = 2) -> list[tuple[AxisPlan, AxisPlan]]:
    g = _as_2d(g)
    per_axis = [
        _axis_plans(n, pb, pe, k, d, s, out, g.circular, extra)
        for n, (pb, pe), k, d, s, out in zip(g.size, g.padding, g.kernel, g.dilation, g.stride, g.out_size,
                                             strict=True)
    ]
    count = max(len(p) for p in per_axis)
    return [(per_axis[0][min(j, len(per_axis[0]) - 1)], per_axis[1][min(j, len(per_axis[1]) - 1)])
            for j in range(count)]


def fft_bound(g: ConvGeometry, device: torch.device, extra: int = 2,
              budget_blocks: int = 2_000_000, block_bound: str = "pruned") -> TorusBound:
    """The min over a few admissible tori of the torus bound (extra tori only while they are cheap)."""
    g2 = _as_2d(g)
    best: TorusBound | None = None
    spent = 0
    for plans in candidate_plans(g2, extra):
        co, ci = g2.weight.shape[0] // g2.groups, g2.weight.shape[1]
        size = plans[0].M * (plans[1].M // 2 + 1) * g2.groups * co * ci * plans[0].s * plans[1].s
        if best is not None and spent + size > budget_blocks:
            break
        spent += size
        tb = torus_bound(g2, plans, device, block_bound=block_bound)
        if best is None or tb.value < best.value:
            best = tb
    assert best is not None
    return best


def warm_vector(g: ConvGeometry, tb: TorusBound, layer: LinearLayer) -> Tensor:
    """The real part of the plane wave attaining the torus bound, restricted to the layer's input."""
    g2 = _as_2d(g)
    device = torch.device("cpu")
    w = g2.weight.to(torch.float64).to(device)
    groups, co, ci = g2.groups, g2.weight.shape[0] // g2.groups, g2.weight.shape[1]
    p1 = _phases(tb.plans[0], False, device).to(torch.complex128)[tb.freq[0]]
    p2 = _phases(tb.plans[1], True, device).to(torch.complex128)[tb.freq[1]]
    wg = w.reshape(groups, co, ci, *w.shape[2:])[tb.group].to(torch.complex128)
    b = torch.einsum("ocab,ra,sb->orsc", wg, p1, p2).reshape(co, -1)
    u, _, vh = torch.linalg.svd(b, full_matrices=False)
    (a1, a2) = tb.plans
    if g2.adjoint:
        vec = u[:, 0]  # the transposed layer's top input direction lives in the conv's output space
        sizes = g2.out_size
        m = [torch.arange(sizes[0]), torch.arange(sizes[1])]
        wave = torch.exp(2j * math.pi * (tb.freq[0] * m[0][:, None] / a1.M + tb.freq[1] * m[1][None, :] / a2.M))
        full = torch.zeros((groups * co, *sizes), dtype=torch.complex128)
        full[tb.group * co:(tb.group + 1) * co] = vec[:, None, None] * wave[None]
    else:
        v = vh[0].conj().reshape(a1.s, a2.s, ci)
        i1, i2 = torch.arange(g2.size[0]), torch.arange(g2.size[1])
        m1, r1 = i1 // a1.s, i1 % a1.s
        m2, r2 = i2 // a2.s, i2 % a2.s
        wave = torch.exp(2j * math.pi * (tb.freq[0] * m1[:, None] / a1.M + tb.freq[1] * m2[None, :] / a2.M))
        amp = v[r1[:, None], r2[None, :], :]  # [n1, n2, ci]
        full = torch.zeros((groups * ci, *g2.size), dtype=torch.complex128)
        full[tb.group * ci:(tb.group + 1) * ci] = (amp * wave[..., None]).permute(2, 0, 1)
    x = full.real
    if float(torch.linalg.norm(x)) < 1e-8 * float(torch.linalg.norm(full.imag)):
        x = full.imag
    channels = layer.in_shape[0]
    if x.shape[0] != channels:  # AvgPool geometry is one channel standing for all
        x = x.expand(channels, *x.shape[1:])
    return x.reshape(layer.in_shape).clone()


# The last torus bound per layer, so auto can warm-start power iteration without recomputing it.
LAST_BOUND: dict[LinearLayer, TorusBound] = {}


@register_method
class FFTMethod(NormMethod):
    name = "fft"
    kinds = ("upper",)
    summary = "zero-padded conv as a compression of a circular conv; max of frequency-block norms"

    def applies(self, layer: LinearLayer) -> bool:
        g = layer.conv()
        return g is not None and g.ndim in (1, 2) and all(p >= 0 for pp in g.padding for p in pp)

    def memory_bytes(self, layer: LinearLayer, ctx: NormContext) -> int:
        g = layer.conv()
        if g is None:
            return 0
        plans = candidate_plans(g, 0)[0]
        g2 = _as_2d(g)
        co, ci = g2.weight.shape[0] // g2.groups, g2.weight.shape[1]
        one_row = (plans[1].M // 2 + 1) * g2.groups * co * ci * plans[0].s * plans[1].s * 16
        return 4 * one_row  # one first-axis frequency at a time, times SVD workspace

    def compute(self, layer: LinearLayer, ctx: NormContext) -> list[NormResult]:
        t0 = time.perf_counter()
        g = layer.conv()
        assert g is not None
        tb = fft_bound(g, ctx.device)
        LAST_BOUND.clear()
        LAST_BOUND[layer] = tb
        torus = "x".join(str(p.N) for p in tb.plans[2 - g.ndim:])
        return [UpperBound(tb.value, self.name, iterations=tb.blocks, seconds=time.perf_counter() - t0,
                           note=f"torus {torus}")]
