"""A proven upper bound on max_i ||B_i||_2 over a batch of matrices, certified by Cholesky factorisations.

||B||_2^2 = lambda_max(H) with H = B^H B (or B B^H, whichever is smaller: same non-zero spectrum). To prove
lambda_max(H) <= t it suffices that t I - H is positive semi-definite, and floating-point Cholesky is a
proof of that once its rounding error is accounted for:

- Forming H: |fl(H) - H| <= gamma(2m + 4) |B|^H |B| entrywise (m-term complex dot products, any
  summation order), so ||fl(H) - H||_2 <= gamma(2m + 4) ||B||_F^2.
- Shift: S = fl(t I - fl(H)) differs from t I - fl(H) only on the diagonal, by <= u |t - h_ii| <= u t
  when the factorisation succeeds (then every h_ii < t, and h_ii >= -e_H): lambda_min moves by
  <= u (t + e_H), e_H >= ||fl(H) - H||_2.
- Cholesky: if it runs to completion on S (every pivot positive, all entries finite), the
  computed factor R satisfies R^H R = S + D with |D| <= gamma(2n + 4) |R^H| |R| (Higham, *Accuracy and
  Stability*, Thm 10.3 and Demmel 1989; the analysis covers every ordering of the inner products, so
  blocked LAPACK/cuSOLVER factorisations too; the doubled n covers complex arithmetic). Then
  lambda_min(S) >= -||D||_2 >= -gamma ||R||_F^2, and the diagonal of the same relation gives
  ||R||_F^2 = tr(R^H R) <= tr(S) / (1 - gamma) <= n (t + e_H) / (1 - gamma) (H's diagonal is >= 0).

Hence ||B||_2^2 <= t + 2u (t + e_H) + gamma(2n + 4) n (t + e_H) / (1 - gamma(2n + 4)) + e_H (every term rounded
up), e_H = gamma(2m + 4) ||B||_F^2 when H is formed from B, or the bound of `max_eigenvalue`'s caller
(speccert.norms.torus builds H from the kernel's tap products). This needs t only slightly above the true
maximum (relative 1e-10 by default), so the bound is tight to ~1e-10 where Gram iteration needs many squarings to get within 1e-3 on large blocks:
the test is one Gram matrix and one Cholesky per block, and an eigenvalue solve only for the few
blocks that fail at the current t (those decide the maximum).
"""

from __future__ import annotations

import math

import numpy
import scipy.linalg.lapack
import torch

from speccert.norms.rounding import gamma, round_up

Tensor = torch.Tensor


def gram_matrices(b: Tensor) -> Tensor:
    """fl(B^H B) or fl(B B^H) per block, whichever is smaller (float64 or complex128)."""
    return b @ b.mH if b.shape[-2] < b.shape[-1] else b.mH @ b


def power_estimates(h: Tensor, iters: int = 8) -> Tensor:
    """Power-iteration estimates of lambda_max(h[i]) (steer t; not bounds), in single precision when the
    entries fit (half the memory traffic of these bandwidth-bound batched products: ~7% of the torus
    bound's time on ResNet-18; the estimates only pick which blocks get an eigenvalue solve first)."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    low = torch.complex64 if h.is_complex() else torch.float32
    # |h_ij| <= sqrt(h_ii h_jj) for the (near-)PSD matrices passed here: the diagonal says whether it fits
    if h.numel() and float(h.diagonal(dim1=-2, dim2=-1).abs().amax()) < 1e30:
        h = h.to(low)
    v = torch.randn(h.shape[0], h.shape[-1], 1, generator=gen, dtype=torch.float64).to(h.device, h.dtype)
    tiny = 1e-30 if h.dtype == low else 1e-300
    for _ in range(iters):
        v = h @ v
        v = v / torch.linalg.vector_norm(v, dim=(-2, -1), keepdim=True).clamp_min(tiny)
    est = torch.linalg.vector_norm(h @ v, dim=(-2, -1)).to(torch.float64)
    # ||h v|| <= lambda_max in exact arithmetic; keep a single-precision estimate below it too, so that it
    # never outbids a float64-accurate floor and costs max_eigenvalue an extra raise of t
    return est * (1.0 - (h.shape[-1] + 4) * 2.0**-23) if h.dtype == low else est


def passes(h: Tensor, t: float) -> Tensor:
    """Boolean per block: Cholesky of t I - h ran to completion with finite entries (with `bound_after_cholesky`
    a proof that lambda_max(h[i]) <= t for the blocks that pass; alone, a cheap screen: a block that passes
    has no eigenvalue above t, up to the factorisation's rounding)."""
    if per_block_lapack(h) and h.dtype in (torch.float64, torch.complex128) and h.numel():
        return _passes_lapack(h, t)
    s = -h
    s.diagonal(dim1=-2, dim2=-1).add_(t)  # t I - h, computed exactly as in the proof (one rounding each)
    r, info = torch.linalg.cholesky_ex(s)
    total = r.sum((-2, -1))  # a NaN or infinity anywhere in R makes its sum non-finite
    finite = torch.isfinite(torch.view_as_real(total) if total.is_complex() else total)
    return (info == 0) & (finite.all(-1) if total.is_complex() else finite)


def per_block_lapack(h: Tensor) -> bool:
    """Whether LAPACK called block by block through SciPy beats torch's batched call on these blocks: on
    the CPU with one thread only (OMP_NUM_THREADS=1). With more, SciPy's own OpenBLAS threads on each
    small call made the Cholesky passes 2-20x slower than the batched call (2 cores, loaded), so torch's
    batched path is kept there."""
    return h.device.type == "cpu" and torch.get_num_threads() == 1


def _passes_lapack(h: Tensor, t: float) -> Tensor:
    """`passes` on the CPU by LAPACK's potrf block by block (the same factorisation torch calls, on the
    lower triangle): each block negated and shifted in a cache-sized copy, no batched negation, zeroing of
    the upper triangle or output copies (2.5-3.5x faster on ResNet-18's torus blocks at one thread;
    `per_block_lapack` says when it is used). The upper
    triangle keeps t I - h's own (finite) entries, so the sum is finite iff R's entries are."""
    blocks = h.resolve_conj().numpy()
    (potrf,) = scipy.linalg.lapack.get_lapack_funcs(("potrf",), (blocks,))
    ok = numpy.zeros(blocks.shape[0], dtype=bool)
    for i in range(blocks.shape[0]):
        s = numpy.negative(blocks[i])
        s.flat[:: s.shape[0] + 1] += t  # t I - h: one rounding on the diagonal, as in the proof
        r, info = potrf(s, lower=1, clean=0, overwrite_a=1)
        ok[i] = info == 0 and bool(numpy.isfinite(r.sum()))
    return torch.from_numpy(ok)


def max_block_norm(b: Tensor, floor: float = 0.0, rel: float = 1e-10) -> tuple[float, int]:
    """(proven upper bound on max_i ||b[i]||_2, index of the block estimated largest).

    `floor` is a value already known to be below the final answer (e.g. a previous chunk's maximum):
    blocks certified below it need no eigenvalue solve.
    """
    value, top, _ = block_norms_with_gram(b, floor, rel)
    return value, top


def block_norms_with_gram(b: Tensor, floor: float = 0.0, rel: float = 1e-10) -> tuple[float, int, Tensor]:
    """`max_block_norm` plus the Gram matrices it certified (for callers that reuse them)."""
    m = b.shape[-1] if b.shape[-2] < b.shape[-1] else b.shape[-2]
    fro2 = float(torch.linalg.matrix_norm(b).max()) ** 2 * (
        1.0 + gamma(2.0 * b.shape[-1] * b.shape[-2] + 4.0)
    )
    h = gram_matrices(b)
    lam, top = max_eigenvalue(h, gamma(2.0 * m + 4.0) * fro2, floor * floor, rel)
    return round_up(math.sqrt(lam) * (1.0 + 4.0 * 2.0**-53)), top, h


def top_eigenvector(h: Tensor, t: float, steps: int = 3) -> Tensor:
    """A unit vector close to the top eigenvector of the Hermitian matrix h, given t > lambda_max(h) with
    t I - h positive definite (a t that `max_eigenvalue` certified): inverse iteration with that Cholesky
    factor, which converges at the rate (t - lambda_1) / (t - lambda_2), about 1e-8 per step there.
    A candidate for a lower bound only (speccert.norms.krylov.certify_lower checks it)."""
    s = -h
    s.diagonal().add_(t * (1.0 + 1e-9))  # keep it definite when t is exactly lambda_max (zero blocks)
    r, info = torch.linalg.cholesky_ex(s)
    gen = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(h.shape[-1], 1, generator=gen, dtype=torch.float64).to(h.device, h.dtype)
    if int(info) != 0:
        return x[:, 0] / torch.linalg.vector_norm(x)
    for _ in range(steps):
        x = torch.cholesky_solve(x, r)
        x = x / torch.linalg.vector_norm(x).clamp_min(1e-300)
    return x[:, 0]


def max_eigenvalue(
    h: Tensor, h_err: float, floor: float = 0.0, rel: float = 1e-10, steer: bool = True
) -> tuple[float, int]:
    """(proven upper bound on max_i lambda_max(H_i), index of the block estimated largest).

    `h` holds computed Gram matrices fl(H_i) (only their lower triangles are read by the factorisations
    and eigenvalue solves; the Hermitian completion is the matrix the proof is about) and `h_err` bounds
    ||fl(H_i) - H_i||_2 for every i. `floor` (an eigenvalue) is known to be below the answer.
    `steer=False`: the caller expects every block to pass at floor (1 + rel) (the deflated blocks of
    speccert.norms.deflation): no power-iteration estimates of every block first, only of those that fail
    (the index returned is then 0 unless one failed).
    """
    n = h.shape[-1]
    t = max(floor, 1e-300) * (1.0 + rel)  # t > 0: a zero block passes
    todo = torch.arange(h.shape[0], device=h.device)
    if steer:
        est = power_estimates(h)
        top = int(torch.argmax(est))
        pick = torch.topk(est, min(2, est.numel())).indices
        if floor > 0 and float(est.max()) <= floor:
            pick = pick[:0]  # likely every block passes below what is already known: try that first
    else:
        top, pick = 0, todo[:0]
    for attempt in range(60):
        if pick.numel():
            # An accurate solve of the (estimated) largest blocks still open lifts t above them.
            lam = torch.linalg.eigvalsh(h[pick])[..., -1]
            if float(lam.max()) * (1.0 + rel) > t:
                top = int(pick[torch.argmax(lam)])
            t = max(t * (1.0 + rel * 2.0**attempt), float(lam.max()) * (1.0 + rel))
        ok = passes(h if todo.numel() == h.shape[0] else h[todo], t)
        todo = todo[~ok]
        if todo.numel() == 0:
            break
        pick = todo if todo.numel() <= 2 else todo[torch.topk(power_estimates(h[todo], 30), 2).indices]
    else:
        raise RuntimeError("Cholesky certification did not converge (non-finite block?)")
    return bound_after_cholesky(t, n, h_err), top


def bound_after_cholesky(t: float, n: int, h_err: float) -> float:
    """The proven bound on lambda_max(H) once the Cholesky factorisation of fl(t I - fl(H)) (n x n, complex
    or real) ran to completion with finite entries, ||fl(H) - H||_2 <= h_err (the module docstring)."""
    g_chol = gamma(2.0 * n + 4.0)
    trace = n * (t + h_err)  # >= tr(t I - fl(H)): H's diagonal is >= 0 and fl(H)'s within h_err of it
    return round_up(t + 2.0 * 2.0**-53 * (t + h_err) + g_chol * trace / (1.0 - g_chol) + h_err)


def passes_in_place(h: Tensor, t: float) -> bool:
    """Cholesky of t I - h (real symmetric, one matrix) ran to completion with finite entries.

    Destroys h: the shift is written into it (same roundings as `passes`), so a 25088 x 25088 matrix
    needs 10 GB (h and the factor), not 15. (SciPy's in-place dpotrf crashed at that size.)
    """
    h.neg_()
    h.diagonal().add_(t)
    r, info = torch.linalg.cholesky_ex(h)
    if int(info) != 0:
        return False
    # chunked: a NaN or infinity anywhere in R makes a column block's sum non-finite
    return all(bool(torch.isfinite(r[:, i : i + 2048].sum()).item()) for i in range(0, r.shape[1], 2048))
