"""The output crop in the deflated torus bound: a proven bound on lambda_max(L^H L - N^H N).

speccert.norms.deflation proves, for the input window x (stride 1, one group),
    x^T E^T K E x <= mu ||x||^2 + ||L x||^2,    (L x)_j = (M1 M2)^-1/2 y_j^H z(w_j),
so L^H e_j = (M1 M2)^-1/2 y_j (x) exp(+2 pi i w_j.m / M) on the window. The zero-padded conv keeps only
the torus outputs [0, out): with R the rows of C E at the other ("cropped") torus positions,
H = A^T A = E^T K E - R^T R exactly. For any matrix T (r columns) and Hermitian M >= T^H T (M > 0),
T M^-1 T^H <= I, so ||R x||^2 >= ||M^-1/2 T^H R x||^2 and

    x^T H x <= mu ||x||^2 + ||L x||^2 - ||N x||^2,   N = M^-1/2 T^H R,

hence ||A||^2 <= mu + s once s I + N^H N - L^H L >= 0. With s > 0 that is (Woodbury)
s I - L L^H + (N L^H)^H (s I + N N^H)^-1 (N L^H) >= 0, and with Gamma = R L^H (k columns),
N L^H = M^-1/2 B, N N^H = M^-1/2 D M^-1/2 for B = T^H Gamma, D = (R^H T)^H (R^H T):

    s I - L L^H + B^H (s M + D)^-1 B >= 0.

For any Z, B^H P^-1 B >= B^H Z + Z^H B - Z^H P Z (P = s M + D > 0; a completed square), so one Cholesky
factorisation of M_s = s I - L L^H + B^H Z + Z^H B - Z^H P Z proves it; Z ~ P^-1 B from any solver
(its error never matters, only the products' rounding). T is fl(Gamma) itself (an exactly known
matrix) with M = fl(T^H T) + delta I, delta bounding that product's rounding: T M^-1 T^H is then the
projection onto Gamma's columns to ~1e-12, so N keeps the crop energy of the deflated directions, and
B = T^H Gamma is fl(T^H T) up to T's own error (no orthonormal basis, no QR); when Gamma has no more
rows than k, T = I (the whole ||R x||^2, M = I, B = Gamma). Gamma is assembled from the tap products
W_a y_j:
    Gamma[(o, p), j] = (M1 M2)^-1/2 sum_a [t_a(p) in window] exp(2 pi i w_j.t_a(p) / M) (W_a y_j)[o],
t_a(p) = p + off_a mod N, and R^H T by the adjoint taps, only on the window positions the cropped rows
read. Every rounding is bounded in `crop_bound`.
"""

from __future__ import annotations

import math

import torch

from speccert.norms.layer import ConvGeometry
from speccert.norms.rounding import U, gamma, round_up
from speccert.norms.torus import AxisPlan, candidate_plans

Tensor = torch.Tensor


MAX_BYTES = 1 << 29  # R^H T on the window (window size x k) stays below this
ESTIMATE_32 = 1024  # the 2k x 2k estimate of s in single precision above this size
MAX_WINDOW = 1 << 17  # and the window (c_in x positions) below this: ResNet-18's layer2-4, not layer1


def applies(g2: ConvGeometry, left: bool, k: int) -> bool:
    """Stride 1 on both axes, the input-side Gram matrices (one polyphase slot), a window of at most
    MAX_WINDOW entries and k deflated vectors few enough that R^H T (on the window entries the cropped
    rows read) and Gamma fit in MAX_BYTES each."""
    window = g2.size[0] * g2.size[1] * g2.weight.shape[1]
    if not left or any(s != 1 for s in g2.stride) or g2.circular or window > MAX_WINDOW:
        return False
    plans = candidate_plans(g2, 0)[0]
    pos = _crop_positions(g2, plans, torch.device("cpu"))
    read = _support(g2, plans, pos).shape[0] * g2.weight.shape[1]
    co = g2.weight.shape[0] // g2.groups
    return max(read, pos.shape[0] * co) * k * 16 <= MAX_BYTES


def memory_bytes(g2: ConvGeometry, max_rank: int) -> int:
    """Peak extra memory of `crop_bound` with up to max_rank deflated vectors: R^H T, and Gamma (= T),
    fl(Gamma)^H fl(Gamma) and one tap's products (crop positions x c_out x k complex each)."""
    window = g2.size[0] * g2.size[1] * g2.weight.shape[1]
    if g2.circular or any(s != 1 for s in g2.stride) or window > MAX_WINDOW:
        return 0
    plans = candidate_plans(g2, 0)[0]
    pos = plans[0].N * plans[1].N - g2.out_size[0] * g2.out_size[1]
    co = g2.weight.shape[0] // g2.groups
    return min(window * max_rank * 16, MAX_BYTES) + 3 * pos * co * max_rank * 16


def _taps(g2: ConvGeometry, plans: tuple[AxisPlan, AxisPlan]) -> list[tuple[int, int, int, int]]:
    """(a1, a2, off1, off2) per tap: output torus position p reads input p + off (mod N)."""
    k1, k2 = g2.kernel
    return [
        (a1, a2, a1 * g2.dilation[0] - g2.padding[0][0], a2 * g2.dilation[1] - g2.padding[1][0])
        for a1 in range(k1)
        for a2 in range(k2)
    ]


def _crop_positions(g2: ConvGeometry, plans: tuple[AxisPlan, AxisPlan], dev: torch.device) -> Tensor:
    n1, n2 = plans[0].N, plans[1].N
    o1, o2 = g2.out_size
    p1 = torch.arange(n1, device=dev).repeat_interleave(n2)
    p2 = torch.arange(n2, device=dev).repeat(n1)
    keep = (p1 >= o1) | (p2 >= o2)
    return torch.stack([p1[keep], p2[keep]], 1)


def _reads(
    g2: ConvGeometry, plans: tuple[AxisPlan, AxisPlan], pos: Tensor
) -> list[tuple[int, Tensor, Tensor, Tensor]]:
    """Per tap that reads the window from some cropped row: (tap index, which crop positions do
    [#pos] bool, their input torus position (t1, t2) [#ok, 2], its flat window index t1 n2 + t2)."""
    out = []
    for ai, (_, _, f1, f2) in enumerate(_taps(g2, plans)):
        t1 = torch.remainder(pos[:, 0] + f1, plans[0].N)
        t2 = torch.remainder(pos[:, 1] + f2, plans[1].N)
        ok = (t1 < g2.size[0]) & (t2 < g2.size[1])
        if bool(ok.any()):
            out.append((ai, ok, torch.stack([t1[ok], t2[ok]], 1), t1[ok] * g2.size[1] + t2[ok]))
    return out


def _support(g2: ConvGeometry, plans: tuple[AxisPlan, AxisPlan], pos: Tensor) -> Tensor:
    """The window positions some cropped row reads (R^H T vanishes elsewhere), sorted."""
    reads = _reads(g2, plans, pos)
    if not reads:
        return torch.zeros(0, dtype=torch.int64, device=pos.device)
    found: Tensor = torch.unique(torch.cat([flat for _, _, _, flat in reads]))
    return found


def _fro(x: Tensor) -> float:
    """||x||_F rounded up (its own float64 error included); a complex x as its real and imaginary parts
    (the same sum of squares; ~10x faster than the complex reduction)."""
    parts = torch.view_as_real(x.resolve_conj()) if x.is_complex() else x
    return float(torch.linalg.vector_norm(parts)) * (1.0 + gamma(parts.numel() + 4.0))


def hermitian_gram(x: Tensor, blocks: int = 8) -> Tensor:
    """fl(x^H x) computed on the lower block triangle and mirrored: exactly Hermitian, each entry the same
    length-m inner product as in x^H x or its conjugate, the diagonal's real part (the true one is real),
    so the same rounding bound; ~(blocks + 1) / (2 blocks) of the work."""
    n = x.shape[1]
    edges = [n * i // blocks for i in range(blocks + 1)]
    out = torch.empty((n, n), dtype=x.dtype, device=x.device)
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        if hi > lo:
            col = x[:, lo:].mH @ x[:, lo:hi]  # rows lo.. of block column lo:hi
            low = col[: hi - lo].tril(-1)  # the diagonal block from its lower triangle and real diagonal
            col[: hi - lo] = low + low.mH + torch.diag_embed(col[: hi - lo].diagonal().real.to(x.dtype))
            out[lo:, lo:hi] = col
            out[lo:hi, hi:] = col[hi - lo :].mH
    return out


def _real_times(w: Tensor, z: Tensor) -> Tensor:
    """w @ z for a real w [m, n] and a complex z [n, p], as one real product with the real and
    imaginary parts side by side (each entry: the same sums as the complex product, real roundings)."""
    zr = torch.view_as_real(z.resolve_conj()).reshape(z.shape[0], -1)  # [n, 2p]: (re, im) interleaved
    return torch.view_as_complex((w @ zr).reshape(w.shape[0], -1, 2))


def crop_bound(
    w: Tensor,
    g2: ConvGeometry,
    plans: tuple[AxisPlan, AxisPlan],
    cols: Tensor,
    freqs: Tensor,
    q: Tensor,
    q_err: float,
) -> float | None:
    """A proven bound on lambda_max(L^H L - N^H N) (module docstring), or None when none was proven.

    w [c_out, c_in, k1, k2] float64 (one group), cols [k, c_in] the deflated vectors y_j at frequencies
    freqs [k, 2] (full spectrum), q = fl(L L^H) with ||q - L L^H||_2 <= q_err.
    """
    dev = w.device
    k = cols.shape[0]
    co, ci = w.shape[0], w.shape[1]
    m1, m2 = plans[0].M, plans[1].M
    pos = _crop_positions(g2, plans, dev)
    if k == 0 or pos.shape[0] == 0 or pos.shape[0] * co * k * 16 > MAX_BYTES:
        return None
    taps = _taps(g2, plans)
    reads = _reads(g2, plans, pos)
    scale = 1.0 / math.sqrt(m1 * m2)
    wt = torch.stack([w[:, :, a1, a2] for a1, a2, _, _ in taps])  # [taps, co, ci]
    # W_a y_j for every tap at once: [taps, co, k] (real weights times complex vectors, real products)
    u = _real_times(wt.reshape(-1, ci), cols.T).reshape(len(taps), co, k)
    # Gamma[p, o, j] = sum_a phase[a, p, j] (W_a y_j)[o] with the phases exp(2 pi i (w1 t1 M2 + w2 t2 M1)
    # / (M1 M2)) (the integer reduced exactly; exact zeros where tap a reads outside the window), summed
    # over the taps by one batched product (any summation order: the bound below covers it)
    phase = torch.zeros((len(reads), pos.shape[0], k), dtype=torch.complex128, device=dev)
    for i, (_, ok, t, _) in enumerate(reads):
        r = torch.remainder(
            freqs[None, :, 0] * t[:, 0, None] * m2 + freqs[None, :, 1] * t[:, 1, None] * m1, m1 * m2
        )
        ang = (2.0 * math.pi / (m1 * m2)) * r.to(torch.float64)
        phase[i, ok] = torch.polar(torch.full_like(ang, scale), ang)  # [p_ok, k]
    # contiguous: the batched product leaves it [j, p, o] in memory, and V below reads [o, j] slices of it
    gam = torch.einsum("apj,aoj->poj", phase, u[[ai for ai, _, _, _ in reads]]).contiguous()
    # |fl(Gamma) - Gamma| <= kappa scale sum_a |W_a| |y_j| entrywise (dot products of length ci, phases
    # within ~60 u, the sum over taps); in Frobenius norm <= kappa scale sqrt(#pos) sum_a ||W_a||_F ||Y||_F.
    kappa = 4.0 * gamma(2.0 * ci + len(taps) + 200.0)
    w_sum = sum(_fro(wt[i]) for i in range(len(taps)))
    e_gam = kappa * scale * math.sqrt(pos.shape[0]) * w_sum * _fro(cols)
    gmat = gam.reshape(-1, k)  # fl(Gamma), within e_gam of Gamma = R L^H
    rows = gmat.shape[0]
    if rows <= k:  # Gamma~ = I: the whole ||R x||^2 is kept (M = I exactly, B = Gamma)
        basis = torch.eye(rows, dtype=torch.complex128, device=dev)
        g_t, e_g, delta, b, e_b = basis, 0.0, 0.0, gmat, e_gam
        f_basis = _fro(basis)
    else:  # Gamma~ = fl(Gamma), an exactly known matrix: B = Gamma~^H Gamma within e_b of G~
        basis = gmat
        f_basis = fg = _fro(gmat)
        g_t = hermitian_gram(gmat)  # G~ = fl(Gamma~^H Gamma~)
        e_g = gamma(2.0 * rows + 4.0) * fg**2  # >= ||G~ - Gamma~^H Gamma~||_2
        # M = herm(G~) + delta I >= Gamma~^H Gamma~ (delta >= e_g); the 1e-12 relative jitter keeps M
        # definite where Gamma~ has no rank, and costs penalty only in directions of singular value < 1e-6
        jitter = 1e-12 * max(float(g_t.diagonal().real.max()), 0.0)
        delta = round_up((2.0 * e_g + jitter) * (1.0 + 4.0 * U))
        b, e_b = g_t, e_g + fg * e_gam
    nb = basis.shape[1]
    # V = R^H Gamma~ on the window entries the cropped rows read (zero elsewhere):
    # V[x, c, j] = sum_a sum_o W_a[o, c] Gamma~[(o, p), j] for x = p + off_a
    support = _support(g2, plans, pos)
    where = torch.full((g2.size[0] * g2.size[1],), -1, dtype=torch.int64, device=dev)
    where[support] = torch.arange(support.shape[0], device=dev)
    gp = basis.reshape(pos.shape[0], co, nb)
    v = torch.zeros((support.shape[0], ci, nb), dtype=torch.complex128, device=dev)
    for ai, ok, _, flat in reads:  # one product per (tap, crop position): contiguous slices, no gathers
        for p, x in zip(torch.nonzero(ok)[:, 0].tolist(), where[flat].tolist(), strict=True):
            v[x] += _real_times(wt[ai].T, gp[p])
    e_v = gamma(2.0 * len(taps) * co + 4.0) * w_sum * f_basis
    vm = v.reshape(-1, nb)
    d = hermitian_gram(vm)
    fv = _fro(vm)
    e_d = gamma(2.0 * vm.shape[0] + 4.0) * fv**2 + 2.0 * fv * e_v + e_v**2
    f_g, f_d = _fro(g_t), _fro(d)

    def p_of(s: float) -> tuple[Tensor, float]:
        """(fl(P), bound on ||fl(P) - P||_2) for P = s M + D (exact D, M as above): the non-Hermitian
        part of s G~ (<= s e_g), D's error, and the scaling's, the sum's and the diagonal's rounding."""
        p = g_t * s + d
        p.diagonal().add_(s * delta)
        return p, s * e_g + e_d + 4.0 * U * (s * f_g + f_d + s * delta)

    # s estimated from J G's spectrum, G = [[q, B'^H], [B', D']] with M ~ F_M F_M^H, B' = F_M^-1 G~,
    # D' = F_M^-1 D F_M^-H (s I + D' = F_M^-1 P F_M^-H), as that of the Hermitian F^H J F for G ~ F F^H
    # (jitter: G may be singular; an estimate only, never a bound)
    m_est = (g_t + g_t.mH) / 2
    m_est.diagonal().add_(delta)
    f_m, info_m = torch.linalg.cholesky_ex(m_est)
    if int(info_m) != 0:
        return None
    bb = torch.linalg.solve_triangular(f_m, b, upper=False)
    cc = torch.linalg.solve_triangular(
        f_m, torch.linalg.solve_triangular(f_m, d, upper=False).mH, upper=False
    )
    gm = torch.cat([torch.cat([q, bb.mH], 1), torch.cat([bb, cc], 1)], 0)
    top = max(float(q.diagonal().real.max()), 1e-300)
    gm.diagonal().add_(1e-9 * top)
    f, info = torch.linalg.cholesky_ex(gm)
    if int(info) == 0:  # F^H J F = F1^H F1 - F2^H F2, F1 = F[:k] = [F11, 0] (F lower triangular)
        fjf = -hermitian_gram(f[k:])
        fjf[:k, :k] += f[:k, :k].mH @ f[:k, :k]
        est = _top_eigenvalue(fjf)
    else:
        jg = gm.clone()
        jg[k:] = -jg[k:]
        est = float(torch.linalg.eigvals(jg).real.max())
    for rel in (1e-6, 1e-4, 1e-2):
        s = max(est, 0.0) + rel * top
        if _certified(s, q, q_err, b, e_b, *p_of(s)):
            return round_up(s)
    return None


def _top_eigenvalue(h: Tensor) -> float:
    """An estimate of lambda_max of the Hermitian h (never a bound: it only steers s); above ESTIMATE_32
    rows in single precision (~2x faster: the tridiagonal reduction is all of it), within ~1e-7 ||h||
    (on ResNet-18's layer4: s's estimate moved by <= 4e-6, the certified bound by <= 3e-7)."""
    if h.shape[0] <= ESTIMATE_32:
        return float(torch.linalg.eigvalsh(h)[-1])
    return float(torch.linalg.eigvalsh(h.to(torch.complex64 if h.is_complex() else torch.float32))[-1])


def _certified(s: float, q: Tensor, q_err: float, b0: Tensor, e_b: float, p: Tensor, e_p: float) -> bool:
    """Whether one Cholesky factorisation proves M_s >= 0 (module docstring), every rounding bounded:
    q = fl(L L^H) and b0 ~ B within q_err and e_b, p ~ P = s M + D (Hermitian, > 0) within e_p."""
    k = q.shape[0]
    z, info = torch.linalg.solve_ex(p, b0)
    if int(info) != 0 or not bool(torch.isfinite(z).all()):  # P numerically singular: no proof at this s
        return False
    bz = b0.mH @ z
    pz = p @ z
    zpz = z.mH @ pz
    m = -q + bz + bz.mH - zpz
    m.diagonal().add_(s)
    fz, fb, fp = _fro(z), _fro(b0), _fro(p)
    g = gamma(2.0 * k + 4.0)
    # exact-data error (q, B, P) plus the products' and the sums' rounding
    err = q_err + 2.0 * e_b * fz + e_p * fz**2
    err += 2.0 * g * fb * fz + g * fp * fz**2 + g * fz * _fro(pz)
    err += 6.0 * U * (s + _fro(q) + 2.0 * _fro(bz) + _fro(zpz))
    # R^H R = S + D, |D| <= gamma(2k+4) |R^H| |R|: lambda_min(S) >= -g ||R||_F^2, ||R||_F^2 <= tr(S) / (1 - g)
    diag = m.diagonal().real
    trace = float(diag.clamp_min(0.0).sum()) * (1.0 + gamma(k + 4.0))  # >= tr(S) for any shift sigma >= 0
    chol = g * trace / (1.0 - g) + 2.0 * U * (float(diag.abs().max()) + err) * 4.0
    sigma = round_up(1.25 * (err + chol))  # the shift: what the products and the factorisation may cost
    m.diagonal().sub_(sigma)
    r, info = torch.linalg.cholesky_ex(m)
    if int(info) != 0 or not bool(torch.isfinite(torch.view_as_real(r)).all()):
        return False
    # lambda_min(M_s) >= sigma - (shift's rounding: <= 2u(|m_ii| + sigma)) - g tr(S)/(1-g) - err
    shift = 2.0 * U * (float(diag.abs().max()) + 2.0 * sigma)
    return sigma - err - g * trace / (1.0 - g) - shift > 0.0
