"""The closed set of operators of the IR (shared/DESIGN.md), in one namespace.

Every op is a frozen dataclass holding its attributes and parameters (torch tensors owned by the graph),
and knows only how to run itself (`forward`). Norm methods, bounds and importers live elsewhere and
dispatch on the op's type. They are defined by kind: `op_base` (the base class), `linear_ops` (linear
maps bounded by a norm method), `nonlinear_ops` (one input, bounded by a slope or factor rule) and
`structural_ops` (selections, sorting, merges of several tensors); this module gathers them and
`ALL_OPS`, the list every per-op table (bounds rules, rounding rules, exporters) must cover.
"""

from __future__ import annotations

from speccert.ir.linear_ops import (
    FIXED_METADATA,
    Affine,
    AvgPool,
    BatchNorm,
    Conv,
    ConvTranspose,
    GlobalAvgPool,
    Linear,
    Pad,
    Reshape,
    Transpose,
    fixed_names,
    is_fixed,
)
from speccert.ir.nonlinear_ops import (
    Activation,
    Householder,
    L2Pool,
    MaxPool,
    Opaque,
    PRelu,
    Softmax,
    Standardize,
)
from speccert.ir.op_base import Op, Pads, Tensor
from speccert.ir.structural_ops import Add, Center, Concat, Extremum, Slice, Sort

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
    Center,
    L2Pool,
    Householder,
    Opaque,
)

__all__ = [
    "ALL_OPS",
    "Activation",
    "Add",
    "Affine",
    "AvgPool",
    "BatchNorm",
    "Center",
    "Concat",
    "Conv",
    "ConvTranspose",
    "Extremum",
    "FIXED_METADATA",
    "fixed_names",
    "is_fixed",
    "GlobalAvgPool",
    "Householder",
    "L2Pool",
    "Linear",
    "MaxPool",
    "Op",
    "Opaque",
    "Pad",
    "Pads",
    "PRelu",
    "Reshape",
    "Slice",
    "Softmax",
    "Sort",
    "Standardize",
    "Tensor",
    "Transpose",
]
