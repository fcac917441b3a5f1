"""The contract every ATen converter meets, and the registry that holds them.

A converter turns one node of a `torch.export` graph (core ATen op set, see
`speccert.importers.aten_ops.walk`) into zero or more IR nodes. It is registered under the full ATen
overload name (`"aten.convolution.default"`) by `@aten_op(...)`; a name registered twice raises.

Values flowing along the graph are either `TensorValue`s (a tensor that depends on the model's input:
an IR node name plus its full shape, batch axis 0 included) or constants (parameters, buffers, Python
numbers, lists, constant tensors). Every ATen argument arrives positionally and completed with the
schema's defaults, so a converter reads `args[i]` in the order of the op's schema.

A converter may:
- return a `TensorValue` (the node's result), a tuple of values (multi-output ops such as
  `max_pool2d_with_indices`), or a constant;
- raise `Unsupported(reason)` when the op is outside what the IR can express (the walk collects
  every such node, with its name and reason, before failing).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from speccert.ir.graph import Node
from speccert.ir.ops import ConvTranspose, Linear, Op
from speccert.registry import Registry

Tensor = torch.Tensor


@dataclass(frozen=True)
class TensorValue:
    """A model-input-dependent tensor: the IR node `name` that computes it, its full `shape`
    (with the batch axis, of the trace's batch size, at 0) and dtype."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype = torch.float32

    @property
    def ndim(self) -> int:
        return len(self.shape)


@dataclass(frozen=True)
class NotAvailable:
    """A result no IR node computes (e.g. the indices of max_pool2d_with_indices)."""

    what: str
    upstream_failure: bool = False  # the result of an op already reported as unsupported


@dataclass(frozen=True)
class PendingCircularPad:
    """`pad(x, mode='circular')`, waiting for the convolution it feeds: together they are one IR Conv
    with padding_mode 'circular' (how nn.Conv2d(padding_mode='circular') is exported)."""

    value: TensorValue
    pads: tuple[tuple[int, int], ...]  # per spatial axis (begin, end)


class Unsupported(Exception):
    """Raised by a converter: this node cannot become IR nodes. The message says why."""


class ConvertContext:
    """What a converter sees: the node being converted and a way to add IR nodes."""

    def __init__(self, batch: int, dtype: torch.dtype = torch.float32, share: bool = False) -> None:
        self.batch = batch
        self.dtype = dtype
        self.share = share  # the program is private to the importer (a .pt2): use its tensors, no copy
        self.nodes: list[Node] = []
        self.node_name = ""
        self.param_names: dict[int, str] = {}  # id(tensor) -> its state_dict key, for node names
        self.fixed: set[int] = set()  # id(tensor) of fixed layers' weights (and constants folded from them)
        self._names: set[str] = set()
        self._consts: dict[int, tuple[Tensor, Tensor]] = {}  # id(source) -> (source kept alive, copy)

    def unique(self, base: str) -> str:
        name, k = base, 1
        while name in self._names or name == "input":
            k += 1
            name = f"{base}_{k}"
        self._names.add(name)
        return name

    def emit(self, op: Op, inputs: Sequence[TensorValue], like: Tensor | None = None) -> TensorValue:
        """Append an IR node applying `op` to `inputs`; its shape is computed by running `op` on zeros.

        `like` (a parameter of the op) names the node after the module that owns it, e.g.
        `layer1.0.conv1`, so parameter names in the graph match the model's state_dict keys. A Linear or
        ConvTranspose whose `like` is a weight the archive records as fixed (speccert's .pt2 writer: an
        upsampling's constant) is `fixed`.
        """
        if like is not None and id(like) in self.fixed and isinstance(op, (Linear, ConvTranspose)):
            op = dataclasses.replace(op, fixed=True)
        base = self.node_name
        if like is not None and id(like) in self.param_names:
            key = self.param_names[id(like)]
            base = (
                key.rsplit(".", 1)[0] if "." in key else base
            )  # 'conv.weight' -> 'conv'; 'weight' -> fx name
        name = self.unique(base)
        with torch.no_grad():
            zeros = [torch.zeros((1, *v.shape[1:]), dtype=v.dtype) for v in inputs]
            y = op.forward(*zeros)
        self.nodes.append(Node(name, op, tuple(v.name for v in inputs), tuple(y.shape[1:])))
        return TensorValue(name, (self.batch, *y.shape[1:]), y.dtype)

    def const(self, t: Tensor) -> Tensor:
        """A parameter for an IR op: a detached float copy on the CPU, owned by the graph (a model on a
        GPU is imported the same way; `Graph.to(device)` moves it back)."""
        key = id(t)
        if key not in self._consts:  # a weight used twice (shared) stays one tensor in the graph
            c = t.detach().to(device="cpu", dtype=self.dtype)
            self._consts[key] = (t, c.contiguous() if self.share else c.clone().contiguous())
        return self._consts[key][1]


Converter = Callable[[ConvertContext, list[Any]], Any]

ATEN_OPS: Registry[str, Converter] = Registry("ATen converter")


def aten_op(*names: str) -> Callable[[Converter], Converter]:
    """Register `fn` for each ATen overload name (`"aten.relu.default"`); a name already taken raises."""

    def decorator(fn: Converter) -> Converter:
        for name in names:
            ATEN_OPS.add(name, fn)
        return fn

    return decorator


def tensor_arg(v: Any, what: str) -> TensorValue:
    """The argument must be an input-dependent tensor (not a constant)."""
    if isinstance(v, PendingCircularPad):
        raise Unsupported(
            f"{what} is circularly padded; circular padding is supported only right before a convolution"
        )
    if not isinstance(v, TensorValue):
        raise Unsupported(f"{what} must be computed from the model input, got a constant")
    return v


def const_tensor(v: Any, what: str) -> Tensor:
    """The argument must be a constant tensor or number (weights, a normalisation mean)."""
    if isinstance(v, TensorValue):
        raise Unsupported(f"{what} depends on the model input; only constants are supported here")
    if isinstance(v, Tensor):
        return v
    if isinstance(v, (int, float, bool)):
        return torch.tensor(float(v))
    raise Unsupported(f"{what} is {type(v).__name__}, expected a tensor")


def axis(dim: int, ndim: int, what: str = "axis") -> int:
    """Normalise a possibly negative axis; the batch axis (0) may not be touched."""
    d = dim + ndim if dim < 0 else dim
    if not 0 <= d < ndim:
        raise Unsupported(f"{what} {dim} is out of range for a {ndim}-d tensor")
    if d == 0:
        raise Unsupported(f"{what} is the batch axis; the batch must stay at axis 0 untouched")
    return d


def ints(v: Any, n: int) -> tuple[int, ...]:
    """An int or a list of ints (an empty list means unset) expanded to `n` entries."""
    if isinstance(v, int):
        return (v,) * n
    vals = tuple(int(x) for x in v)
    return vals * n if len(vals) == 1 else vals


def emitter(ctx: ConvertContext) -> Callable[[Op, TensorValue], TensorValue]:
    """`emit(op, v)`: append the one-input node `op` applied to `v` (the lowerings' callback)."""

    def emit(op: Op, v: TensorValue) -> TensorValue:
        return ctx.emit(op, [v])

    return emit


def schema_args(target: torch._ops.OpOverload, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Any]:
    """All schema arguments in order: positional, then keyword-only, defaults filled in."""
    out: list[Any] = []
    for i, a in enumerate(target._schema.arguments):
        if i < len(args) and not a.kwarg_only:
            out.append(args[i])
        elif a.name in kwargs:
            out.append(kwargs[a.name])
        elif a.has_default_value():
            out.append(a.default_value)
        else:
            out.append(None)
    return out
