"""The affine tail of a graph (every linear operator after the last nonlinearity) as explicit rows.

The logits are f(x) = T(u(x)) where u is the last nonlinear node (or the input) and T = A_m ... A_1 + b
is the chain of single-input affine nodes after it (Linear, Conv, BatchNorm, Affine, pooling by
averages, Pad, Reshape, Transpose: conv -> BN -> flatten -> linear chains included). `tail_rows`
forms J = dT/du (one row per logit, [C, n_u]) by one reverse pass of the tail in float64, and the same
pass with every operator replaced by its entrywise absolute value gives |A_m| ... |A_1| rows, which bound
the rounding of J (Higham, *Accuracy and Stability*, section 3.5: the computed product of matrices is
exact up to gamma(K) |A_m| ... |A_1| componentwise, K the sum of the inner dimensions).

A tail that starts with a global average pool over P pixels (most CNN classifiers: pool, flatten,
Linear) is kept factored: T = T' G with G the exact average (each channel's P pixels times 1/P), so
row c of T is row c of T' divided by P and repeated over the pixels, and
||T_y - T_j||_2 = ||T'_y - T'_j||_2 / sqrt(P) exactly. Only T' is formed (`TailRows.pixels` = P): for a
1000-class head behind a 1024 x 7 x 7 map that is 1000 x 1024 rows instead of 1000 x 50176 (0.4 GB),
and the certificates' all-pairs distances cost 49x less.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from speccert.bounds.certificate import NotApplicable
from speccert.ir import (
    INPUT,
    Affine,
    AvgPool,
    BatchNorm,
    Conv,
    ConvTranspose,
    GlobalAvgPool,
    Graph,
    Linear,
    Node,
)
from speccert.ir.ops import Op
from speccert.limits import fits, human

Tensor = torch.Tensor


@dataclass(frozen=True)
class TailRows:
    """rows[c] = gradient of logit c w.r.t. the tail's input u (float64, computed); abs_norms[c] = the
    computed 2-norm of the same row with |A_k| for A_k (its rounding: bound it with `inner` = K and the
    row length); `start` names u. Only the norms of the |A| rows are kept: the rows themselves are as
    large as `rows` and nothing else reads them. With `pixels` P > 1 the tail starts with a global
    average pool over P pixels that `rows` leave out (module docstring): the tail's true rows are
    rows / P repeated over the pixels, so every row norm and row distance of the tail is that of `rows`
    divided by sqrt(P) (`inner` counts the operators after the pool only: the pool itself is exact)."""

    start: str
    rows: Tensor
    abs_norms: Tensor
    inner: int
    nodes: tuple[Node, ...]
    pixels: int = 1


def affine_chain(graph: Graph, end: str) -> tuple[str, list[Node]]:
    """(u, [A_1, ..., A_m]): the longest chain of single-input affine nodes ending at `end`."""
    chain: list[Node] = []
    name = end
    while name != INPUT:
        node = graph.node(name)
        if not type(node.op).linear or len(node.inputs) != 1:
            break
        chain.append(node)
        name = node.inputs[0]
    return name, chain[::-1]


def _inner_dimension(graph: Graph, node: Node) -> int:
    """Terms summed per entry of a forward or transposed product with this operator (generous)."""
    op = node.op
    if isinstance(op, (Linear, Conv, ConvTranspose)):
        return int(op.weight.numel())  # >= fan-in and fan-out of the op and of its transpose
    if isinstance(op, AvgPool):
        return math.prod(op.kernel)
    if isinstance(op, GlobalAvgPool):
        return math.prod(graph.shape_of(node.inputs[0])[1:])
    if isinstance(op, (BatchNorm, Affine)):
        return 2
    return 0  # Pad, Reshape, Transpose: exact


def absolute_op(op: Op, ndim: int) -> Op:
    """The operator with its linear part replaced by the entrywise absolute value, constant dropped
    (`ndim`: axes of its input without the batch)."""
    if isinstance(op, (Linear, Conv, ConvTranspose)):
        return dataclasses.replace(op, weight=op.weight.detach().abs(), bias=None)
    if isinstance(op, BatchNorm):
        s = op.scale_shift()[0].detach().abs().reshape((-1,) + (1,) * (ndim - 1))
        return Affine(scale=s, shift=torch.zeros_like(s))
    if isinstance(op, Affine):
        return Affine(scale=op.scale.detach().abs(), shift=torch.zeros_like(op.shift))
    return op  # pooling by averages, Pad, Reshape, Transpose: already non-negative


def chain_rows(nodes: list[Node], shape: tuple[int, ...], n_out: int, absolute: bool) -> Tensor:
    """[n_out, prod(shape)]: row c is the gradient of output c of the affine chain `nodes` (input
    `shape`) w.r.t. its input, by one reverse pass in float64 (with `absolute`, of the chain of |A_k|).
    The gradient of an affine map does not depend on the point, so the n_out inputs the pass needs
    are one zero sample broadcast (no n_out x prod(shape) block of zeros is allocated)."""
    zero = torch.zeros((1, *shape), dtype=torch.float64, requires_grad=True)
    u = zero.expand(n_out, *shape)
    with torch.enable_grad():
        h = u
        for node in nodes:
            op = node.op
            if absolute:
                op = absolute_op(op, h.dim() - 1)
            h = op.forward(h)
        (g,) = torch.autograd.grad(h.reshape(n_out, -1), u, torch.eye(n_out, dtype=torch.float64))
    return g.reshape(n_out, -1).detach()


def tail_rows(graph: Graph, end: str | None = None) -> TailRows:
    """Rows of the affine tail ending at `end` (default the output) of a float64 graph on the CPU."""
    end = graph.output if end is None else end
    start, chain = affine_chain(graph, end)
    if not chain:
        raise NotApplicable("the logits come straight from a nonlinearity (no affine tail)")
    shape = graph.shape_of(start)
    n_out = math.prod(graph.shape_of(end))
    pixels = 1
    if isinstance(chain[0].op, GlobalAvgPool):  # kept factored (module docstring): T' after the pool
        pixels = math.prod(shape[1:])
        shape = graph.shape_of(chain[0].name)
        chain = chain[1:]
    # One float64 copy of every activation of the chain per logit, and its gradient (a conv head on a
    # 224x224 map with 1000 logits would plan tens of GB): above the budget, the certificate is skipped.
    need = 16 * n_out * (math.prod(shape) + sum(math.prod(n.shape) for n in chain))
    if not fits(need):
        raise NotApplicable(
            f"the affine tail's rows would need {human(need)}, more than the memory budget (--max-memory)"
        )
    rows = chain_rows(chain, shape, n_out, absolute=False)
    abs_norms = chain_rows(chain, shape, n_out, absolute=True).norm(dim=1)
    inner = sum(_inner_dimension(graph, n) for n in chain) + 4
    return TailRows(start, rows, abs_norms, inner, tuple(chain), pixels)
