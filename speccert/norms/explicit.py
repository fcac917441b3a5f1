"""The explicit matrix of a layer, and its SVD in float64 plus a floating-point margin.

A is built by applying the layer's linear part to the identity basis in float64 (for a Linear layer the
weight is A). Then ||A||_2 <= sigma_computed + svd_error(m, n) ||A||_F (Weyl + backward stability, see
speccert.norms.rounding), and ||A v|| / ||v|| for the computed top right singular vector v is a proven
lower bound once recomputed with its own error term. Exact up to ~1e-12; only for small layers (the
`dense` method). `exact` builds the same matrix and certifies its Gram matrix instead (speccert.norms.psd).
"""

from __future__ import annotations

import torch

from speccert.norms.layer import LinearLayer
from speccert.norms.rounding import gamma, lower_from_product, upper_from_svd

Tensor = torch.Tensor


def explicit_matrix(layer: LinearLayer, device: torch.device | str = "cpu", chunk: int = 1024) -> Tensor:
    """A as an n_out x n_in float64 matrix (column j = A e_j)."""
    w = layer.matrix()
    if w is not None:
        return w.to(device=device, dtype=torch.float64)
    cols = []
    n = layer.n_in
    with torch.no_grad():
        for start in range(0, n, chunk):
            stop = min(n, start + chunk)
            basis = torch.zeros((stop - start, n), dtype=torch.float64, device=device)
            basis[torch.arange(stop - start), torch.arange(start, stop)] = 1.0
            y = layer.apply(basis.reshape(stop - start, *layer.in_shape))
            cols.append(y.reshape(stop - start, -1))
    return torch.cat(cols).T.contiguous()


def dense_bracket(a: Tensor, fan_in: int | None = None) -> tuple[float, float]:
    """(lower, upper) proven bounds on ||a||_2 for an explicit float64 matrix `a` (m x n)."""
    m, n = a.shape
    if a.numel() == 0:
        return 0.0, 0.0
    _, s, vh = torch.linalg.svd(a, full_matrices=False)
    sigma = float(s[0])
    fro = float(torch.linalg.norm(a))
    # Entries of A built by applying the op to a basis carry at most gamma(fan_in) relative error
    # (each is one sum of <= fan_in products); bound its effect by that share of ||A||_F.
    build = gamma((fan_in or n) + 2.0) * fro * (1.0 + gamma(m * n + 2.0))
    upper = upper_from_svd(sigma, fro, m, n, extra=build)
    v = vh[0]
    av = a @ v
    abs_av = a.abs() @ v.abs()
    lower = lower_from_product(
        float(torch.linalg.norm(av)),
        float(torch.linalg.norm(abs_av)),
        float(torch.linalg.norm(v)),
        n,
        max(m, n),
    )
    return lower, upper
