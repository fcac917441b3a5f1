"""Merges of IR nodes that exporters write apart, shared by the ONNX and ATen importers: a MatMul's
bias Add (Linear then a shift-only Affine -> one Linear) and chains of Mul/Add by constants, e.g.
`(x - mean) / std` (Affine then Affine -> one Affine). Each keeps the file's function exactly (a bias
merge that would round a constant is skipped)."""

from __future__ import annotations

import torch

from speccert.ir.graph import INPUT, Node
from speccert.ir.ops import Affine, Linear


def merge_bias(nodes: list[Node], output: str) -> list[Node]:
    """Linear followed only by a shift-only Affine of its outputs (MatMul + Add) -> one Linear."""
    out = list(nodes)
    for aff in list(out):
        if not isinstance(aff.op, Affine) or aff.inputs[0] == INPUT:
            continue
        prev = next((n for n in out if n.name == aff.inputs[0]), None)
        if prev is None or not isinstance(prev.op, Linear) or prev.name == output:
            continue
        if sum(prev.name in n.inputs for n in out) != 1 or not bool((aff.op.scale == 1).all()):
            continue
        m = prev.op.weight.shape[0]
        shift = aff.op.shift
        if shift.dim() > 1 or shift.numel() not in (1, m):
            continue
        w = prev.op.weight
        exact = (
            prev.op.bias if prev.op.bias is not None else torch.zeros(m)
        ).double() + shift.double().expand(m)
        bias = exact.to(w.dtype)
        if not torch.equal(bias.double(), exact):
            continue  # b + c is not a float32 number: fold_linear adds it in float64 when certifying
        merged = Node(aff.name, Linear(weight=w, bias=bias.detach().clone()), prev.inputs, aff.shape)
        out = [merged if n is aff else n for n in out if n is not prev]
    return out


def merge_affine(nodes: list[Node], output: str) -> list[Node]:
    """Affine followed only by an Affine (Mul then Add by constants) -> one Affine:
    s2 (s1 x + t1) + t2 = (s1 s2) x + (s2 t1 + t2)."""
    out = list(nodes)
    changed = True
    while changed:
        changed = False
        for second in out:
            if not isinstance(second.op, Affine) or second.inputs[0] == INPUT:
                continue
            first = next((n for n in out if n.name == second.inputs[0]), None)
            if first is None or not isinstance(first.op, Affine) or first.name == output:
                continue
            if sum(first.name in n.inputs for n in out) != 1:
                continue
            s1, t1, s2, t2 = first.op.scale, first.op.shift, second.op.scale, second.op.shift
            merged = Node(
                second.name,
                Affine(scale=(s1 * s2).detach().clone(), shift=(s2 * t1 + t2).detach().clone()),
                first.inputs,
                second.shape,
            )
            out = [merged if n is second else n for n in out if n is not first]
            changed = True
            break
    return out


__all__ = ["merge_affine", "merge_bias"]
