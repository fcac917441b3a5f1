"""Elementwise activations of the IR's activation registry (speccert.ir.activations)."""

from __future__ import annotations

from typing import Any

from speccert.importers.aten_ops.base import (
    ConvertContext,
    TensorValue,
    Unsupported,
    aten_op,
    const_tensor,
    emitter,
    tensor_arg,
)
from speccert.importers.lowering import LoweringError, scaled_elu
from speccert.ir.ops import Activation, PRelu


def _act(ctx: ConvertContext, x: Any, fn: str, alpha: float = 0.0) -> TensorValue:
    return ctx.emit(Activation(fn, alpha), [tensor_arg(x, f"{fn} input")])


@aten_op("aten.relu.default")
def relu(ctx: ConvertContext, args: list[Any]) -> TensorValue:
    """max(x, 0) -> Activation relu."""
    return _act(ctx, args[0], "relu")


@aten_op("aten.leaky_relu.default")
def leaky_relu(ctx: ConvertContext, args: list[Any]) -> TensorValue:
    """leaky_relu(x, negative_slope) -> Activation leaky_relu."""
    return _act(ctx, args[0], "leaky_relu", float(args[1]))


def _scaled_elu(ctx: ConvertContext, x: Any, pre: float, alpha: float, post: float) -> TensorValue:
    try:
        return scaled_elu(emitter(ctx), tensor_arg(x, "elu input"), pre, alpha, post)
    except LoweringError as exc:
        raise Unsupported(str(exc)) from None


@aten_op("aten.elu.default")
def elu(ctx: ConvertContext, args: list[Any]) -> TensorValue:
    """elu(x, alpha, scale, input_scale) -> Activation elu, with Affines where a scale is not 1.

    scale * (x > 0 ? x : alpha (e^(input_scale x) - 1)) (speccert.importers.lowering.scaled_elu)."""
    alpha, scale, inp = (float(args[i]) if len(args) > i else 1.0 for i in (1, 2, 3))
    if scale == 1.0 and inp == 1.0:
        return _act(ctx, args[0], "elu", alpha)
    return _scaled_elu(ctx, args[0], inp, alpha * inp, scale / inp)


# torch's SELU constants (aten/src/ATen/native/Activation.cpp: SELU_ALPHA, SELU_SCALE)
SELU_ALPHA, SELU_SCALE = 1.6732632423543772848170429916717, 1.0507009873554804934193349852946


@aten_op("aten.selu.default")
def selu(ctx: ConvertContext, args: list[Any]) -> TensorValue:
    """selu(x) = 1.0507 * elu(x; 1.6733): slope 1.7581, not smooth."""
    return _scaled_elu(ctx, args[0], 1.0, SELU_ALPHA, SELU_SCALE)


@aten_op("aten.celu.default")
def celu(ctx: ConvertContext, args: list[Any]) -> TensorValue:
    """celu(x, alpha=1) = alpha * elu(x / alpha; 1): 1-Lipschitz, curvature 1/alpha."""
    alpha = float(args[1]) if len(args) > 1 else 1.0
    if not alpha > 0:
        raise Unsupported(f"celu with alpha {alpha:g} (alpha > 0 expected)")
    return _scaled_elu(ctx, args[0], 1.0 / alpha, 1.0, alpha)


@aten_op("aten.sigmoid.default")
def sigmoid(ctx: ConvertContext, args: list[Any]) -> TensorValue:
    """1 / (1 + exp(-x)) -> Activation sigmoid."""
    return _act(ctx, args[0], "sigmoid")


@aten_op("aten.tanh.default")
def tanh(ctx: ConvertContext, args: list[Any]) -> TensorValue:
    """tanh(x) -> Activation tanh."""
    return _act(ctx, args[0], "tanh")


@aten_op("aten.softplus.default")
def softplus(ctx: ConvertContext, args: list[Any]) -> TensorValue:
    """softplus(x, beta, threshold) = log(1 + exp(x)) for beta = 1, threshold = 20 (torch's default)."""
    if float(args[1]) != 1.0 or float(args[2]) != 20.0:
        raise Unsupported(f"softplus with beta={args[1]}, threshold={args[2]} (only beta=1, threshold=20)")
    return _act(ctx, args[0], "softplus")


@aten_op("aten.gelu.default")
def gelu(ctx: ConvertContext, args: list[Any]) -> TensorValue:
    """x * Phi(x): approximate='none' -> Activation gelu, 'tanh' -> Activation gelu_tanh."""
    if args[1] not in ("none", "tanh"):
        raise Unsupported(f"gelu with approximate={args[1]!r}")
    return _act(ctx, args[0], "gelu" if args[1] == "none" else "gelu_tanh")


@aten_op("aten.silu.default")
def silu(ctx: ConvertContext, args: list[Any]) -> TensorValue:
    """x * sigmoid(x) -> Activation silu."""
    return _act(ctx, args[0], "silu")


def _prelu(ctx: ConvertContext, args: list[Any]) -> TensorValue:
    x = tensor_arg(args[0], "prelu input")
    w = const_tensor(args[1], "prelu weight").detach().double().reshape(-1)
    if w.numel() == 1:
        return ctx.emit(Activation("leaky_relu", float(w[0])), [x])
    if x.ndim < 2 or w.numel() != x.shape[1]:
        raise Unsupported(f"prelu with {w.numel()} slopes on an input of shape {list(x.shape)}")
    return ctx.emit(PRelu(w.reshape((-1,) + (1,) * (x.ndim - 2))), [x])


@aten_op("aten.prelu.default")
def prelu(ctx: ConvertContext, args: list[Any]) -> TensorValue:
    """prelu(x, weight): one slope -> Activation leaky_relu; one per channel -> PRelu."""
    return _prelu(ctx, args)


@aten_op("aten._prelu_kernel.default")
def prelu_kernel(ctx: ConvertContext, args: list[Any]) -> TensorValue:
    """_prelu_kernel(x, weight) (prelu after decomposition): as prelu."""
    return _prelu(ctx, args)
