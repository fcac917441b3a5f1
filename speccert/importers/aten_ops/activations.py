"""Elementwise activations of the IR's activation registry (speccert.ir.activations)."""

from __future__ import annotations

from typing import Any

from speccert.importers.aten_ops.base import (
    ConvertContext,
    TensorValue,
    Unsupported,
    aten_op,
    const_tensor,
    tensor_arg,
)
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
