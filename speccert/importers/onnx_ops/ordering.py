"""Converters of order statistics: TopK (how torch.sort exports, e.g. deel-torchlip's GroupSort and
FullSort: Reshape, TopK, Reshape) and ReduceMax / ReduceMin over one axis (GroupSort-2: Reshape,
ReduceMin and ReduceMax over the pair, Concat). Each becomes an IR `Sort` (1-Lipschitz), a Slice of one,
or an `Extremum` of two Slices (see speccert.importers.lowering.reduce_extremum)."""

from __future__ import annotations

import numpy as np
import onnx

from speccert.importers.lowering import reduce_extremum
from speccert.importers.onnx_ops import Act, BuildContext, NotConvertible, Value, act, attrs, const, converter
from speccert.importers.onnx_ops.examples import model, one_node, unary
from speccert.ir.ops import Op, Slice, Sort


def _axis(ax: int, x: Act, what: str) -> int:
    r = len(x.shape) + 1
    ax = ax + r if ax < 0 else ax
    if not 0 < ax < r:
        raise NotConvertible(f"{what} over axis {ax} of a rank-{r} tensor (the batch axis or out of range)")
    return ax - 1


def _topk_examples() -> list:
    i64 = np.int64
    group_sort = [  # deel-torchlip GroupSort(4) over 8 channels, as torch.onnx writes it
        onnx.helper.make_node("Reshape", ["x", "s1"], ["r"]),
        onnx.helper.make_node("TopK", ["r", "k"], ["v", "i"], axis=2, largest=0, sorted=1),
        onnx.helper.make_node("Reshape", ["v", "s2"], ["y"]),
    ]
    shapes = {"s1": np.array([0, 2, 4, 3], i64), "s2": np.array([0, 8, 3], i64), "k": np.array([4], i64)}
    return [
        lambda: model(group_sort, (8, 3), shapes, 13),
        lambda: one_node("TopK", (3, 5), ["x", "k"], {"k": np.array([5], i64)}, opset=11, n_outputs=2),
        lambda: one_node("TopK", (6, 4), ["x", "k"], {"k": np.array([2], i64)}, 11, 2, axis=1, largest=0),
        lambda: one_node("TopK", (7,), opset=9, n_outputs=2, k=3),
    ]


@converter("TopK", examples=_topk_examples())
def convert_topk(ctx: BuildContext, node: onnx.NodeProto, inputs: list[Value | None]) -> list[Value | None]:
    """The k largest (or smallest) along a non-batch axis, sorted: Sort (1-Lipschitz), then a Slice of
    the first k when k is less than the axis' length. Indices are not computed."""
    x = act(inputs[0])
    a = attrs(node)
    ax = _axis(int(a.get("axis", -1)), x, "TopK")
    k = int(a["k"]) if ctx.opset < 10 else int(const(inputs[1], "K").reshape(-1)[0])
    n = x.shape[ax]
    if not 0 < k <= n:
        raise NotConvertible(f"TopK with k={k} on an axis of length {n}")
    if not int(a.get("sorted", 1)) and k < n:
        raise NotConvertible("TopK with sorted=0 (the order of the results is unspecified)")
    y = ctx.add(Sort(axis=ax, descending=bool(a.get("largest", 1))), [x])
    if k < n:
        y = ctx.add(Slice(axis=ax, start=0, stop=k), [y])
    return [y] + [None] * (len(node.output) - 1)


def _reduce_examples(op: str) -> list:
    return [
        unary(op, 13, (3, 2, 5), axes=[2], keepdims=1),
        unary(op, 11, (3, 6, 5), axes=[-1], keepdims=0),
        lambda: one_node(op, (3, 4, 5), ["x", "a"], {"a": np.array([1], np.int64)}, opset=18),
        unary(op, 13, (4, 1), axes=[2], keepdims=0),
    ]


def _reduce_extremum(
    ctx: BuildContext, node: onnx.NodeProto, inputs: list[Value | None], is_max: bool
) -> list[Value | None]:
    x = act(inputs[0], "data")
    a = attrs(node)
    if ctx.opset >= 18:
        given = len(inputs) > 1 and inputs[1] is not None
        axes = [int(v) for v in const(inputs[1], "axes").reshape(-1)] if given else []
    else:
        axes = [int(v) for v in a.get("axes", [])]
    if len(axes) != 1:
        raise NotConvertible(
            f"{node.op_type} over {len(axes) or 'all'} axes (one non-batch axis is supported)"
        )
    ax = _axis(axes[0], x, node.op_type)

    def emit(op: Op, v: Act) -> Act:
        return ctx.add(op, [v])

    def emit2(op: Op, u: Act, v: Act) -> Act:
        return ctx.add(op, [u, v])

    keep = bool(a.get("keepdims", 1))
    return [reduce_extremum(emit, emit2, x, x.shape, ax, is_max, keep)]


@converter("ReduceMax", examples=_reduce_examples("ReduceMax"))
def convert_reduce_max(
    ctx: BuildContext, node: onnx.NodeProto, inputs: list[Value | None]
) -> list[Value | None]:
    """Max over one non-batch axis: of a pair, Extremum of its two Slices; longer, Sort(descending) and
    its first entry (1-Lipschitz)."""
    return _reduce_extremum(ctx, node, inputs, is_max=True)


@converter("ReduceMin", examples=_reduce_examples("ReduceMin"))
def convert_reduce_min(
    ctx: BuildContext, node: onnx.NodeProto, inputs: list[Value | None]
) -> list[Value | None]:
    """Min over one non-batch axis: as ReduceMax, with Sort ascending."""
    return _reduce_extremum(ctx, node, inputs, is_max=False)
