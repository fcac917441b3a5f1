"""Kernel reshapings shared by the reshaped-kernel methods (fantastic4, lmt, miyato).

For a conv weight K [c_out, c_in, *kernel] (one group; 1-d kernels get a unit height):
    T = K as [c_out, c_in*h*w]  (Miyato's matrix),   U = K as [c_out*h*w, c_in],
    R = K as [c_out*h, c_in*w],                      S = K as [c_out*w, c_in*h].
`polyphase_kernel` rewrites a strided (dilated) conv as a stride-1 conv over the s1*s2 polyphase
components of its input: tap a of axis j reads component r_a = off_a mod s at shift q_a = floor(off_a/s)
with off_a = a*d - p_begin, so the new kernel is [c_out, s1*s2*c_in, Q1, Q2] with Q = q_max - q_min + 1.
"""

from __future__ import annotations

import torch

from speccert.norms.layer import ConvGeometry

Tensor = torch.Tensor


def as_2d_kernel(w: Tensor) -> Tensor:
    return w.unsqueeze(2) if w.dim() == 3 else w


def reshapings(k: Tensor) -> dict[str, Tensor]:
    co, ci, h, w = k.shape
    return {
        "T": k.reshape(co, ci * h * w),
        "U": k.permute(0, 2, 3, 1).reshape(co * h * w, ci),
        "R": k.permute(0, 2, 1, 3).reshape(co * h, ci * w),
        "S": k.permute(0, 3, 1, 2).reshape(co * w, ci * h),
    }


def group_kernels(g: ConvGeometry) -> list[Tensor]:
    """The per-group kernels [c_out/g, c_in/g, h, w] in float64 (the conv is block-diagonal over groups)."""
    w = as_2d_kernel(g.weight.to(torch.float64))
    co = w.shape[0] // g.groups
    return [w[i * co : (i + 1) * co] for i in range(g.groups)]


def polyphase_kernel(k: Tensor, g: ConvGeometry) -> Tensor:
    """The stride-1 kernel over polyphase components of a zero-padded strided conv (see module doc)."""
    stride = g.stride if g.ndim == 2 else (1, g.stride[0])
    dil = g.dilation if g.ndim == 2 else (1, g.dilation[0])
    pads = g.padding if g.ndim == 2 else ((0, 0), g.padding[0])
    qr = []
    for axis in range(2):
        offs = [a * dil[axis] - pads[axis][0] for a in range(k.shape[2 + axis])]
        q = [o // stride[axis] for o in offs]
        qr.append(([x - min(q) for x in q], [o % stride[axis] for o in offs], max(q) - min(q) + 1))
    (q1, r1, n1), (q2, r2, n2) = qr
    co, ci = k.shape[:2]
    out = torch.zeros((co, stride[0], stride[1], ci, n1, n2), dtype=k.dtype, device=k.device)
    for a in range(k.shape[2]):
        for b in range(k.shape[3]):
            out[:, r1[a], r2[b], :, q1[a], q2[b]] += k[:, :, a, b]
    return out.reshape(co, stride[0] * stride[1] * ci, n1, n2)


def undilated_ok(g: ConvGeometry) -> bool:
    """Whether reshaped-kernel bounds of stride-1 convs apply to this geometry (see fantastic4)."""
    if not g.circular:
        return all(p >= 0 for pp in g.padding for p in pp)
    return all(
        d == 1 and o * s <= n for d, o, s, n in zip(g.dilation, g.out_size, g.stride, g.size, strict=True)
    )
