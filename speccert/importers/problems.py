"""Unsupported-node reports: the reasons products of activations get, and one line per kind of node.

A real model refused for a product repeats it in every block (a ViT has two attention products per
layer, EfficientNet one squeeze-excitation gate per block), so the report groups nodes of the same op
and reason into one entry: ("Mul ×16", "first, second, third and 13 more", reason).
"""

from __future__ import annotations

from speccert.errors import SHOWN, Problem, group_problems

__all__ = [
    "ATTENTION",
    "PRODUCT",
    "SHOWN",
    "SQUEEZE_EXCITATION",
    "Problem",
    "group_problems",
    "product_reason",
]

PRODUCT = "product of two input-dependent tensors: no global Lipschitz bound"
SQUEEZE_EXCITATION = (
    "squeeze-excitation gating (x * gate(x), a product of two input-dependent tensors): "
    "no global Lipschitz bound"
)
ATTENTION = "attention (q k^T, attn v: products of two input-dependent tensors): no global Lipschitz bound"


def product_reason(a: tuple[int, ...], b: tuple[int, ...]) -> str:
    """The reason for refusing a * b of two activations of shapes `a`, `b` (without the batch axis):
    a per-channel gate [C, 1, ..., 1] times a feature map is squeeze-excitation."""

    def gate(s: tuple[int, ...], t: tuple[int, ...]) -> bool:
        return (
            len(s) == len(t) >= 2
            and s[0] == t[0]
            and all(d == 1 for d in s[1:])
            and any(d > 1 for d in t[1:])
        )

    return SQUEEZE_EXCITATION if gate(a, b) or gate(b, a) else PRODUCT
