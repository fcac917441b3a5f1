"""Converters of piecewise-linear ONNX ops: Clip (ReLU6, hardtanh), Max/Min (with constants, or of
input-dependent tensors of one shape), Abs, Neg,
HardSigmoid, HardSwish. They lower to relu / clip / hardswish / abs activations between Affine
shifts (speccert.importers.lowering), each 1-Lipschitz (hardswish 3/2, HardSigmoid alpha)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
import torch

from speccert.importers.lowering import LoweringError, clip, hardsigmoid, max_const, min_const, scaled_elu
from speccert.importers.onnx_ops import Act, BuildContext, NotConvertible, Value, act, attrs, const, converter
from speccert.importers.onnx_ops.elementwise import _broadcast_const
from speccert.importers.onnx_ops.examples import model, one_node, randn, unary
from speccert.ir.ops import Activation, Affine, Extremum, Op, PRelu


def _emitter(ctx: BuildContext) -> Callable[[Op, Act], Act]:
    def emit(op: Op, v: Act) -> Act:
        return ctx.add(op, [v])

    return emit


def _scalar(v: Value | None, what: str) -> float | None:
    if v is None:
        return None
    c = const(v, what)
    if c.size != 1:
        raise NotConvertible(f"Clip {what} must be a scalar, got shape {list(c.shape)}")
    return float(c.reshape(-1)[0])


def _clip_examples() -> list:
    f = np.float32
    return [
        lambda: one_node("Clip", (3, 4, 4), ["x", "lo", "hi"], {"lo": f(0), "hi": f(6)}, opset=13),
        lambda: one_node("Clip", (5,), ["x", "lo", "hi"], {"lo": f(-1), "hi": f(1)}, opset=11),
        lambda: one_node("Clip", (5,), ["x", "", "hi"], {"hi": f(0.5)}, opset=12),
        lambda: one_node("Clip", (5,), ["x", "lo"], {"lo": f(-0.3)}, opset=21),
        unary("Clip", 9, (2, 5), min=0.0, max=6.0),
        unary("Clip", 8, (2, 5), min=-0.5),
    ]


@converter("Clip", examples=_clip_examples())
def convert_clip(ctx: BuildContext, node: onnx.NodeProto, inputs: list[Value | None]) -> list[Value | None]:
    """clamp(x, min, max) (ReLU6 = Clip(0, 6)): Affine(1, -min), clip(max - min), Affine(1, min)."""
    x = act(inputs[0])
    if ctx.opset < 11:
        a = attrs(node)
        low, high = a.get("min"), a.get("max")
        low = None if low is None or low <= -3.4e38 else float(low)
        high = None if high is None or high >= 3.4e38 else float(high)
    else:
        low = _scalar(inputs[1] if len(inputs) > 1 else None, "min")
        high = _scalar(inputs[2] if len(inputs) > 2 else None, "max")
    try:
        return [clip(_emitter(ctx), x, low, high)]
    except LoweringError as exc:
        raise NotConvertible(str(exc)) from None


def _extremum(
    ctx: BuildContext, node: onnx.NodeProto, inputs: list[Value | None], is_max: bool
) -> list[Value | None]:
    xs = [v for v in inputs if isinstance(v, Act)]
    cs = [v for v in inputs if isinstance(v, np.ndarray)]
    if not xs:
        raise NotConvertible(f"{node.op_type} of constants only")
    if any(v.shape != xs[0].shape for v in xs):
        raise NotConvertible(
            f"{node.op_type} of input-dependent tensors of different shapes "
            f"{[list(v.shape) for v in xs]} (broadcasting between them is not supported)"
        )
    x = xs[0]
    for other in xs[1:]:  # max(a, b, c) = max(max(a, b), c); each step the hypot rule
        x = ctx.add(Extremum(is_max=is_max), [x, other])
    if not cs:
        return [x]
    c = np.asarray(cs[0], dtype=np.float64)
    for more in cs[1:]:
        c = np.maximum(c, more) if is_max else np.minimum(c, more)
    t = _broadcast_const(x, c)
    return [(max_const if is_max else min_const)(_emitter(ctx), x, t)]


def _extremum_examples(op: str) -> list:
    halves = [
        onnx.helper.make_node("Split", ["x"], ["a", "b"], axis=1),
        onnx.helper.make_node(op, ["a", "b", "c"], ["y"]),
    ]
    return [
        lambda: one_node(op, (3, 4), ["x", "c"], {"c": np.float32(0.25)}, opset=13),
        lambda: one_node(op, (3, 4), ["c", "x"], {"c": randn(3, 1, seed=3)}, opset=8),
        lambda: model(halves, (6, 2), {"c": np.float32(-0.1)}, 13),
    ]


@converter("Max", examples=_extremum_examples("Max"))
def convert_max(ctx: BuildContext, node: onnx.NodeProto, inputs: list[Value | None]) -> list[Value | None]:
    """max(x, c) with c constant: c + relu(x - c); max(a, b) of two input-dependent tensors: Extremum
    (hypot rule; a MaxMin of two halves becomes a Sort, speccert.importers.sorting)."""
    return _extremum(ctx, node, inputs, is_max=True)


@converter("Min", examples=_extremum_examples("Min"))
def convert_min(ctx: BuildContext, node: onnx.NodeProto, inputs: list[Value | None]) -> list[Value | None]:
    """min(x, c) with c constant: c - relu(c - x); min(a, b) of two input-dependent tensors: Extremum."""
    return _extremum(ctx, node, inputs, is_max=False)


@converter("Abs", examples=[unary("Abs", 13), unary("Abs", 8)])
def convert_abs(ctx: BuildContext, node: onnx.NodeProto, inputs: list[Value | None]) -> list[Value | None]:
    """|x| -> Activation('abs') (1-Lipschitz)."""
    return [ctx.add(Activation("abs"), [act(inputs[0])])]


@converter("Neg", examples=[unary("Neg", 13), unary("Neg", 8)])
def convert_neg(ctx: BuildContext, node: onnx.NodeProto, inputs: list[Value | None]) -> list[Value | None]:
    """-x -> Affine(-1, 0)."""
    return [ctx.add(Affine(scale=torch.tensor(-1.0), shift=torch.tensor(0.0)), [act(inputs[0])])]


@converter("HardSigmoid", examples=[unary("HardSigmoid", 13), unary("HardSigmoid", 8, alpha=1 / 6, beta=0.5)])
def convert_hardsigmoid(
    ctx: BuildContext, node: onnx.NodeProto, inputs: list[Value | None]
) -> list[Value | None]:
    """max(0, min(1, alpha x + beta)) (defaults 0.2, 0.5): Affine(alpha, beta), clip(1)."""
    a = attrs(node)
    return [hardsigmoid(_emitter(ctx), act(inputs[0]), float(a.get("alpha", 0.2)), float(a.get("beta", 0.5)))]


@converter("HardSwish", opsets=(14, 21), examples=[unary("HardSwish", 14)])
def convert_hardswish(
    ctx: BuildContext, node: onnx.NodeProto, inputs: list[Value | None]
) -> list[Value | None]:
    """x * max(0, min(1, x / 6 + 1/2)) -> Activation('hardswish') (3/2-Lipschitz)."""
    return [ctx.add(Activation("hardswish"), [act(inputs[0])])]


def _prelu_examples() -> list:
    return [
        lambda: one_node("PRelu", (3, 4, 4), ["x", "s"], {"s": randn(3, 1, 1, seed=2)}, opset=9),
        lambda: one_node("PRelu", (5,), ["x", "s"], {"s": np.array([0.25], np.float32)}, opset=16),
    ]


@converter("PRelu", examples=_prelu_examples())
def convert_prelu(ctx: BuildContext, node: onnx.NodeProto, inputs: list[Value | None]) -> list[Value | None]:
    """x for x >= 0, slope * x below (slope constant): one slope -> Activation leaky_relu, a slope per
    channel or element -> PRelu (max(1, max|slope|)-Lipschitz)."""
    x = act(inputs[0])
    s = const(inputs[1] if len(inputs) > 1 else None, "slope")
    if s.size == 1:
        return [ctx.add(Activation("leaky_relu", float(s.reshape(-1)[0])), [x])]
    return [ctx.add(PRelu(_broadcast_const(x, s)), [x])]


# ONNX's defaults (float attributes: these are the float32 values a file holds when it omits them)
SELU_ALPHA, SELU_GAMMA = 1.67326319217681884765625, 1.05070102214813232421875


@converter(
    "Selu",
    opsets=(8, 21),
    examples=[unary("Selu", 8, (2, 5)), unary("Selu", 13, (3, 4), alpha=0.5, gamma=2.0)],
)
def convert_selu(ctx: BuildContext, node: onnx.NodeProto, inputs: list[Value | None]) -> list[Value | None]:
    """gamma * (x > 0 ? x : alpha (e^x - 1)): elu(alpha), Affine(gamma) (slope gamma * max(1, alpha))."""
    a = attrs(node)
    alpha, gamma = float(a.get("alpha", SELU_ALPHA)), float(a.get("gamma", SELU_GAMMA))
    try:
        return [scaled_elu(_emitter(ctx), act(inputs[0]), 1.0, alpha, gamma)]
    except LoweringError as exc:
        raise NotConvertible(str(exc)) from None


@converter(
    "Celu", opsets=(12, 21), examples=[unary("Celu", 12, (2, 5)), unary("Celu", 12, (3, 4), alpha=0.3)]
)
def convert_celu(ctx: BuildContext, node: onnx.NodeProto, inputs: list[Value | None]) -> list[Value | None]:
    """max(0, x) + min(0, alpha (e^(x/alpha) - 1)) = alpha elu(x / alpha; 1): Affine(1/alpha), elu(1),
    Affine(alpha) (1-Lipschitz, curvature 1/alpha)."""
    alpha = float(attrs(node).get("alpha", 1.0))
    if not alpha > 0:
        raise NotConvertible(f"Celu with alpha {alpha:g} (the operator divides by it; alpha > 0 expected)")
    try:
        return [scaled_elu(_emitter(ctx), act(inputs[0]), 1.0 / alpha, 1.0, alpha)]
    except LoweringError as exc:
        raise NotConvertible(str(exc)) from None
