"""Per-layer spectral norms: a bracket [lower, upper] for every linear operator of a graph.

CONTRACT (used by speccert.bounds): `layer_norms(graph, method="auto", device="cpu")` runs on
`fold_linear(graph)` and returns one `LayerNorm` per linear node of the *folded* graph, keyed by node
name, whose `upper` is a proven `UpperBound` on the node's L2 operator norm (linear part only).

PLACEHOLDER implementation below (sound, loose Frobenius bounds); replaced by the method registry.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from speccert.ir import Graph, fold_linear
from speccert.ir.ops import Conv, Linear
from speccert.norms.result import Estimate, LowerBound, NormResult, UpperBound, round_up


@dataclass(frozen=True)
class LayerNorm:
    name: str
    op: str
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    upper: UpperBound
    lower: LowerBound | None = None
    others: dict[str, NormResult] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def gap(self) -> float | None:
        if self.lower is None or self.lower.value <= 0:
            return None
        return self.upper.value / self.lower.value - 1.0


def layer_norms(graph: Graph, method: str = "auto", device: str = "cpu") -> list[LayerNorm]:
    g = fold_linear(graph)
    out = []
    for node in g.nodes:
        if not isinstance(node.op, (Linear, Conv)):
            continue
        t0 = time.perf_counter()
        w = node.op.weight.detach().double()
        fro = float(torch.linalg.norm(w))
        k = math.prod(w.shape[2:]) if isinstance(node.op, Conv) else 1
        up = UpperBound(round_up(math.sqrt(k) * fro), "frobenius")
        out.append(LayerNorm(node.name, node.op.describe(), g.shape_of(node.inputs[0]), node.shape, up,
                             None, {"frobenius": Estimate(fro, "frobenius")}, time.perf_counter() - t0))
    return out


__all__ = ["Estimate", "LayerNorm", "LowerBound", "NormResult", "UpperBound", "layer_norms"]
