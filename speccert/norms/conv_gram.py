"""The explicit Gram matrix of a zero-padded convolution, assembled from the kernel's tap products.

For y[o] = sum_a W_a x[s o + d a - p] (W_a the c_out x c_in matrix of tap a, reads outside the input
are zeros), A^T A has the c_in x c_in block
    (A^T A)[P, P'] = sum over outputs o and taps a, b with s o + d a - p = P, s o + d b - p = P' of W_a^T W_b
and A A^T the c_out x c_out block
    (A A^T)[o, o'] = sum over taps a, b with s o + d a - p = s o' + d b - p (a valid input) of W_a W_b^T.
So the Gram matrix on the smaller side costs taps^2 small matrix products plus one block addition per
(output, tap pair): no explicit A (whose size would be the product of both sides) and no n^3 product
A^T A. Used by `exact` for convolutions too large for the explicit route (ResNet-18's 7x7 maps:
25088 x 25088).

Rounding: every entry is a sum of <= taps dot products of length `inner` (c_out for A^T A, c_in for
A A^T), so in any evaluation order |fl(H) - H| <= gamma(inner + taps + 1) |A|^T |A| (or |A| |A|^T)
entrywise, hence ||fl(H) - H||_2 <= gamma(inner + taps + 1) ||A||_F^2, and ||A||_F^2 <= #outputs ||W||_F^2.
"""

from __future__ import annotations

import math

import torch

from speccert.norms.layer import ConvGeometry
from speccert.norms.rounding import gamma, round_up

Tensor = torch.Tensor


def gram_side(g: ConvGeometry) -> tuple[int, bool]:
    """(dimension of the smaller Gram matrix per group, True if it is A^T A)."""
    g2 = g.as_2d()
    co, ci = g2.weight.shape[0] // g2.groups, g2.weight.shape[1]
    n_in, n_out = ci * math.prod(g2.size), co * math.prod(g2.out_size)
    return (n_in, True) if n_in <= n_out else (n_out, False)


def _tap_positions(g: ConvGeometry) -> tuple[Tensor, Tensor]:
    """(flat input position [taps, outputs], valid mask [taps, outputs]) of every (tap, output) pair."""
    (n1, n2), (m1, m2) = g.size, g.out_size
    (k1, k2), (s1, s2), (d1, d2) = g.kernel, g.stride, g.dilation
    (p1, _), (p2, _) = g.padding
    o1 = torch.arange(m1)[:, None]
    o2 = torch.arange(m2)[None, :]
    pos, ok = [], []
    for a1 in range(k1):
        for a2 in range(k2):
            i1, i2 = o1 * s1 + a1 * d1 - p1, o2 * s2 + a2 * d2 - p2
            pos.append((i1 * n2 + i2).reshape(-1))
            ok.append(((i1 >= 0) & (i1 < n1) & (i2 >= 0) & (i2 < n2)).reshape(-1))
    return torch.stack(pos), torch.stack(ok)


def conv_gram(g: ConvGeometry, group: int, device: torch.device) -> tuple[Tensor, float]:
    """(fl(H), a bound on ||fl(H) - H||_2) for the smaller Gram matrix of one group of the conv, float64.

    Rows/columns are ordered position-major (position, channel); the spectrum does not depend on it.
    """
    if g.circular:
        raise ValueError("conv_gram handles zero padding only")
    g2 = g.as_2d()
    co = g2.weight.shape[0] // g2.groups
    w = g2.weight[group * co : (group + 1) * co].to(device=device, dtype=torch.float64)  # [co, ci, k1, k2]
    ci = w.shape[1]
    wt = w.flatten(2).permute(2, 0, 1)  # [taps, co, ci]
    taps = wt.shape[0]
    pos, ok = _tap_positions(g2)
    pos, ok = pos.to(device), ok.to(device)
    n_pos_in, n_pos_out = math.prod(g2.size), math.prod(g2.out_size)
    _, left = gram_side(g2)
    c = ci if left else co
    n_pos = n_pos_in if left else n_pos_out
    h = torch.zeros((n_pos, c, n_pos, c), dtype=torch.float64, device=device)
    hp = h.permute(0, 2, 1, 3)  # [P, P', c, c'] view of the same storage
    if not left:
        # inverse of o -> input position for each tap: -1 where no output of that tap reads it
        inv = torch.full((taps, n_pos_in), -1, dtype=torch.int64, device=device)
        outs = torch.arange(n_pos_out, device=device)
        for b in range(taps):
            inv[b, pos[b, ok[b]]] = outs[ok[b]]
    for a in range(taps):
        for b in range(taps):
            if left:
                both = ok[a] & ok[b]
                rows, cols = pos[a, both], pos[b, both]
                blk = wt[a].T @ wt[b]  # W_a^T W_b
            else:
                o = torch.nonzero(ok[a])[:, 0]
                o2 = inv[b, pos[a, o]]
                keep = o2 >= 0
                rows, cols = o[keep], o2[keep]
                blk = wt[a] @ wt[b].T  # W_a W_b^T
            if rows.numel():
                hp.index_put_((rows, cols), blk.expand(rows.numel(), c, c), accumulate=True)
    inner = co if left else ci
    fro2 = n_pos_out * float(torch.sum(w * w)) * (1.0 + gamma(w.numel() + 2.0))
    return h.reshape(n_pos * c, n_pos * c), round_up(gamma(inner + taps + 1.0) * fro2)
