"""ONNX nodes evaluated outside the IR: constant folding and the functions behind `Opaque` nodes.

A node whose inputs are all constants is folded with onnx's numpy reference evaluator (`fold`); an
unsupported node over activations still runs, through a torch function or the reference evaluator
(`opaque_fn`), so `inspect` can infer shapes and the graph can be evaluated. Each node runs alone in a
one-node model importing the original model's opset (`one_node_model`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
import torch

from speccert.importers.onnx_ops import Act, NotConvertible, Value
from speccert.importers.onnx_ops.shape_ops import BATCH

# Ops that may see the batch sentinel in folded shape tensors without computing with it.
_SHAPE_SAFE = {"Gather", "Concat", "Unsqueeze", "Squeeze", "Slice", "Cast", "Identity", "Reshape", "Flatten"}

# Unsupported ops that still run in torch (so inspect can infer shapes and the graph can be evaluated).
_TORCH_FNS: dict[str, Callable[..., torch.Tensor]] = {
    "Sign": torch.sign,
    "Abs": torch.abs,
    "Neg": torch.neg,
    "Exp": torch.exp,
    "Log": torch.log,
    "Sqrt": torch.sqrt,
    "Floor": torch.floor,
    "Ceil": torch.ceil,
    "Round": torch.round,
    "Mul": torch.mul,
    "MatMul": torch.matmul,
    "Div": torch.div,
    "Reciprocal": torch.reciprocal,
    "Sin": torch.sin,
    "Cos": torch.cos,
}


def one_node_model(node: onnx.NodeProto, feeds: dict[str, np.ndarray], opset: int) -> onnx.ModelProto:
    """`node` alone in a model importing the original model's opset: the reference evaluator picks
    each op's kernel from the model's opset imports (a bare node would run with the newest kernel, so
    opset-9 `Unsqueeze(axes=...)` would fail under the opset-13 signature)."""
    ins = [
        onnx.helper.make_tensor_value_info(n, onnx.helper.np_dtype_to_tensor_dtype(np.asarray(v).dtype), None)
        for n, v in feeds.items()
    ]
    outs = [onnx.helper.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None) for o in node.output if o]
    g = onnx.helper.make_graph([node], "fold", ins, outs)
    return onnx.helper.make_model(g, opset_imports=[onnx.helper.make_opsetid("", opset)])


def fold(node: onnx.NodeProto, inputs: list[Value | None], opset: int) -> list[Value | None]:
    """Evaluate a node over constants with onnx's reference (numpy) evaluator."""
    import onnx.reference

    if node.op_type == "Expand" and len(inputs) == 2 and isinstance(inputs[1], np.ndarray):
        # A constant broadcast to the batch size (a ViT's class token): size 1 broadcasts the same way.
        inputs = [inputs[0], np.where(inputs[1] == BATCH, 1, inputs[1])]
    if (
        any(isinstance(v, np.ndarray) and (v.dtype.kind in "iu") and (v == BATCH).any() for v in inputs)
        and node.op_type not in _SHAPE_SAFE
    ):
        raise NotConvertible("computes with the symbolic batch size")
    feeds = {n: v for n, v in zip(node.input, inputs, strict=False) if n and isinstance(v, np.ndarray)}
    try:
        ev = onnx.reference.ReferenceEvaluator(one_node_model(node, feeds, opset))
        outs = ev.run(None, feeds)
    except Exception as exc:
        raise NotConvertible(f"cannot fold this constant expression: {str(exc).splitlines()[0]}") from None
    return [np.asarray(o) for o in outs]


def opaque_fn(
    node: onnx.NodeProto, inputs: list[Value | None], opset: int, index: int
) -> Callable[..., torch.Tensor] | None:
    """A function of the activation inputs computing output `index` of `node` (constants bound)."""
    torch_fn = _TORCH_FNS.get(node.op_type) if index == 0 and node.domain in ("", "ai.onnx") else None
    consts = {i: torch.from_numpy(np.array(v)) for i, v in enumerate(inputs) if isinstance(v, np.ndarray)}

    def slots(xs: tuple[torch.Tensor, ...]) -> list[torch.Tensor | None]:
        it = iter(xs)
        return [next(it) if isinstance(v, Act) else consts.get(i) for i, v in enumerate(inputs)]

    if torch_fn is not None and not node.attribute:
        fn = torch_fn
        return lambda *xs: fn(*(s for s in slots(xs) if s is not None))
    try:
        import onnx.reference

        like = {
            n: v if isinstance(v, np.ndarray) else np.zeros(1, np.float32)  # activations are float
            for n, v in zip(node.input, inputs, strict=False)
            if n and v is not None
        }
        ev = onnx.reference.ReferenceEvaluator(one_node_model(node, like, opset))
    except Exception:
        return None

    def run(*xs: torch.Tensor) -> torch.Tensor:
        feeds = {
            n: s.detach().cpu().numpy()
            for n, s in zip(node.input, slots(xs), strict=False)
            if n and s is not None
        }
        # numpy's warnings from the reference kernel (Celu with alpha 0 divides by it) would precede the
        # refusal that names the node as a stray "warning:" line; what it computes is checked elsewhere
        with np.errstate(all="ignore"):
            results: list[Any] = list(ev.run(None, feeds))
        out = np.asarray(results[index])
        return torch.from_numpy(np.array(out)).to(device=xs[0].device, dtype=xs[0].dtype)

    return run


__all__ = ["fold", "one_node_model", "opaque_fn"]
