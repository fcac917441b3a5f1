"""Attention found before conversion, so a transformer is refused in one line that names it.

Converting a ViT node by node reports whatever fails first: the reshape that moves the batch axis
(`qkv.reshape(B, N, 3, h, d).permute(2, 0, 3, 1, 4)`), an opset-9 `Shape` chain, or the products
themselves, among dozens of unrelated lines. Attention is recognised on the file's own graph instead:
a matrix product of two input-dependent tensors (q k^T, attn v) where one operand is computed from a
softmax of input-dependent values (the attention weights). Shape-only values (`Shape`, `Size`,
`sym_size`) are not input-dependent: they depend on the input's shape, not its values. Such products
have no global Lipschitz bound, so the whole model is refused with one entry: the products, counted.
"""

from __future__ import annotations

import onnx
import torch

from speccert.importers.problems import ATTENTION, Problem, group_problems

_ONNX_PRODUCTS = {"MatMul", "Einsum"}
_ONNX_SOFTMAX = {"Softmax", "LogSoftmax"}
_ONNX_SHAPE_ONLY = {"Shape", "Size"}


def onnx_attention(graph: onnx.GraphProto, input_name: str) -> list[Problem]:
    """Grouped problems for the attention products of an ONNX graph (empty when it has none)."""
    dependent = {input_name}
    after_softmax: set[str] = set()
    products: list[tuple[str, str, bool]] = []  # (op, node name, an operand comes from a softmax)
    for node in graph.node:
        ins = [i for i in node.input if i]
        if node.op_type in _ONNX_SHAPE_ONLY or not any(i in dependent for i in ins):
            continue
        outs = [o for o in node.output if o]
        dependent.update(outs)
        if node.op_type in _ONNX_SOFTMAX or any(i in after_softmax for i in ins):
            after_softmax.update(outs)
        if node.op_type in _ONNX_PRODUCTS and sum(i in dependent for i in ins) >= 2:
            label = node.name or (outs[0] if outs else node.op_type)
            products.append((node.op_type, label, any(i in after_softmax for i in ins)))
    return _attention(products)


_ATEN_PRODUCTS = {"aten.matmul.default", "aten.bmm.default", "aten.baddbmm.default", "aten.einsum.default"}
_ATEN_SDPA = "scaled_dot_product"  # every fused attention kernel (math, flash, efficient, cudnn)
_ATEN_SOFTMAX = {"aten.softmax.int", "aten._softmax.default", "aten._safe_softmax.default"}
_ATEN_SHAPE_ONLY = {"aten.sym_size.int", "aten.sym_numel.default", "aten.sym_stride.int"}


def aten_attention(ep: torch.export.ExportedProgram) -> list[Problem]:
    """Grouped problems for the attention of an exported program: fused scaled-dot-product attention
    calls, and products of two input-dependent tensors one of which comes from a softmax."""
    users = {s.arg.name for s in ep.graph_signature.input_specs if s.kind.name == "USER_INPUT"}
    dependent = {n for n in ep.graph.nodes if n.op == "placeholder" and n.name in users}
    after_softmax: set[torch.fx.Node] = set()
    products: list[tuple[str, str, bool]] = []
    for node in ep.graph.nodes:
        if node.op != "call_function":
            continue
        name = str(node.target)
        ins = node.all_input_nodes
        if name in _ATEN_SHAPE_ONLY or not any(i in dependent for i in ins):
            continue
        dependent.add(node)
        if name in _ATEN_SOFTMAX or any(i in after_softmax for i in ins):
            after_softmax.add(node)
        if _ATEN_SDPA in name:
            products.append((name, node.name, True))
        elif name in _ATEN_PRODUCTS and sum(i in dependent for i in ins) >= 2:
            products.append((name, node.name, any(i in after_softmax for i in ins)))
    return _attention(products)


def _attention(products: list[tuple[str, str, bool]]) -> list[Problem]:
    """Every product, once one of them multiplies softmax weights: that is attention; else none."""
    if not any(weighted for _, _, weighted in products):
        return []
    return group_problems([(op, name, ATTENTION) for op, name, _ in products])


__all__ = ["aten_attention", "onnx_attention"]
