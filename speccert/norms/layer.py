"""The linear part of one graph node, as an operator the norm methods can apply, transpose and inspect.

A linear node computes y = A x + c; every norm here is ||A||_2 (the constant c never matters). This
module is the one place that knows how to strip the constant from each op, how to turn equivalent ops
into a canonical `ConvGeometry` (a ConvTranspose is the adjoint of a Conv; an AvgPool that counts its
padding is a one-channel conv), and how to apply A and A^T on any device and dtype.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from speccert.ir.ops import (
    Affine,
    AvgPool,
    BatchNorm,
    Conv,
    ConvTranspose,
    GlobalAvgPool,
    Linear,
    Op,
    Pad,
    Reshape,
    Transpose,
)

Tensor = torch.Tensor


@dataclass(frozen=True)
class ConvGeometry:
    """A zero- or circular-padded N-d convolution (cross-correlation), bias-free.

    y[o, i] = sum_{c, a} weight[o, c, a] * x_pad[g(o)*cin_g + c, i*stride + a*dilation]
    on input spatial size `size`; `padding` per side. `adjoint=True` means the layer is this conv's
    transpose (a ConvTranspose): the same operator norm.
    """

    weight: Tensor  # [c_out, c_in/groups, *kernel]
    size: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[tuple[int, int], ...]
    dilation: tuple[int, ...]
    groups: int
    circular: bool = False
    adjoint: bool = False

    @property
    def ndim(self) -> int:
        return self.weight.dim() - 2

    @property
    def kernel(self) -> tuple[int, ...]:
        return tuple(self.weight.shape[2:])

    @property
    def out_size(self) -> tuple[int, ...]:
        return tuple(
            (n + pb + pe - d * (k - 1) - 1) // s + 1
            for n, (pb, pe), d, k, s in zip(
                self.size, self.padding, self.dilation, self.kernel, self.stride, strict=True
            )
        )

    def as_2d(self) -> ConvGeometry:
        """The same operator as a 2-d conv (a 1-d conv gets a height-1 axis)."""
        if self.ndim == 2:
            return self
        return ConvGeometry(
            self.weight.unsqueeze(2),
            (1, self.size[0]),
            (1, self.stride[0]),
            ((0, 0), self.padding[0]),
            (1, self.dilation[0]),
            self.groups,
            self.circular,
            self.adjoint,
        )


@dataclass(frozen=True)
class LinearLayer:
    """One linear node: its bias-free op, shapes (without batch) and a canonical form if it has one."""

    name: str
    op: Op
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]

    @property
    def n_in(self) -> int:
        return math.prod(self.in_shape)

    @property
    def n_out(self) -> int:
        return math.prod(self.out_shape)

    @property
    def op_type(self) -> str:
        return self.op.op_type

    def describe(self) -> str:
        return self.op.describe()

    # ---- canonical forms -------------------------------------------------------------------------
    def conv(self) -> ConvGeometry | None:
        """The layer as a (possibly transposed) convolution, or None."""
        op = self.op
        if isinstance(op, Conv):
            if op.padding_mode not in ("zeros", "circular"):
                return None
            return ConvGeometry(
                op.weight.detach(),
                tuple(self.in_shape[1:]),
                op.stride,
                op.padding,
                op.dilation,
                op.groups,
                op.padding_mode == "circular",
            )
        if isinstance(op, ConvTranspose):
            # conv_transpose(x) = A^T x for the conv A with the same weight, acting on the output size.
            return ConvGeometry(
                op.weight.detach(),
                tuple(self.out_shape[1:]),
                op.stride,
                tuple((p, p) for p in op.padding),
                op.dilation,
                op.groups,
                adjoint=True,
            )
        if isinstance(op, AvgPool) and op.count_include_pad and not op.ceil_mode:
            # Every channel is averaged alike: the norm is that of a one-channel conv with weight 1/|k|.
            k = op.kernel
            w = torch.full((1, 1, *k), 1.0 / math.prod(k), dtype=torch.float64)
            return ConvGeometry(w, tuple(self.in_shape[1:]), op.stride, op.padding, (1,) * len(k), 1)
        return None

    def matrix(self) -> Tensor | None:
        """The explicit matrix when the op is a Linear layer (no basis needed)."""
        return self.op.weight.detach() if isinstance(self.op, Linear) else None

    def diagonal(self) -> Tensor | None:
        """The diagonal of A when A is diagonal (BatchNorm, Affine), in float64."""
        if isinstance(self.op, BatchNorm):
            op = self.op
            return op.weight.detach().double() / torch.sqrt(op.var.detach().double() + op.eps)
        if isinstance(self.op, Affine):
            return self.op.scale.detach().double().expand(self.in_shape)
        return None

    # ---- application -----------------------------------------------------------------------------
    def apply(self, x: Tensor) -> Tensor:
        """A x for a batch x of shape [B, *in_shape] (the op's weights cast to x's dtype/device)."""
        return _cast(self.op, x).forward(x)

    def vjp(self, dtype: torch.dtype, device: torch.device | str) -> Callable[[Tensor], Tensor]:
        """A function y -> A^T y (batched), by autograd through the linear map."""
        op = _cast(self.op, torch.empty(0, dtype=dtype, device=device))

        def adjoint(y: Tensor) -> Tensor:
            x = torch.zeros((y.shape[0], *self.in_shape), dtype=dtype, device=device, requires_grad=True)
            with torch.enable_grad():
                out = op.forward(x)
                (g,) = torch.autograd.grad(out, x, grad_outputs=y)
            return g

        return adjoint


def _cast(op: Op, like: Tensor) -> Op:
    changes = {}
    for f in dataclasses.fields(op):
        v = getattr(op, f.name)
        if isinstance(v, Tensor) and v.is_floating_point():
            changes[f.name] = v.detach().to(dtype=like.dtype, device=like.device)
    return dataclasses.replace(op, **changes) if changes else op


def linear_part(op: Op) -> Op:
    """The op with its additive constant removed: A x instead of A x + c."""
    if isinstance(op, (Linear, Conv, ConvTranspose)):
        return dataclasses.replace(op, bias=None)
    if isinstance(op, BatchNorm):
        return dataclasses.replace(op, mean=torch.zeros_like(op.mean), bias=torch.zeros_like(op.bias))
    if isinstance(op, Affine):
        return dataclasses.replace(op, shift=torch.zeros_like(op.scale))
    return op


LINEAR_TYPES = (
    Linear,
    Conv,
    ConvTranspose,
    BatchNorm,
    Affine,
    AvgPool,
    GlobalAvgPool,
    Pad,
    Reshape,
    Transpose,
)
