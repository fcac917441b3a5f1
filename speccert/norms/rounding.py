"""Floating-point error bounds used to turn float64 computations into proven bounds.

Notation (Higham, *Accuracy and Stability of Numerical Algorithms*): u = 2^-53 is the unit roundoff of
float64, gamma(n) = n u / (1 - n u) bounds the relative error of an n-term dot product in any summation
order (BLAS blocking and FMA included). Every helper here errs on the generous side: a margin a few
orders of magnitude too large costs ~1e-9 relative tightness, a margin too small breaks soundness.
"""

from __future__ import annotations

import math

import torch

from speccert.norms.result import round_down, round_up

U = 2.0**-53


def gamma(n: float) -> float:
    """gamma(n) = n u / (1 - n u), the classical bound on the relative error of n-term sums."""
    nu = n * U
    if nu >= 0.5:
        raise ValueError(f"gamma({n}) undefined: problem too large for float64 error analysis")
    return nu / (1.0 - nu)


def svd_error(m: int, n: int) -> float:
    """Relative (to ||A||_F) backward error of a float64 SVD of an m x n (complex) matrix.

    LAPACK's SVD (Householder bidiagonalisation, then QR / divide-and-conquer) is backward stable: the
    computed singular values are the exact ones of A + E with ||E||_2 <= p(m, n) u ||A||_2, p a modest
    low-degree polynomial (Demmel & Kahan 1990; Higham ch. 19 gives column-wise gamma(c m n) for the
    Householder part). We take p = 16 m n + 64 (quadratic: generous) and measure against ||A||_F >= ||A||_2.
    By Weyl's inequality sigma_max(A) <= sigma_computed + ||E||_2.
    """
    return gamma(16.0 * m * n + 64.0)


def upper_from_svd(sigma: float, fro: float, m: int, n: int, extra: float = 0.0) -> float:
    """A proven bound ||A||_2 <= sigma_computed + svd_error * ||A||_F (+ extra, e.g. construction error).

    `fro` is the computed Frobenius norm; it is itself inflated by gamma(m n + 2) before use.
    """
    fro_up = fro * (1.0 + gamma(m * n + 2.0))
    return round_up(sigma + svd_error(m, n) * fro_up + extra)


def lower_from_product(ax_norm: float, abs_ax_norm: float, x_norm: float, fan_in: int, n: int) -> float:
    """A proven lower bound ||A||_2 >= ||A x|| / ||x|| from float64 values.

    `ax_norm` = ||fl(A x)||, `abs_ax_norm` = || |A| |x| || (computed), `x_norm` = ||fl(x)||. The computed
    product has ||fl(Ax) - Ax|| <= gamma(fan_in) || |A||x| || entrywise-summed; norms are inflated or
    deflated by gamma(n + 2) for their own rounding.
    """
    if x_norm <= 0 or not math.isfinite(ax_norm):
        return 0.0
    g = gamma(fan_in + 2.0)
    num = ax_norm * (1.0 - gamma(n + 2.0)) - g * abs_ax_norm * (1.0 + gamma(n + 2.0))
    den = x_norm * (1.0 + gamma(n + 2.0))
    return max(0.0, round_down(num / den))


def top_right_vector(a: torch.Tensor) -> torch.Tensor:
    """Top right singular vector of a (batched) matrix, by SVD (an estimate: its use is checked later)."""
    _, _, vh = torch.linalg.svd(a, full_matrices=False)
    return vh[..., 0, :].conj()


__all__ = [
    "U",
    "gamma",
    "lower_from_product",
    "round_down",
    "round_up",
    "svd_error",
    "top_right_vector",
    "upper_from_svd",
]
