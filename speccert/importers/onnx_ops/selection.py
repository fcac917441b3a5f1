"""Converters that select coordinates of an activation: Split and Slice along non-batch axes
(channel splits of ShuffleNet-style blocks, chunk). Each output is an IR `Slice`, 1-Lipschitz."""

from __future__ import annotations

import numpy as np
import onnx

from speccert.importers.onnx_ops import Act, BuildContext, NotConvertible, Value, act, attrs, const, converter
from speccert.importers.onnx_ops.examples import model, one_node, unary
from speccert.ir.ops import Slice


def _axis(a: int, x: Act) -> int:
    r = len(x.shape) + 1
    a = a + r if a < 0 else a
    if not 0 <= a < r:
        raise NotConvertible(f"axis {a} is out of range for a rank-{r} tensor")
    if a == 0:
        raise NotConvertible("selection along the batch axis")
    return a - 1


def _split_sizes(ctx: BuildContext, node: onnx.NodeProto, inputs: list[Value | None], n: int) -> list[int]:
    a = attrs(node)
    if ctx.opset >= 13 and len(inputs) > 1 and inputs[1] is not None:
        return [int(v) for v in const(inputs[1], "split").reshape(-1)]
    if ctx.opset < 13 and "split" in a:
        return [int(v) for v in a["split"]]
    k = len(node.output) if "num_outputs" not in a else int(a["num_outputs"])
    step = -(-n // k)  # opset 18: the last chunk may be smaller
    return [min(step, n - i * step) for i in range(k)]


def _split_examples() -> list:
    two = [
        onnx.helper.make_node("Split", ["x"], ["a", "b"], axis=1),
        onnx.helper.make_node("Relu", ["a"], ["ra"]),
        onnx.helper.make_node("Concat", ["b", "ra"], ["y"], axis=1),
    ]
    sizes = [
        onnx.helper.make_node("Split", ["x", "s"], ["a", "b", "c"], axis=-1),
        onnx.helper.make_node("Concat", ["c", "a", "b"], ["y"], axis=-1),
    ]
    attr_split = onnx.helper.make_node("Split", ["x"], ["a", "b", "c"], axis=2, split=[2, 4, 1])
    uneven = [
        onnx.helper.make_node("Split", ["x"], ["a", "b"], axis=1, num_outputs=2),
        onnx.helper.make_node("Concat", ["b", "a"], ["y"], axis=1),
    ]
    return [
        lambda: model(two, (4, 3, 3), {}, 13),
        lambda: model(sizes, (2, 7), {"s": np.array([2, 4, 1], np.int64)}, 13),
        lambda: model([attr_split, sizes[1]], (2, 7), {}, 11),
        lambda: model(uneven, (5, 2), {}, 18),
    ]


@converter("Split", examples=_split_examples())
def convert_split(ctx: BuildContext, node: onnx.NodeProto, inputs: list[Value | None]) -> list[Value | None]:
    """Consecutive pieces along a non-batch axis: one Slice per output."""
    x = act(inputs[0])
    ax = _axis(int(attrs(node).get("axis", 0)), x)
    sizes = _split_sizes(ctx, node, inputs, x.shape[ax])
    if sum(sizes) != x.shape[ax] or any(s < 0 for s in sizes) or len(sizes) != len(node.output):
        raise NotConvertible(f"split sizes {sizes} do not cover the axis of length {x.shape[ax]}")
    outs: list[Value | None] = []
    start = 0
    for s in sizes:
        outs.append(ctx.add(Slice(axis=ax, start=start, stop=start + s), [x], hint=f"/{len(outs)}"))
        start += s
    return outs


def _slice_examples() -> list:
    i64 = np.int64
    return [
        lambda: one_node(
            "Slice",
            (6, 3),
            ["x", "s", "e", "a"],
            {"s": np.array([2], i64), "e": np.array([5], i64), "a": np.array([1], i64)},
            opset=13,
        ),
        lambda: one_node(
            "Slice",
            (6, 5),
            ["x", "s", "e", "a", "st"],
            {
                "s": np.array([0, 1], i64),
                "e": np.array([9223372036854775807, -1], i64),
                "a": np.array([0, -1], i64),
                "st": np.array([1, 2], i64),
            },
            opset=11,
        ),
        unary("Slice", 9, (6, 4), starts=[1], ends=[4], axes=[1]),
    ]


@converter("Slice", examples=_slice_examples())
def convert_slice(ctx: BuildContext, node: onnx.NodeProto, inputs: list[Value | None]) -> list[Value | None]:
    """x[start:end:step] along non-batch axes with positive steps: one Slice per sliced axis."""
    x = act(inputs[0], "data")
    if ctx.opset < 10:
        a = attrs(node)
        starts, ends = list(a.get("starts", [])), list(a.get("ends", []))
        axes = list(a.get("axes", range(len(starts))))
        steps = [1] * len(starts)
    else:

        def ints(i: int) -> list[int] | None:
            if len(inputs) <= i or inputs[i] is None:
                return None
            return [int(v) for v in const(inputs[i], "slice argument").reshape(-1)]

        starts, ends = ints(1) or [], ints(2) or []
        axes = ints(3) or list(range(len(starts)))
        steps = ints(4) or [1] * len(starts)
    r = len(x.shape) + 1
    y = x
    for start, end, ax, step in zip(starts, ends, axes, steps, strict=True):
        if step <= 0:
            raise NotConvertible(f"slice with step {step} (only positive steps)")
        ax = ax + r if ax < 0 else ax
        if ax == 0:
            if start == 0 and end >= (1 << 62):
                continue  # the whole batch axis
            raise NotConvertible("slicing the batch axis")
        n = x.shape[ax - 1]
        lo, hi, _ = slice(start, end, step).indices(n)
        if (lo, hi, step) == (0, n, 1):
            continue
        y = ctx.add(Slice(axis=ax - 1, start=lo, stop=max(lo, hi), step=step), [act(y)])
    return [y]
