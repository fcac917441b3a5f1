"""Structural IR operators: coordinate selections and rearrangements (Slice, Sort) and the ops that
merge two or more tensors (Add, Concat, Extremum). None has a norm method; each is bounded by its
composition rule (speccert.bounds.compose): factor 1, a sum, or a root sum of squares."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from speccert.ir.op_base import Op, Tensor


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
class Center(Op):
    """x - mean(x over non-batch `axes`) (0 = first after batch), keeping the tensor's shape:
    deel-torchlip's LayerCentering (`x - x.mean(dim, keepdim=True)`, spatial axes by default).

    Lipschitz exactly 1 (0 when every reduced axis has length 1): the mean over the fibres along
    `axes`, broadcast back, is the orthogonal projection P onto tensors constant along them (P is
    symmetric and idempotent: averaging a constant fibre changes nothing), so the map is the
    projection I - P, also symmetric and idempotent, with eigenvalues in {0, 1}. Linear, so its
    curvature is 0; bounded by its rule (factor 1), not by a norm method, like Slice."""

    op_type: ClassVar[str] = "Center"
    axes: tuple[int, ...] = (0,)

    def forward(self, *xs: Tensor) -> Tensor:
        x = xs[0]
        return x - x.mean(dim=tuple(a + 1 for a in self.axes), keepdim=True)

    def describe(self) -> str:
        return f"Center axes {list(self.axes)}"
