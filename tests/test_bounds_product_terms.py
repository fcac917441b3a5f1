"""The rounding of the local certificate's products is bounded with gamma(K), K the terms summed per entry.
Its reverse pass computes v^T A, whose entries sum over a *column* of A; a layer that widens (a conv
3 -> 64, a Linear 512 -> 1000) has longer columns than rows. Ground truth: the explicit matrix's largest
number of nonzeros per row and per column, for layers of every shape the bound meets."""

from __future__ import annotations

import pytest
import torch

from speccert.bounds.local_stages import inner_dimension, product_terms
from speccert.ir import Conv, Graph, Linear
from speccert.ir.graph import INPUT, Node


def _graph(op: Conv | Linear, in_shape: tuple[int, ...]) -> tuple[Graph, Node]:
    g = Graph(in_shape, [Node("layer", op, (INPUT,))], dtype=torch.float64)
    return g, g.nodes[0]


def _nonzeros(op: Conv | Linear, in_shape: tuple[int, ...]) -> tuple[int, int]:
    """(max nonzeros per row, per column) of the layer's matrix, generic weights (no cancellation)."""
    n = int(torch.tensor(in_shape).prod())
    eye = torch.eye(n, dtype=torch.float64).reshape(n, *in_shape)
    a = op.forward(eye).reshape(n, -1).T != 0  # [out, in]
    return int(a.sum(1).max()), int(a.sum(0).max())


def _conv(c_in: int, c_out: int, k: int, **kw: int) -> Conv:
    groups = kw.pop("groups", 1)
    w = torch.rand(c_out, c_in // groups, k, k, dtype=torch.float64) + 0.5
    return Conv(w, None, stride=(kw.get("stride", 1),) * 2, padding=((k // 2, k // 2),) * 2,
                dilation=(kw.get("dilation", 1),) * 2, groups=groups)  # fmt: skip


CASES: list[tuple[Conv | Linear, tuple[int, ...]]] = [
    (Linear(torch.rand(40, 7, dtype=torch.float64) + 0.5), (7,)),  # widening: columns of 40
    (Linear(torch.rand(5, 30, dtype=torch.float64) + 0.5), (30,)),
    (_conv(3, 16, 3), (3, 8, 8)),  # the first conv of a CIFAR net: 144 per column, 27 per row
    (_conv(2, 12, 5, stride=2), (2, 9, 9)),
    (_conv(4, 8, 3, dilation=2), (4, 7, 7)),
    (_conv(6, 12, 3, groups=3), (6, 6, 6)),
    (_conv(16, 4, 3), (16, 5, 5)),  # narrowing: rows are the longer ones
]


@pytest.mark.parametrize(("op", "in_shape"), CASES, ids=lambda c: getattr(c, "op_type", None) or str(c))
def test_product_terms_cover_rows_and_columns(op: Conv | Linear, in_shape: tuple[int, ...]) -> None:
    g, node = _graph(op, in_shape)
    rows, cols = _nonzeros(op, in_shape)
    assert inner_dimension(g, node) >= rows  # the forward products (interval boxes)
    assert product_terms(g, node) >= max(rows, cols)  # the reverse pass too


def test_a_widening_layer_has_more_terms_backward() -> None:
    """The case that was undercounted: the column count exceeds what the forward count allowed."""
    op, in_shape = CASES[2]
    g, node = _graph(op, in_shape)
    rows, cols = _nonzeros(op, in_shape)
    assert cols > inner_dimension(g, node) > rows
