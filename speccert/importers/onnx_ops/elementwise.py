"""Converters of elementwise ONNX ops: arithmetic with constants (-> Affine), residual Add,
activations, BatchNormalization, Identity/Dropout/Cast, Softmax/LogSoftmax."""

from __future__ import annotations

import numpy as np
import onnx
import torch

from speccert.importers.lowering import centering_axes
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
from speccert.importers.onnx_ops.examples import model, one_node, randn, unary
from speccert.importers.onnx_ops.linear import tensor
from speccert.importers.problems import product_reason
from speccert.ir.ops import Activation, Add, Affine, BatchNorm, Center, Softmax


def _broadcast_const(x: Act, c: np.ndarray) -> torch.Tensor:
    """Constant `c` as a tensor broadcastable to x's shape without the batch axis, or refuse when it
    would add axes or enlarge x (then the op is no longer a map of x alone)."""
    c = np.asarray(c, dtype=np.float64)
    if c.ndim > len(x.shape) + 1:
        raise NotConvertible(
            f"constant of rank {c.ndim} broadcasts beyond the input's rank {len(x.shape) + 1}"
        )
    if c.ndim == len(x.shape) + 1:
        if c.shape[0] != 1:
            raise NotConvertible("constant with one entry per batch element is not supported")
        c = c[0]
    try:
        shape = np.broadcast_shapes(c.shape, x.shape)
    except ValueError:
        raise NotConvertible(
            f"constant of shape {list(c.shape)} does not broadcast to {list(x.shape)}"
        ) from None
    if tuple(shape) != tuple(x.shape):
        raise NotConvertible(f"constant of shape {list(c.shape)} would enlarge the input {list(x.shape)}")
    # float64: 1/c of a Div is not a float32 number, and the certificate is of the file's function
    return torch.from_numpy(np.array(c, dtype=np.float64, copy=True))


def _affine(
    ctx: BuildContext, x: Act, scale: np.ndarray | float, shift: np.ndarray | float, hint: str = ""
) -> Act:
    s = _broadcast_const(x, np.asarray(scale))
    t = _broadcast_const(x, np.asarray(shift))
    return ctx.add(Affine(scale=s, shift=t), [x], hint=hint)


def _binary_examples(op: str) -> list:
    c = randn(3, 1, 1, seed=1) + 2.0
    return [
        lambda: one_node(op, (3, 4, 4), ["x", "c"], {"c": c}, opset=13),
        lambda: one_node(op, (3, 4, 4), ["c", "x"], {"c": np.float32(1.5)}, opset=7 + 1),
        lambda: one_node(op, (5,), ["x", "c"], {"c": randn(1, 5, seed=2) + 3.0}, opset=14),
    ]


def _two_activations(op: str) -> list:
    nodes = [onnx.helper.make_node("Relu", ["x"], ["r"]), onnx.helper.make_node(op, ["x", "r"], ["y"])]
    return [lambda: model(nodes, (2, 3), {}, 13)]


@converter("Add", examples=_binary_examples("Add") + _two_activations("Add"))
def convert_add(ctx: BuildContext, node: onnx.NodeProto, inputs: list[Value | None]) -> list[Value | None]:
    """x + c -> Affine(1, c); x + y (same shape) -> Add (residual)."""
    a, b = inputs[0], inputs[1]
    if isinstance(a, Act) and isinstance(b, Act):
        if a.shape != b.shape:
            raise NotConvertible(
                f"Add of activations with different shapes {list(a.shape)} and {list(b.shape)}"
            )
        return [ctx.add(Add(), [a, b])]
    x, c = (a, const(b)) if isinstance(a, Act) else (act(b), const(a))
    return [_affine(ctx, x, 1.0, c)]


@converter("Sub", examples=_binary_examples("Sub") + _two_activations("Sub"))
def convert_sub(ctx: BuildContext, node: onnx.NodeProto, inputs: list[Value | None]) -> list[Value | None]:
    """x - c -> Affine(1, -c); c - x -> Affine(-1, c); x - y -> Add(x, Affine(-1, 0)(y));
    x - ReduceMean(x, axes, keepdims) -> Center(axes) (speccert.importers.lowering.centering_axes)."""
    a, b = inputs[0], inputs[1]
    if isinstance(a, Act) and isinstance(b, Act):
        axes = centering_axes(ctx.nodes, a.name, b.name, a.shape, b.shape)
        if axes is not None:
            return [ctx.add(Center(axes), [a])]
        if a.shape != b.shape:
            raise NotConvertible(
                f"Sub of activations with different shapes {list(a.shape)} and {list(b.shape)}"
            )
        neg = _affine(ctx, b, -1.0, 0.0, hint="/neg")
        return [ctx.add(Add(), [a, neg])]
    if isinstance(a, Act):
        return [_affine(ctx, a, 1.0, -const(b).astype(np.float64))]
    return [_affine(ctx, act(b), -1.0, const(a))]


@converter("Mul", examples=_binary_examples("Mul"))
def convert_mul(ctx: BuildContext, node: onnx.NodeProto, inputs: list[Value | None]) -> list[Value | None]:
    """x * c -> Affine(c, 0). A product of two activations is not Lipschitz-bounded."""
    a, b = inputs[0], inputs[1]
    if isinstance(a, Act) and isinstance(b, Act):
        raise NotConvertible(product_reason(a.shape, b.shape))
    x, c = (a, const(b)) if isinstance(a, Act) else (act(b), const(a))
    return [_affine(ctx, x, c, 0.0)]


@converter("Div", examples=[_binary_examples("Div")[0], _binary_examples("Div")[2]])
def convert_div(ctx: BuildContext, node: onnx.NodeProto, inputs: list[Value | None]) -> list[Value | None]:
    """x / c -> Affine(1/c, 0) (input normalisation). c / x is not affine."""
    if not isinstance(inputs[0], Act):
        raise NotConvertible("division by an activation is not Lipschitz")
    c = const(inputs[1], "divisor").astype(np.float64)
    if not np.all(c != 0):
        raise NotConvertible("division by a constant containing zeros")
    return [_affine(ctx, inputs[0], 1.0 / c, 0.0)]


def _activation(
    op_type: str,
    fn: str,
    default_alpha: float = 0.0,
    opsets: tuple[int, int] = (8, 21),
    examples: list | None = None,
) -> None:
    def convert(ctx: BuildContext, node: onnx.NodeProto, inputs: list[Value | None]) -> list[Value | None]:
        alpha = float(attrs(node).get("alpha", default_alpha))
        return [ctx.add(Activation(fn, alpha), [act(inputs[0])])]

    convert.__name__ = f"convert_{op_type.lower()}"
    convert.__doc__ = f"ONNX {op_type} -> Activation('{fn}')."
    converter(op_type, opsets, examples=examples or [unary(op_type, opset=max(opsets[0], 13))])(convert)


_activation("Relu", "relu", examples=[unary("Relu", 8), unary("Relu", 14)])
_activation(
    "LeakyRelu", "leaky_relu", 0.01, examples=[unary("LeakyRelu", 13), unary("LeakyRelu", 16, alpha=0.2)]
)
_activation("Elu", "elu", 1.0, examples=[unary("Elu", 13), unary("Elu", 13, alpha=0.5)])
_activation("Sigmoid", "sigmoid")
_activation("Tanh", "tanh")
_activation("Softplus", "softplus")


@converter("Gelu", opsets=(20, 21), examples=[unary("Gelu", 20), unary("Gelu", 20, approximate="tanh")])
def convert_gelu(ctx: BuildContext, node: onnx.NodeProto, inputs: list[Value | None]) -> list[Value | None]:
    """Gelu: approximate='none' (erf form) -> Activation('gelu'), 'tanh' -> Activation('gelu_tanh')."""
    mode = attrs(node).get("approximate", "none")
    if mode not in ("none", "tanh"):
        raise NotConvertible(f"Gelu approximate={mode!r}")
    return [ctx.add(Activation("gelu" if mode == "none" else "gelu_tanh"), [act(inputs[0])])]


@converter("Identity", examples=[unary("Identity", 13), unary("Identity", 8)])
def convert_identity(
    ctx: BuildContext, node: onnx.NodeProto, inputs: list[Value | None]
) -> list[Value | None]:
    """No IR node: the output is the input."""
    return [act(inputs[0])]


def _dropout_examples() -> list:
    return [
        unary("Dropout", 13),
        unary("Dropout", 10, ratio=0.3),
        lambda: one_node("Dropout", (4,), ["x", "r"], {"r": np.float32(0.5)}, opset=12),
    ]


@converter("Dropout", examples=_dropout_examples())
def convert_dropout(
    ctx: BuildContext, node: onnx.NodeProto, inputs: list[Value | None]
) -> list[Value | None]:
    """Inference-mode dropout is the identity; training_mode=1 is refused. The mask output is
    left undefined (a consumer of it is reported)."""
    if (
        len(inputs) > 2
        and inputs[2] is not None
        and bool(np.asarray(const(inputs[2], "training_mode")).any())
    ):
        raise NotConvertible("Dropout in training mode is random")
    return [act(inputs[0])] + [None] * (len(node.output) - 1)


@converter("Cast", examples=[unary("Cast", 13, to=onnx.TensorProto.FLOAT)])
def convert_cast(ctx: BuildContext, node: onnx.NodeProto, inputs: list[Value | None]) -> list[Value | None]:
    """A cast of an activation to a float type is the identity at the IR's precision."""
    to = int(attrs(node).get("to", 0))
    if to not in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE):
        raise NotConvertible(
            f"Cast of an activation to {onnx.TensorProto.DataType.Name(to)} is not Lipschitz"
        )
    return [act(inputs[0])]


def _bn_examples() -> list:
    c = 3
    stats = {
        "s": randn(c, seed=1),
        "b": randn(c, seed=2),
        "m": randn(c, seed=3),
        "v": np.abs(randn(c, seed=4)) + 0.5,
    }
    ins = ["x", "s", "b", "m", "v"]
    return [
        lambda: one_node("BatchNormalization", (c, 4, 4), ins, stats, opset=9, epsilon=1e-3),
        lambda: one_node("BatchNormalization", (c,), ins, stats, opset=15),
        lambda: one_node("BatchNormalization", (c, 5), ins, stats, opset=8),
    ]


@converter("BatchNormalization", examples=_bn_examples())
def convert_batchnorm(
    ctx: BuildContext, node: onnx.NodeProto, inputs: list[Value | None]
) -> list[Value | None]:
    """Inference batch norm over axis 1: (x - mean) / sqrt(var + eps) * scale + B."""
    a = attrs(node)
    if a.get("training_mode", 0):
        raise NotConvertible("BatchNormalization in training mode uses batch statistics")
    if a.get("spatial", 1) != 1:
        raise NotConvertible("BatchNormalization with spatial=0 is not supported")
    x = act(inputs[0], "X")
    if not x.shape:
        raise NotConvertible("BatchNormalization needs a channel axis")
    scale, bias, mean, var = (
        const(v, n) for v, n in zip(inputs[1:5], ("scale", "B", "mean", "var"), strict=False)
    )
    c = x.shape[0]
    if any(np.size(t) != c for t in (scale, bias, mean, var)):
        raise NotConvertible(f"statistics do not have one entry per channel ({c})")
    op = BatchNorm(
        mean=tensor(mean.reshape(c)),
        var=tensor(var.reshape(c)),
        weight=tensor(scale.reshape(c)),
        bias=tensor(bias.reshape(c)),
        eps=float(a.get("epsilon", 1e-5)),
    )
    return [ctx.add(op, [x])] + [None] * (len(node.output) - 1)


def _softmax(
    ctx: BuildContext, node: onnx.NodeProto, inputs: list[Value | None], log: bool
) -> list[Value | None]:
    x = act(inputs[0])
    r = len(x.shape) + 1
    axis = int(attrs(node).get("axis", -1 if ctx.opset >= 13 else 1))
    axis = axis + r if axis < 0 else axis
    if axis == 0:
        raise NotConvertible("softmax over the batch axis")
    # Before opset 13 the op flattens axes [axis, r) into one: the last axis only if the others are 1.
    if ctx.opset < 13 and int(np.prod(x.shape[axis - 1 : -1])) != 1 or ctx.opset >= 13 and axis != r - 1:
        raise NotConvertible("softmax over an axis other than the last is not supported")
    return [ctx.add(Softmax(log=log), [x])]


@converter(
    "Softmax",
    examples=[
        unary("Softmax", 13, x_shape=(10,)),
        unary("Softmax", 11, x_shape=(10,)),
        unary("Softmax", 8, x_shape=(1, 7), axis=2),
    ],
)
def convert_softmax(
    ctx: BuildContext, node: onnx.NodeProto, inputs: list[Value | None]
) -> list[Value | None]:
    """Softmax over the last axis (allowed only as the model's output; the graph marks it elsewhere)."""
    return _softmax(ctx, node, inputs, log=False)


@converter(
    "LogSoftmax", examples=[unary("LogSoftmax", 13, x_shape=(10,)), unary("LogSoftmax", 9, x_shape=(6,))]
)
def convert_log_softmax(
    ctx: BuildContext, node: onnx.NodeProto, inputs: list[Value | None]
) -> list[Value | None]:
    """LogSoftmax over the last axis (output only)."""
    return _softmax(ctx, node, inputs, log=True)
