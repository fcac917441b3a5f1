"""ONNX operator converters: one function per ONNX op, registered by (domain, op_type, opset range).

A converter receives the build context, the ONNX node and its input values, and returns one value per
node output. A value is either an `Act` (a tensor that depends on the model input: an IR node's output,
whose shape excludes the batch axis) or a numpy array (a constant, already folded). Converters add IR
nodes with `ctx.add(op, inputs)`. A converter that cannot express a node in the closed IR raises
`NotConvertible(reason)`; the importer collects every such node before failing (shared/DESIGN.md).

Nodes whose inputs are all constants never reach a converter: the importer folds them with numpy
(onnx's reference evaluator), which is how exporter noise such as Shape -> Gather -> Concat -> Reshape
imports cleanly. Each registration carries one or more example models (one node built with
`onnx.helper`), so tests parametrised over `ONNX_OPS` check every converter against onnxruntime.

    >>> @converter("Relu", opsets=(8, 21), examples=[lambda: unary_model("Relu")])  # doctest: +SKIP
    ... def convert_relu(ctx, node, inputs): return [ctx.add(Activation("relu"), [act(inputs[0])])]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import onnx
import torch

from speccert.ir.graph import Node
from speccert.ir.ops import Op
from speccert.registry import Registry

MIN_OPSET = 8
MAX_OPSET = 21


class NotConvertible(Exception):
    """Raised by a converter: this node has no equivalent in the closed IR; `reason` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Act:
    """A model-input-dependent tensor: the output of IR node `name`, `shape` without the batch axis."""

    name: str
    shape: tuple[int, ...]


Value = Act | np.ndarray


class BuildContext(Protocol):
    """What converters may use from the importer."""

    opset: int
    batch_fixed_one: bool
    nodes: list[Node]  # the IR nodes added so far (read by converters that recognise a pattern)

    def add(self, op: Op, inputs: Sequence[Act], hint: str = "") -> Act: ...

    def param(self, a: np.ndarray) -> torch.Tensor:
        """A float32 parameter tensor from constant `a`: `a`'s own memory when it is an initializer
        that only this node reads (no copy of a 411 MB VGG layer), otherwise a copy."""
        ...


ConvertFn = Callable[[BuildContext, onnx.NodeProto, list["Value | None"]], list["Value | None"]]
ExampleFn = Callable[[], onnx.ModelProto]


@dataclass(frozen=True)
class Converter:
    """A registered converter with the example models its differential tests run."""

    op_type: str
    domain: str
    opsets: tuple[int, int]
    fn: ConvertFn
    examples: tuple[ExampleFn, ...] = field(default=())


ConverterKey = tuple[str, str, tuple[int, int]]
ONNX_OPS: Registry[ConverterKey, Converter] = Registry("onnx converter")


def converter(
    op_type: str,
    opsets: tuple[int, int] = (MIN_OPSET, MAX_OPSET),
    domain: str = "",
    examples: Sequence[ExampleFn] = (),
) -> Callable[[ConvertFn], ConvertFn]:
    """Register `fn` as the converter of `op_type` for opsets lo..hi (inclusive). A duplicate key, or a
    range overlapping an existing one for the same op, raises KeyError."""
    lo, hi = opsets
    if lo > hi:
        raise ValueError(f"empty opset range {opsets} for {op_type}")

    def decorator(fn: ConvertFn) -> ConvertFn:
        key = (domain, op_type, (lo, hi))
        for d, o, (a, b) in ONNX_OPS:
            if (d, o) == (domain, op_type) and (d, o, (a, b)) != key and a <= hi and lo <= b:
                raise KeyError(f"onnx converter: {op_type} opsets {lo}-{hi} overlap the registered {a}-{b}")
        ONNX_OPS.add(key, Converter(op_type, domain, (lo, hi), fn, tuple(examples)))
        return fn

    return decorator


def find_converter(domain: str, op_type: str, opset: int) -> Converter | None:
    """The converter for `op_type` at `opset`, or None."""
    domain = "" if domain == "ai.onnx" else domain
    for (d, o, (lo, hi)), conv in ONNX_OPS.items():
        if d == domain and o == op_type and lo <= opset <= hi:
            return conv
    return None


def supported_onnx_ops() -> list[tuple[str, str]]:
    """(op_type, "lo-hi") for every registered converter, sorted by op: the README's support table."""
    rows = [(o if not d else f"{d}.{o}", f"{lo}-{hi}") for d, o, (lo, hi) in ONNX_OPS]
    return sorted(rows)


def supported_onnx_ops_markdown() -> str:
    """The support table as Markdown (ONNX op, opsets, what it becomes in the IR), from the registry."""
    lines = ["| ONNX op | opsets | becomes |", "|---|---|---|"]
    for (d, o, (lo, hi)), conv in sorted(ONNX_OPS.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        para = (conv.fn.__doc__ or "").strip().split("\n\n")[0]
        doc = " ".join(ln.strip() for ln in para.splitlines()).replace("|", "\\|")
        name = o if not d else f"{o} (fused, domain `{d}`)"
        lines.append(f"| {name} | {lo}-{hi} | {doc} |")
    return "\n".join(lines) + "\n"


# ---- helpers converters share ----------------------------------------------------------------------
def attrs(node: onnx.NodeProto) -> dict[str, Any]:
    """The node's attributes as Python values (bytes decoded, tensors as numpy arrays)."""
    out: dict[str, Any] = {}
    for a in node.attribute:
        v = onnx.helper.get_attribute_value(a)
        if isinstance(v, bytes):
            v = v.decode()
        elif isinstance(v, onnx.TensorProto):
            v = onnx.numpy_helper.to_array(v)
        out[a.name] = v
    return out


def act(v: Value | None, what: str = "input") -> Act:
    """`v` as an activation; a constant here means the node does not depend on the model input."""
    if isinstance(v, Act):
        return v
    raise NotConvertible(
        f"{what} must depend on the model input (got {'nothing' if v is None else 'a constant'})"
    )


def const(v: Value | None, what: str = "input") -> np.ndarray:
    """`v` as a constant array; an activation here would make the op data-dependent (not linear)."""
    if isinstance(v, np.ndarray):
        return v
    if v is None:
        raise NotConvertible(f"{what} is missing")
    raise NotConvertible(f"{what} depends on the model input; only constants are supported there")


def rank_with_batch(a: Act) -> int:
    return len(a.shape) + 1


# Every other module of this package holds converters (examples.py only the example builders): load
# them all, so a new op is one new module here and no list is kept by hand.
ONNX_OPS.load_package(__name__)

__all__ = [
    "MAX_OPSET",
    "MIN_OPSET",
    "ONNX_OPS",
    "Act",
    "BuildContext",
    "Converter",
    "NotConvertible",
    "Value",
    "act",
    "attrs",
    "const",
    "converter",
    "find_converter",
    "supported_onnx_ops",
    "supported_onnx_ops_markdown",
]
