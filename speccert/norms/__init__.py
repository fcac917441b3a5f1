"""Per-layer spectral norms: a bracket [lower, upper] for every linear operator of a graph.

CONTRACT (used by speccert.bounds): `layer_norms(graph, method="auto", device="cpu")` runs on
`fold_linear(graph)` and returns one `LayerNorm` per linear node of the *folded* graph, keyed by node
name, whose `upper` is a proven `UpperBound` on the node's L2 operator norm (linear part only).

    >>> from speccert.norms import layer_norms
    >>> norms = layer_norms(graph)                        # doctest: +SKIP
    >>> [(n.name, n.lower.value, n.upper.value) for n in norms]  # doctest: +SKIP

Methods live one per file (dense, power, fft, gram, fantastic4, lmt, miyato, closed_form,
nonnegative) in the `METHODS` registry; `auto` (speccert.norms.auto) takes the tightest proven upper
bound among the applicable ones and a warm-started power iteration for the lower bound.
"""

from __future__ import annotations

from speccert.norms.auto import AUTO, LayerNorm, layer_norms, linear_layers
from speccert.norms.method import METHODS, NormContext, NormMethod, load_methods, register_method
from speccert.norms.result import Estimate, LowerBound, NormResult, UpperBound


def method_names() -> list[str]:
    """`auto` followed by every registered method: the choices of `--method`."""
    return [AUTO, *load_methods().keys()]


__all__ = [
    "AUTO",
    "METHODS",
    "Estimate",
    "LayerNorm",
    "LowerBound",
    "NormContext",
    "NormMethod",
    "NormResult",
    "UpperBound",
    "layer_norms",
    "linear_layers",
    "load_methods",
    "method_names",
    "register_method",
]
