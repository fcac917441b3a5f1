"""Converters of ops that move or reshape data without arithmetic: Flatten, Reshape, Transpose,
Squeeze, Unsqueeze, Concat, plus Constant and Shape (the start of exporters' shape sub-graphs).

The batch axis is symbolic: `Shape` of an activation yields BATCH at index 0, a sentinel that the folded
shape sub-graph carries (Gather, Concat, Unsqueeze...) into the target of a Reshape, where it means
"the batch axis". Every op must keep the batch axis first and untouched, or it is refused with a reason.
"""

from __future__ import annotations

import numpy as np
import onnx
import torch

from speccert.importers.onnx_ops import (
    Act,
    BuildContext,
    NotConvertible,
    Value,
    act,
    attrs,
    const,
    converter,
)
from speccert.importers.onnx_ops.examples import model, one_node, unary
from speccert.ir.ops import Affine, Concat, Pad, Reshape, Transpose

BATCH = 1_000_000_007
"""Sentinel for the symbolic batch size inside folded shape tensors."""


def _reshape(ctx: BuildContext, x: Act, shape: tuple[int, ...]) -> Act:
    return act(x) if shape == x.shape else ctx.add(Reshape(shape), [x])


@converter(
    "Flatten",
    examples=[
        unary("Flatten", 13, (2, 3, 4)),
        unary("Flatten", 9, (1, 3, 4), axis=2),
        unary("Flatten", 13, (5,), axis=-1),
    ],
)
def convert_flatten(
    ctx: BuildContext, node: onnx.NodeProto, inputs: list[Value | None]
) -> list[Value | None]:
    """Flatten(axis) -> [prod(d_0..d_{axis-1}), prod(rest)]; the batch stays separate only when the
    non-batch axes before `axis` all have size 1."""
    x = act(inputs[0])
    r = len(x.shape) + 1
    axis = int(attrs(node).get("axis", 1))
    axis = axis + r if axis < 0 else axis
    if axis == 0 or int(np.prod(x.shape[: axis - 1])) != 1:
        raise NotConvertible(f"Flatten(axis={axis}) would merge the batch axis with others")
    return [_reshape(ctx, x, (int(np.prod(x.shape[axis - 1 :])),))]


def _reshape_examples() -> list:
    shape_sub = [
        onnx.helper.make_node("Shape", ["x"], ["s"]),
        onnx.helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
        onnx.helper.make_node("Unsqueeze", ["n", "ax"], ["n1"]),
        onnx.helper.make_node("Concat", ["n1", "rest"], ["target"], axis=0),
        onnx.helper.make_node("Reshape", ["x", "target"], ["y"]),
    ]
    consts = {
        "zero": np.array(0, dtype=np.int64),
        "ax": np.array([0], dtype=np.int64),
        "rest": np.array([-1], dtype=np.int64),
    }
    return [
        lambda: one_node(
            "Reshape", (2, 3, 4), ["x", "s"], {"s": np.array([-1, 4, 6], dtype=np.int64)}, opset=13
        ),
        lambda: one_node(
            "Reshape", (2, 3, 4), ["x", "s"], {"s": np.array([0, 3, -1, 2], dtype=np.int64)}, opset=14
        ),
        lambda: model(shape_sub, (2, 3, 4), consts, 13),
    ]


@converter("Reshape", opsets=(8, 21), examples=_reshape_examples())
def convert_reshape(
    ctx: BuildContext, node: onnx.NodeProto, inputs: list[Value | None]
) -> list[Value | None]:
    """Reshape to a constant target whose first entry is the batch (0, -1, the BATCH sentinel, or 1 for a
    model with a fixed batch of 1)."""
    x = act(inputs[0], "data")
    target = [int(v) for v in const(inputs[1], "shape").reshape(-1)]
    allowzero = int(attrs(node).get("allowzero", 0))
    full_in = (BATCH, *x.shape)
    if not allowzero:
        target = [full_in[i] if v == 0 and i < len(full_in) else v for i, v in enumerate(target)]
    if not target:
        raise NotConvertible("reshape to a scalar drops the batch axis")
    first, rest = target[0], target[1:]
    numel = int(np.prod(x.shape))
    if BATCH in rest or any(v > BATCH // 2 and v != BATCH for v in target):
        raise NotConvertible("target shape mixes the batch size into other axes")
    if first == -1:
        if -1 in rest or int(np.prod(rest)) != numel:
            raise NotConvertible(f"target {target} does not keep the batch axis first")
    elif not (first == BATCH or first == 1 and ctx.batch_fixed_one):
        raise NotConvertible(f"target {target} does not keep the batch axis first")
    if rest.count(-1) > 1:
        raise NotConvertible(f"target {target} has several -1 entries")
    if -1 in rest:
        known = int(np.prod([v for v in rest if v != -1]))
        if known == 0 or numel % known:
            raise NotConvertible(f"cannot reshape {list(x.shape)} to {rest}")
        rest = [numel // known if v == -1 else v for v in rest]
    if int(np.prod(rest)) != numel:
        raise NotConvertible(f"cannot reshape {list(x.shape)} to {rest} per batch element")
    return [_reshape(ctx, x, tuple(rest))]


@converter(
    "Transpose",
    examples=[
        unary("Transpose", 13, (2, 3, 4), perm=[0, 3, 1, 2]),
        unary("Transpose", 8, (2, 3), perm=[0, 2, 1]),
    ],
)
def convert_transpose(
    ctx: BuildContext, node: onnx.NodeProto, inputs: list[Value | None]
) -> list[Value | None]:
    """A permutation that keeps axis 0 (the batch) in place."""
    x = act(inputs[0])
    r = len(x.shape) + 1
    perm = [int(p) for p in attrs(node).get("perm", list(range(r))[::-1])]
    perm = [p + r if p < 0 else p for p in perm]
    if sorted(perm) != list(range(r)):
        raise NotConvertible(f"perm {perm} is not a permutation of {r} axes")
    if perm[0] != 0:
        raise NotConvertible(f"perm {perm} moves the batch axis")
    if perm == list(range(r)):
        return [x]
    return [ctx.add(Transpose(tuple(p - 1 for p in perm[1:])), [x])]


def _axes(ctx: BuildContext, node: onnx.NodeProto, inputs: list[Value | None], rank: int) -> list[int] | None:
    a = attrs(node)
    if ctx.opset >= 13:
        if len(inputs) < 2 or inputs[1] is None:
            return None
        raw = [int(v) for v in const(inputs[1], "axes").reshape(-1)]
    elif "axes" in a:
        raw = [int(v) for v in a["axes"]]
    else:
        return None
    return sorted(v + rank if v < 0 else v for v in raw)


@converter(
    "Squeeze",
    examples=[
        unary("Squeeze", 11, (1, 3, 1), axes=[1, -1]),
        unary("Squeeze", 13, (3, 1, 2)),
        lambda: one_node("Squeeze", (1, 4), ["x", "a"], {"a": np.array([1], np.int64)}, opset=13),
    ],
)
def convert_squeeze(
    ctx: BuildContext, node: onnx.NodeProto, inputs: list[Value | None]
) -> list[Value | None]:
    """Drop size-1 non-batch axes (all of them when no axes are given)."""
    x = act(inputs[0])
    axes = _axes(ctx, node, inputs, len(x.shape) + 1)
    if axes is None:
        if ctx.batch_fixed_one:
            raise NotConvertible("Squeeze without axes would drop the fixed batch axis of size 1")
        axes = [i + 1 for i, d in enumerate(x.shape) if d == 1]
    if 0 in axes:
        raise NotConvertible("Squeeze of the batch axis")
    if any(x.shape[i - 1] != 1 for i in axes):
        raise NotConvertible(f"Squeeze of axes {axes} that do not have size 1")
    return [_reshape(ctx, x, tuple(d for i, d in enumerate(x.shape) if i + 1 not in axes))]


@converter(
    "Unsqueeze",
    examples=[
        unary("Unsqueeze", 11, (3, 4), axes=[1, -1]),
        lambda: one_node("Unsqueeze", (3,), ["x", "a"], {"a": np.array([2], np.int64)}, opset=13),
    ],
)
def convert_unsqueeze(
    ctx: BuildContext, node: onnx.NodeProto, inputs: list[Value | None]
) -> list[Value | None]:
    """Insert size-1 axes (indices refer to the output's axes); axis 0 would displace the batch."""
    x = act(inputs[0])
    out_rank = (
        len(x.shape)
        + 1
        + (len(const(inputs[1]).reshape(-1)) if ctx.opset >= 13 else len(attrs(node).get("axes", [])))
    )
    axes = _axes(ctx, node, inputs, out_rank)
    if not axes:
        raise NotConvertible("Unsqueeze without axes")
    if 0 in axes:
        raise NotConvertible("Unsqueeze at axis 0 displaces the batch axis")
    dims = list(x.shape)
    for ax in axes:
        dims.insert(ax - 1, 1)
    return [_reshape(ctx, x, tuple(dims))]


def _concat_examples() -> list:
    nodes = [
        onnx.helper.make_node("Relu", ["x"], ["r"]),
        onnx.helper.make_node("Sigmoid", ["x"], ["s"]),
        onnx.helper.make_node("Concat", ["x", "r", "s"], ["y"], axis=1),
    ]
    nodes2 = [
        onnx.helper.make_node("Relu", ["x"], ["r"]),
        onnx.helper.make_node("Concat", ["r", "x"], ["y"], axis=-1),
    ]
    nodes3 = [  # a class token expanded to the batch, then prepended (how ViTs are exported)
        onnx.helper.make_node("Shape", ["x"], ["s"]),
        onnx.helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
        onnx.helper.make_node("Unsqueeze", ["n", "ax"], ["n1"]),
        onnx.helper.make_node("Concat", ["n1", "rest"], ["shape"], axis=0),
        onnx.helper.make_node("Expand", ["cls", "shape"], ["c"]),
        onnx.helper.make_node("Relu", ["x"], ["r"]),
        onnx.helper.make_node("Concat", ["c", "r"], ["y"], axis=1),
    ]
    consts = {
        "cls": np.arange(4, dtype=np.float32).reshape(1, 1, 4),
        "zero": np.array(0, np.int64),
        "ax": np.array([0], np.int64),
        "rest": np.array([1, 4], np.int64),
    }
    return [
        lambda: model(nodes, (2, 3, 3), {}, 13),
        lambda: model(nodes2, (2, 3), {}, 8),
        lambda: model(nodes3, (3, 4), consts, 13),
    ]


@converter("Concat", examples=_concat_examples())
def convert_concat(ctx: BuildContext, node: onnx.NodeProto, inputs: list[Value | None]) -> list[Value | None]:
    """Concatenation of activations along a non-batch axis."""
    if any(not isinstance(v, Act) for v in inputs):
        return [_concat_with_constants(ctx, node, inputs)]
    xs = [act(v, "every Concat input") for v in inputs]
    r = len(xs[0].shape) + 1
    axis = int(attrs(node).get("axis", 1))
    axis = axis + r if axis < 0 else axis
    if axis == 0:
        raise NotConvertible("Concat along the batch axis")
    return [ctx.add(Concat(axis=axis - 1), xs)]


def _concat_with_constants(ctx: BuildContext, node: onnx.NodeProto, inputs: list[Value | None]) -> Act:
    """Constants (batch axis 1) before/after one block of activations: Pad with zeros, Affine adding
    the constants (a ViT's class token)."""
    kinds = "".join("x" if isinstance(v, Act) else "c" for v in inputs)
    if "x" not in kinds or "xc" in kinds and "cx" in kinds[kinds.index("xc") :]:
        raise NotConvertible("Concat with constants between activations")
    xs = [v for v in inputs if isinstance(v, Act)]
    r = len(xs[0].shape) + 1
    ax = int(attrs(node).get("axis", 1))
    ax = ax + r if ax < 0 else ax
    if ax == 0:
        raise NotConvertible("Concat along the batch axis")
    x = xs[0] if len(xs) == 1 else ctx.add(Concat(axis=ax - 1), xs)
    consts = []
    for v in inputs:
        if isinstance(v, Act):
            continue
        c = np.asarray(const(v), dtype=np.float32)
        if c.ndim != r or c.shape[0] != 1:
            raise NotConvertible("Concat with a constant that varies along the batch axis")
        consts.append(c[0])
    first = kinds.index("x")
    pads = [(0, 0)] * (r - 1)
    pads[ax - 1] = (
        sum(c.shape[ax - 1] for c in consts[:first]),
        sum(c.shape[ax - 1] for c in consts[first:]),
    )
    y = ctx.add(Pad(tuple(pads)), [x])
    shift = np.concatenate([*consts[:first], np.zeros(x.shape, np.float32), *consts[first:]], axis=ax - 1)
    return ctx.add(Affine(scale=torch.tensor(1.0), shift=torch.from_numpy(shift)), [y])


def _constant_examples() -> list:
    c = onnx.numpy_helper.from_array(np.full((3, 1), 2.0, dtype=np.float32), "c")
    nodes = [
        onnx.helper.make_node("Constant", [], ["c"], value=c),
        onnx.helper.make_node("Mul", ["x", "c"], ["y"]),
    ]
    nodes2 = [
        onnx.helper.make_node("Constant", [], ["c"], value_float=0.5),
        onnx.helper.make_node("Add", ["x", "c"], ["y"]),
    ]
    return [lambda: model(nodes, (3, 4), {}, 13), lambda: model(nodes2, (3, 4), {}, 13)]


@converter("Constant", examples=_constant_examples())
def convert_constant(
    ctx: BuildContext, node: onnx.NodeProto, inputs: list[Value | None]
) -> list[Value | None]:
    """A constant tensor from `value` or value_float(s) / value_int(s)."""
    a = attrs(node)
    if "value" in a:
        return [np.asarray(a["value"])]
    for key, dtype in (
        ("value_float", np.float32),
        ("value_floats", np.float32),
        ("value_int", np.int64),
        ("value_ints", np.int64),
    ):
        if key in a:
            return [np.asarray(a[key], dtype=dtype)]
    raise NotConvertible(f"Constant with {', '.join(a) or 'no value'} is not supported")


@converter("Shape", examples=[_reshape_examples()[2]])
def convert_shape(ctx: BuildContext, node: onnx.NodeProto, inputs: list[Value | None]) -> list[Value | None]:
    """The (static) shape of an activation, with the BATCH sentinel for the batch axis."""
    x = act(inputs[0])
    full = np.array([BATCH, *x.shape], dtype=np.int64)
    a = attrs(node)
    return [full[int(a.get("start", 0)) : a.get("end")]]
