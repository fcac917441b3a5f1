"""The base class of the IR's operators and the padding helpers their `forward`s share.

Every op is a frozen dataclass holding its attributes and parameters (torch tensors owned by the graph),
and knows only how to run itself (`forward`). Norm methods, bounds and importers live elsewhere and
dispatch on the op's type. Shapes exclude the batch dimension; tensors passed to `forward` include it.
Spatial padding is stored per side: `padding = ((begin_0, end_0), (begin_1, end_1), ...)`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

Tensor = torch.Tensor
Pads = tuple[tuple[int, int], ...]


def torch_pad_arg(padding: Pads) -> list[int]:
    """F.pad wants the last dimension first: (left_last, right_last, left_prev, right_prev, ...)."""
    out: list[int] = []
    for begin, end in reversed(padding):
        out += [begin, end]
    return out


def symmetric(padding: Pads) -> tuple[int, ...] | None:
    """The per-axis amounts when every axis pads both sides equally (what torch's conv/pool take), else None."""
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
