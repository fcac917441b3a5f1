"""Elementwise activations of the IR's activation registry (speccert.ir.activations)."""

from __future__ import annotations

from typing import Any

from speccert.importers.aten_ops.base import ConvertContext, TensorValue, Unsupported, aten_op, tensor_arg
from speccert.ir.ops import Activation


def _act(ctx: ConvertContext, x: Any, fn: str, alpha: float = 0.0) -> TensorValue:
    return ctx.emit(Activation(fn, alpha), [tensor_arg(x, f"{fn} input")])


@aten_op("aten.relu.default")
def relu(ctx: ConvertContext, args: list[Any]) -> TensorValue:
    """max(x, 0) -> Activation relu."""
    return _act(ctx, args[0], "relu")


@aten_op("aten.clamp_min.default")
def clamp_min(ctx: ConvertContext, args: list[Any]) -> TensorValue:
    """clamp_min(x, 0) is relu (other thresholds are not in the activation set)."""
    if float(args[1]) != 0.0:
        raise Unsupported(f"clamp_min at {args[1]} (only 0, i.e. relu, is supported)")
    return _act(ctx, args[0], "relu")


@aten_op("aten.clamp.default")
def clamp(ctx: ConvertContext, args: list[Any]) -> TensorValue:
    """clamp(x, 0, None) is relu."""
    if args[2] is not None or args[1] is None or float(args[1]) != 0.0:
        raise Unsupported(f"clamp to [{args[1]}, {args[2]}] (only clamp(min=0), i.e. relu, is supported)")
    return _act(ctx, args[0], "relu")


@aten_op("aten.leaky_relu.default")
def leaky_relu(ctx: ConvertContext, args: list[Any]) -> TensorValue:
    """leaky_relu(x, negative_slope) -> Activation leaky_relu."""
    return _act(ctx, args[0], "leaky_relu", float(args[1]))


@aten_op("aten.elu.default")
def elu(ctx: ConvertContext, args: list[Any]) -> TensorValue:
    """elu(x, alpha, scale, input_scale): scale = input_scale = 1 (plain ELU; SELU/CELU are not)."""
    if float(args[2]) != 1.0 or float(args[3]) != 1.0:
        raise Unsupported(f"elu with scale={args[2]}, input_scale={args[3]} (SELU/CELU); only plain ELU")
    return _act(ctx, args[0], "elu", float(args[1]))


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
    """x * Phi(x), the exact (erf) form; the tanh approximation is a different function."""
    if args[1] != "none":
        raise Unsupported(f"gelu with approximate={args[1]!r} (only the exact erf form)")
    return _act(ctx, args[0], "gelu")


@aten_op("aten.silu.default")
def silu(ctx: ConvertContext, args: list[Any]) -> TensorValue:
    """x * sigmoid(x) -> Activation silu."""
    return _act(ctx, args[0], "silu")
