"""Linear IR operators (affine in their one input): the layers whose operator norm a norm method
(speccert.norms) bounds, and that speccert.ir.passes merges with their linear neighbours."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from speccert.ir.op_base import Op, Pads, Tensor, symmetric, torch_pad_arg


@dataclass(frozen=True, eq=False)
class Linear(Op):
    """y = x W^T + b on the last axis; weight [out, in]. `fixed`: a constant of the file's operator, not a
    learned weight (an interpolation matrix of a Resize): fine-tuning never trains it."""

    op_type: ClassVar[str] = "Linear"
    linear: ClassVar[bool] = True
    weight: Tensor
    bias: Tensor | None = None
    fixed: bool = False

    def forward(self, *xs: Tensor) -> Tensor:
        return F.linear(xs[0], self.weight, self.bias)

    def parameters(self) -> dict[str, Tensor]:
        return {"weight": self.weight, **({"bias": self.bias} if self.bias is not None else {})}

    def describe(self) -> str:
        return f"Linear {self.weight.shape[1]}->{self.weight.shape[0]}" + (" fixed" if self.fixed else "")


# A model file's record of its fixed layers' weights (a JSON list of names): an ONNX metadata key (the
# initializers), a .pt2 archive's extra file (the module's buffers).
FIXED_METADATA = "speccert.fixed"


def fixed_names(text: str) -> list[str] | None:
    """The names in a FIXED_METADATA record, or None when it is not a JSON list of names."""
    try:
        names = json.loads(text)
    except ValueError:
        return None
    ok = isinstance(names, list) and all(isinstance(n, str) for n in names)
    return names if ok else None


def is_fixed(op: Op) -> bool:
    """Whether `op`'s weights are constants of the file's operator (an imported upsampling's Linear or
    ConvTranspose), which fine-tuning freezes, never rescales and never widens."""
    return isinstance(op, (Linear, ConvTranspose)) and op.fixed


@dataclass(frozen=True, eq=False)
class Conv(Op):
    """N-d convolution (N = 1 or 2), weight [c_out, c_in/groups, *kernel].

    padding_mode 'zeros' (with per-side amounts) or 'circular' (symmetric amounts).
    """

    op_type: ClassVar[str] = "Conv"
    linear: ClassVar[bool] = True
    weight: Tensor
    bias: Tensor | None
    stride: tuple[int, ...]
    padding: Pads
    dilation: tuple[int, ...]
    groups: int = 1
    padding_mode: str = "zeros"

    @property
    def ndim(self) -> int:
        return self.weight.dim() - 2

    def forward(self, *xs: Tensor) -> Tensor:
        x = xs[0]
        conv = F.conv1d if self.ndim == 1 else F.conv2d
        sym = symmetric(self.padding)
        if self.padding_mode == "zeros" and sym is not None:
            return conv(x, self.weight, self.bias, self.stride, sym, self.dilation, self.groups)
        mode = "constant" if self.padding_mode == "zeros" else self.padding_mode
        x = F.pad(x, torch_pad_arg(self.padding), mode=mode)
        return conv(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)

    def parameters(self) -> dict[str, Tensor]:
        return {"weight": self.weight, **({"bias": self.bias} if self.bias is not None else {})}

    def describe(self) -> str:
        cin = self.weight.shape[1] * self.groups
        return _describe_conv("Conv", cin, self.weight.shape[0], self)


@dataclass(frozen=True, eq=False)
class ConvTranspose(Op):
    """Transposed N-d convolution, weight [c_in, c_out/groups, *kernel], symmetric padding. `fixed`: a
    constant of the file's operator (a nearest-neighbour upsampling's kernel of ones): never trained."""

    op_type: ClassVar[str] = "ConvTranspose"
    linear: ClassVar[bool] = True
    weight: Tensor
    bias: Tensor | None
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    output_padding: tuple[int, ...]
    dilation: tuple[int, ...]
    groups: int = 1
    fixed: bool = False

    @property
    def ndim(self) -> int:
        return self.weight.dim() - 2

    def forward(self, *xs: Tensor) -> Tensor:
        convt = F.conv_transpose1d if self.ndim == 1 else F.conv_transpose2d
        return convt(
            xs[0],
            self.weight,
            self.bias,
            self.stride,
            self.padding,
            self.output_padding,
            self.groups,
            self.dilation,
        )

    def parameters(self) -> dict[str, Tensor]:
        return {"weight": self.weight, **({"bias": self.bias} if self.bias is not None else {})}

    def describe(self) -> str:
        cout = self.weight.shape[1] * self.groups
        return _describe_conv("ConvTranspose", self.weight.shape[0], cout, self) + (
            " fixed" if self.fixed else ""
        )


def _describe_conv(kind: str, cin: int, cout: int, op: Conv | ConvTranspose) -> str:
    """`Conv 3->64 7x7 s2,2` (stride, groups and dilation only where they are not 1)."""
    k = "x".join(str(s) for s in op.weight.shape[2:])
    extra = [f"s{','.join(map(str, op.stride))}"] if any(s != 1 for s in op.stride) else []
    if op.groups != 1:
        extra.append(f"g{op.groups}")
    if any(d != 1 for d in op.dilation):
        extra.append(f"d{','.join(map(str, op.dilation))}")
    return f"{kind} {cin}->{cout} {k}" + (" " + " ".join(extra) if extra else "")


@dataclass(frozen=True, eq=False)
class BatchNorm(Op):
    """Inference-mode batch norm over axis 1: (x - mean) / sqrt(var + eps) * weight + bias."""

    op_type: ClassVar[str] = "BatchNorm"
    linear: ClassVar[bool] = True
    mean: Tensor
    var: Tensor
    weight: Tensor
    bias: Tensor
    eps: float = 1e-5

    def scale_shift(self) -> tuple[Tensor, Tensor]:
        scale = self.weight / torch.sqrt(self.var + self.eps)
        return scale, self.bias - self.mean * scale

    def forward(self, *xs: Tensor) -> Tensor:
        return F.batch_norm(xs[0], self.mean, self.var, self.weight, self.bias, False, 0.0, self.eps)

    def parameters(self) -> dict[str, Tensor]:
        return {"mean": self.mean, "var": self.var, "weight": self.weight, "bias": self.bias}


@dataclass(frozen=True, eq=False)
class Affine(Op):
    """Elementwise y = x * scale + shift, scale/shift broadcastable to the input (without batch).

    Input normalisation ((x - mean) / std) and Mul/Div/Add/Sub by constants become this op. Importers keep
    scale/shift in float64, computed from the file's values (1/std is not a float32 number): the certified
    function is the file's, not one with float32-rounded constants. A run casts them to the input's dtype.
    """

    op_type: ClassVar[str] = "Affine"
    linear: ClassVar[bool] = True
    scale: Tensor
    shift: Tensor

    def forward(self, *xs: Tensor) -> Tensor:
        x = xs[0]
        return x * self.scale.to(x.dtype) + self.shift.to(x.dtype)

    def parameters(self) -> dict[str, Tensor]:
        return {"scale": self.scale, "shift": self.shift}


@dataclass(frozen=True, eq=False)
class AvgPool(Op):
    op_type: ClassVar[str] = "AvgPool"
    linear: ClassVar[bool] = True
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    padding: Pads
    ceil_mode: bool = False
    count_include_pad: bool = True

    def forward(self, *xs: Tensor) -> Tensor:
        x = xs[0]
        pool = F.avg_pool1d if len(self.kernel) == 1 else F.avg_pool2d
        sym = symmetric(self.padding)
        if sym is None or any(2 * p > k for p, k in zip(sym, self.kernel, strict=True)):
            if not self.count_include_pad:
                raise ValueError("asymmetric AvgPool padding with count_include_pad=0 is not supported")
            x = F.pad(x, torch_pad_arg(self.padding))
            sym = tuple(0 for _ in self.kernel)
        return pool(x, self.kernel, self.stride, sym, self.ceil_mode, self.count_include_pad)

    def describe(self) -> str:
        return f"AvgPool {'x'.join(map(str, self.kernel))} s{','.join(map(str, self.stride))}"


@dataclass(frozen=True, eq=False)
class GlobalAvgPool(Op):
    """Mean over all spatial axes, keeping them as size 1 (ONNX semantics)."""

    op_type: ClassVar[str] = "GlobalAvgPool"
    linear: ClassVar[bool] = True

    def forward(self, *xs: Tensor) -> Tensor:
        x = xs[0]
        return x.mean(dim=tuple(range(2, x.dim())), keepdim=True)


@dataclass(frozen=True, eq=False)
class Pad(Op):
    """Constant-zero padding; `pads` per non-batch axis as (begin, end)."""

    op_type: ClassVar[str] = "Pad"
    linear: ClassVar[bool] = True
    pads: Pads

    def forward(self, *xs: Tensor) -> Tensor:
        return F.pad(xs[0], torch_pad_arg(self.pads))


@dataclass(frozen=True, eq=False)
class Reshape(Op):
    """Reshape of the non-batch axes to `shape` (Flatten, Reshape, Squeeze, Unsqueeze)."""

    op_type: ClassVar[str] = "Reshape"
    linear: ClassVar[bool] = True
    shape: tuple[int, ...]

    def forward(self, *xs: Tensor) -> Tensor:
        return xs[0].reshape((xs[0].shape[0], *self.shape))

    def describe(self) -> str:
        return f"Reshape {list(self.shape)}"


@dataclass(frozen=True, eq=False)
class Transpose(Op):
    """Permutation of the non-batch axes; `perm` indexes non-batch axes (0 = first after batch)."""

    op_type: ClassVar[str] = "Transpose"
    linear: ClassVar[bool] = True
    perm: tuple[int, ...]

    def forward(self, *xs: Tensor) -> Tensor:
        return xs[0].permute(0, *(p + 1 for p in self.perm))

    def describe(self) -> str:
        return f"Transpose {list(self.perm)}"
