"""The closed set of operators of the IR (shared/DESIGN.md).

Every op is a frozen dataclass holding its attributes and parameters (torch tensors owned by the graph),
and knows only how to run itself (`forward`). Norm methods, bounds and importers live elsewhere and
dispatch on the op's type. Shapes exclude the batch dimension; tensors passed to `forward` include it.
Spatial padding is stored per side: `padding = ((begin_0, end_0), (begin_1, end_1), ...)`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F

from speccert.ir.activations import ACTIVATIONS

Tensor = torch.Tensor
Pads = tuple[tuple[int, int], ...]


def _torch_pad_arg(padding: Pads) -> list[int]:
    """F.pad wants the last dimension first: (left_last, right_last, left_prev, right_prev, ...)."""
    out: list[int] = []
    for begin, end in reversed(padding):
        out += [begin, end]
    return out


def _symmetric(padding: Pads) -> tuple[int, ...] | None:
    if all(b == e for b, e in padding):
        return tuple(b for b, _ in padding)
    return None


@dataclass(frozen=True, eq=False)
class Op:
    """Base class. `linear` ops are affine in their single input (a linear map plus a constant)."""

    op_type: ClassVar[str] = "Op"
    linear: ClassVar[bool] = False
    n_inputs: ClassVar[int] = 1

    def forward(self, *xs: Tensor) -> Tensor:
        raise NotImplementedError

    def parameters(self) -> dict[str, Tensor]:
        """Named tensors of this op (weights, biases, statistics): the graph's parameters."""
        return {}

    def describe(self) -> str:
        return self.op_type


@dataclass(frozen=True, eq=False)
class Linear(Op):
    """y = x W^T + b on the last axis; weight [out, in]."""

    op_type: ClassVar[str] = "Linear"
    linear: ClassVar[bool] = True
    weight: Tensor
    bias: Tensor | None = None

    def forward(self, *xs: Tensor) -> Tensor:
        return F.linear(xs[0], self.weight, self.bias)

    def parameters(self) -> dict[str, Tensor]:
        return {"weight": self.weight, **({"bias": self.bias} if self.bias is not None else {})}

    def describe(self) -> str:
        return f"Linear {self.weight.shape[1]}->{self.weight.shape[0]}"


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
        sym = _symmetric(self.padding)
        if self.padding_mode == "zeros" and sym is not None:
            return conv(x, self.weight, self.bias, self.stride, sym, self.dilation, self.groups)
        mode = "constant" if self.padding_mode == "zeros" else self.padding_mode
        x = F.pad(x, _torch_pad_arg(self.padding), mode=mode)
        return conv(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)

    def parameters(self) -> dict[str, Tensor]:
        return {"weight": self.weight, **({"bias": self.bias} if self.bias is not None else {})}

    def describe(self) -> str:
        k = "x".join(str(s) for s in self.weight.shape[2:])
        extra = [f"s{','.join(map(str, self.stride))}"] if any(s != 1 for s in self.stride) else []
        if self.groups != 1:
            extra.append(f"g{self.groups}")
        if any(d != 1 for d in self.dilation):
            extra.append(f"d{','.join(map(str, self.dilation))}")
        cin = self.weight.shape[1] * self.groups
        return f"Conv {cin}->{self.weight.shape[0]} {k}" + (" " + " ".join(extra) if extra else "")


@dataclass(frozen=True, eq=False)
class ConvTranspose(Op):
    """Transposed N-d convolution, weight [c_in, c_out/groups, *kernel], symmetric padding."""

    op_type: ClassVar[str] = "ConvTranspose"
    linear: ClassVar[bool] = True
    weight: Tensor
    bias: Tensor | None
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    output_padding: tuple[int, ...]
    dilation: tuple[int, ...]
    groups: int = 1

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
class Activation(Op):
    """Elementwise activation from the activation registry (speccert.ir.activations)."""

    op_type: ClassVar[str] = "Activation"
    fn: str
    alpha: float = 0.0

    def forward(self, *xs: Tensor) -> Tensor:
        return ACTIVATIONS.get(self.fn).fn(xs[0], self.alpha)

    def describe(self) -> str:
        return f"Activation {self.fn}" + (f"({self.alpha:g})" if self.fn in ("leaky_relu", "elu") else "")


@dataclass(frozen=True, eq=False)
class Standardize(Op):
    """Normalisation over the last `axes` axes, without an affine part (importers write gamma, beta as
    an Affine node after it): y = (x - mean) / sqrt(var + eps), mean and biased var over those axes.

    LayerNorm over channels is axes = 1 on a channels-last tensor; GroupNorm is a Reshape to
    [groups, rest], this op with axes = 1, a Reshape back and a per-channel Affine.
    Lipschitz constant 1/sqrt(eps): per normalised block of n entries, with y0 = x - mean (an
    orthogonal projection P of x, norm 1) and s = sqrt(|y0|^2 / n + eps), the Jacobian is
    (1/s) (I - y0 y0^T / (n s^2)) P, whose norm is 1/s <= 1/sqrt(eps) (the sup, reached as the
    block's variance goes to 0); blocks are independent, so the Jacobian is block-diagonal. How loose:
    at an input of variance v the local slope is 1/sqrt(v + eps), smaller by sqrt(eps / (v + eps)).
    """

    op_type: ClassVar[str] = "Standardize"
    axes: int = 1
    eps: float = 1e-5

    def forward(self, *xs: Tensor) -> Tensor:
        x = xs[0]
        return F.layer_norm(x, x.shape[x.dim() - self.axes :], None, None, self.eps)

    def describe(self) -> str:
        return f"Standardize last {self.axes} axes eps={self.eps:g}"


@dataclass(frozen=True, eq=False)
class Slice(Op):
    """x[..., start:stop:step, ...] along non-batch `axis` (0 = first after batch): a coordinate
    selection (channel split: Split, Slice, chunk), 1-Lipschitz (a restriction to coordinates).
    It is bounded by its composition rule (factor 1), not by a norm method, so it is not `linear`."""

    op_type: ClassVar[str] = "Slice"
    axis: int = 0
    start: int = 0
    stop: int = 0
    step: int = 1

    def forward(self, *xs: Tensor) -> Tensor:
        index: list[slice] = [slice(None)] * xs[0].dim()
        index[self.axis + 1] = slice(self.start, self.stop, self.step)
        return xs[0][tuple(index)]

    def describe(self) -> str:
        step = f":{self.step}" if self.step != 1 else ""
        return f"Slice axis {self.axis} [{self.start}:{self.stop}{step}]"


@dataclass(frozen=True, eq=False)
class Sort(Op):
    """Sort along non-batch `axis` (0 = first after batch), every other axis indexing independent
    groups: GroupSort with group size g is Reshape [.., n/g, g, ..] -> Sort -> Reshape back, FullSort
    sorts the whole axis, MaxMin of two halves is Reshape [.., 2, n/2, ..] -> Sort(descending).

    1-Lipschitz in L2, and gradient-norm preserving: sorting a vector is a permutation that depends
    on the input, and ||sort(x) - sort(y)||_2 <= ||x - y||_2 for all x, y (rearrangement inequality:
    sum_i sort(x)_i sort(y)_i >= sum_i x_i y_i); groups are disjoint coordinates, so the bound holds
    for the whole tensor. Not smooth (the permutation jumps where two entries tie)."""

    op_type: ClassVar[str] = "Sort"
    axis: int = 0
    descending: bool = False

    def forward(self, *xs: Tensor) -> Tensor:
        return torch.sort(xs[0], dim=self.axis + 1, descending=self.descending).values

    def describe(self) -> str:
        return f"Sort axis {self.axis}" + (" descending" if self.descending else "")


@dataclass(frozen=True, eq=False)
class Extremum(Op):
    """Elementwise max (or min) of two input-dependent tensors of the same shape (MaxMin of Split
    halves before speccert.importers.sorting fuses the pair into a Sort; ReduceMax over a short axis).

    Lipschitz: per entry |max(a, b) - max(a', b')| <= max(|a - a'|, |b - b'|), so
    ||max(a, b) - max(a', b')||_2^2 <= ||a - a'||^2 + ||b - b'||^2: the Concat (hypot) rule."""

    op_type: ClassVar[str] = "Extremum"
    n_inputs: ClassVar[int] = 2
    is_max: bool = True

    def forward(self, *xs: Tensor) -> Tensor:
        return torch.maximum(xs[0], xs[1]) if self.is_max else torch.minimum(xs[0], xs[1])

    def describe(self) -> str:
        return "Max" if self.is_max else "Min"


@dataclass(frozen=True, eq=False)
class PRelu(Op):
    """PReLU with a slope per channel (or element): x for x >= 0, slope * x below; `slope` broadcasts to
    the input without the batch axis. A single shared slope imports as Activation leaky_relu instead.

    Lipschitz max(1, max_i |slope_i|): elementwise, coordinate i piecewise linear with slopes 1 and
    slope_i. Not smooth. The slope is a constant of the graph, not a trainable parameter."""

    op_type: ClassVar[str] = "PRelu"
    slope: Tensor

    def forward(self, *xs: Tensor) -> Tensor:
        x = xs[0]
        return torch.where(x >= 0, x, x * self.slope.to(x.dtype))

    def describe(self) -> str:
        return f"PRelu ({self.slope.numel()} slopes)"


@dataclass(frozen=True, eq=False)
class MaxPool(Op):
    op_type: ClassVar[str] = "MaxPool"
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    padding: Pads
    dilation: tuple[int, ...]
    ceil_mode: bool = False

    def forward(self, *xs: Tensor) -> Tensor:
        x = xs[0]
        pool = F.max_pool1d if len(self.kernel) == 1 else F.max_pool2d
        sym = _symmetric(self.padding)
        if sym is None or any(2 * p > k for p, k in zip(sym, self.kernel, strict=True)):
            x = F.pad(x, _torch_pad_arg(self.padding), value=float("-inf"))
            sym = tuple(0 for _ in self.kernel)
        return pool(x, self.kernel, self.stride, sym, self.dilation, self.ceil_mode)

    def describe(self) -> str:
        return f"MaxPool {'x'.join(map(str, self.kernel))} s{','.join(map(str, self.stride))}"


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
        sym = _symmetric(self.padding)
        if sym is None or any(2 * p > k for p, k in zip(sym, self.kernel, strict=True)):
            if not self.count_include_pad:
                raise ValueError("asymmetric AvgPool padding with count_include_pad=0 is not supported")
            x = F.pad(x, _torch_pad_arg(self.padding))
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
        return F.pad(xs[0], _torch_pad_arg(self.pads))


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


@dataclass(frozen=True, eq=False)
class Add(Op):
    """Sum of two tensors of the same shape (residual connection)."""

    op_type: ClassVar[str] = "Add"
    n_inputs: ClassVar[int] = 2

    def forward(self, *xs: Tensor) -> Tensor:
        return xs[0] + xs[1]


@dataclass(frozen=True, eq=False)
class Concat(Op):
    """Concatenation along non-batch `axis` (0 = first after batch)."""

    op_type: ClassVar[str] = "Concat"
    n_inputs: ClassVar[int] = -1
    axis: int = 0

    def forward(self, *xs: Tensor) -> Tensor:
        return torch.cat(xs, dim=self.axis + 1)


@dataclass(frozen=True, eq=False)
class Softmax(Op):
    """Softmax or log-softmax over the last axis; only allowed as the graph's output."""

    op_type: ClassVar[str] = "Softmax"
    log: bool = False

    def forward(self, *xs: Tensor) -> Tensor:
        return F.log_softmax(xs[0], dim=-1) if self.log else F.softmax(xs[0], dim=-1)

    def describe(self) -> str:
        return "LogSoftmax" if self.log else "Softmax"


@dataclass(frozen=True, eq=False)
class Opaque(Op):
    """An operator outside the closed set (e.g. Sign). The graph can run it when `fn` is known (so
    `inspect` still works) but no bound exists: certification refuses graphs that contain one."""

    op_type: ClassVar[str] = "Opaque"
    n_inputs: ClassVar[int] = -1
    source_op: str = "?"
    reason: str = "no Lipschitz bound"
    fn: Callable[..., Tensor] | None = field(default=None, repr=False)

    def forward(self, *xs: Tensor) -> Tensor:
        if self.fn is None:
            raise NotImplementedError(f"operator {self.source_op} cannot be evaluated")
        return self.fn(*xs)

    def describe(self) -> str:
        return f"{self.source_op} (unsupported)"


ALL_OPS: tuple[type[Op], ...] = (
    Linear,
    Conv,
    ConvTranspose,
    BatchNorm,
    Affine,
    Activation,
    MaxPool,
    AvgPool,
    GlobalAvgPool,
    Pad,
    Reshape,
    Transpose,
    Add,
    Concat,
    Softmax,
    Standardize,
    Slice,
    Sort,
    Extremum,
    PRelu,
    Opaque,
)
