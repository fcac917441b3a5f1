"""Where the deflated torus bound loses on small maps: the window alone vs the window plus the output crop.

A measurement, not a certificate (dense float64 eigenvalue solves of explicit matrices): it says which
bound is worth making rigorous and cheap for ResNet-18's layer4 (3x3 convs, padding 1, 7x7 maps).

    OMP_NUM_THREADS=1 python benchmarks/norms_crop_deflation.py --channels 32,64

Setting (speccert/norms/deflation.py's notation). A = S C E: E embeds the n x n window into the torus
Z_N (N = n + 1), C is the circular conv, S keeps the true outputs. With K = C^T C (block-diagonal in
frequency: eigenvalues = those of every block G(w)) and the crop's Gram D = E^T C^T (I - S^T S) C E >= 0,

    H = A^T A = E^T K E - D.

Deflation at a threshold tau replaces K by K_tau = K + U (max(L, tau) - L) U^T (K = U L U^T: every
eigenvalue below tau raised to tau, which per block is what a Cholesky certificate of G(w) - Y Y^H <= tau
proves). Both bounds below are >= lambda_max(H), both are exact when tau <= lambda_min(K):

- window (speccert's `deflated` method):  lambda_max(E^T K_tau E)      (tends to the uncropped conv's norm)
- window + crop:                          lambda_max(E^T K_tau E - D)  (tends to ||A||^2)

Printed: sqrt(bound / ||A||^2) for each threshold (a fraction of lambda_max(K)) and k, the number of
eigenvalues of K above tau (the deflated vectors the k x k certificate would need).
"""

from __future__ import annotations

import argparse
import math

import torch
import torch.nn.functional as F

THRESHOLDS = (0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.3)


def _explicit(apply: object, dim: int) -> torch.Tensor:
    """The matrix of a linear map on R^dim (columns = images of the basis vectors)."""
    assert callable(apply)
    return apply(torch.eye(dim, dtype=torch.float64)).T


def measure(c: int, n: int = 7, seed: int = 0) -> list[tuple[float, int, float, float]]:
    """(threshold, k, window ratio, window + crop ratio) for a random c -> c 3x3 conv on an n x n map."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(c, c, 3, 3, generator=gen, dtype=torch.float64) * math.sqrt(2.0 / (9 * c))
    big = n + 1

    def zero_padded(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x.view(-1, c, n, n), w, padding=1).flatten(1)

    def circular(x: torch.Tensor) -> torch.Tensor:
        xp = F.pad(x.view(-1, c, big, big), (1, 1, 1, 1), mode="circular")
        return F.conv2d(xp, w).flatten(1)

    a = _explicit(zero_padded, c * n * n)
    h = a.T @ a
    truth = float(torch.linalg.eigvalsh(h)[-1])
    cmat = _explicit(circular, c * big * big)
    k = cmat.T @ cmat
    keep = torch.arange(c * big * big).view(c, big, big)[:, :n, :n].reshape(-1)
    emb = torch.zeros(c * big * big, c * n * n, dtype=torch.float64)
    emb[keep, torch.arange(c * n * n)] = 1.0
    assert torch.allclose(cmat[keep] @ emb, a)  # A = S C E
    lam, vec = torch.linalg.eigh(k)
    rows = []
    for theta in THRESHOLDS:
        tau = theta * float(lam[-1])
        raise_k = vec @ torch.diag(torch.clamp(tau - lam, min=0.0)) @ vec.T  # K_tau - K
        window = float(torch.linalg.eigvalsh(emb.T @ (k + raise_k) @ emb)[-1])
        cropped = float(torch.linalg.eigvalsh(h + emb.T @ raise_k @ emb)[-1])
        rows.append((theta, int((lam > tau).sum()), math.sqrt(window / truth), math.sqrt(cropped / truth)))
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--channels", default="32", help="comma-separated channel counts (c -> c convs)")
    ap.add_argument("--size", type=int, default=7, help="feature map side")
    args = ap.parse_args()
    print("| channels | tau / lambda_max(K) | k | window (`deflated`) | window + crop |")
    print("|---|---|---|---|---|")
    for c in (int(x) for x in args.channels.split(",")):
        for theta, k, win, crop in measure(c, args.size):
            print(f"| {c} | {theta:g} | {k} | {win:.5f} | {crop:.5f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
