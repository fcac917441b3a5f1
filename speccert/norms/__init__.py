"""Per-layer spectral norms: a bracket [lower, upper] for every linear operator of a graph.

CONTRACT (used by speccert.bounds): `layer_norms(graph, method="auto", device="cpu")` runs on
`fold_linear(graph)` and returns one `LayerNorm` per linear node of the *folded* graph, keyed by node
name, whose `upper` is a proven `UpperBound` on the node's L2 operator norm (linear part only).

    >>> from speccert.norms import layer_norms
    >>> norms = layer_norms(graph)                        # doctest: +SKIP
    >>> [(n.name, n.lower.value, n.upper.value) for n in norms]  # doctest: +SKIP

Layout, bottom to top (tests/test_norms_layering.py checks it):
- base: `result` (UpperBound / LowerBound / Estimate), `rounding` (floating-point error bounds), `layer`
  (the linear part of a node as an operator), `layer_norm` (`LayerNorm`, one layer's bracket);
- kernels, the mathematics, which know no method: `torus` (frequency blocks of a circular conv),
  `gram_chain` (Gram iteration), `krylov` (power iteration, Lanczos, the float64 lower-bound check),
  `explicit` (explicit matrix and SVD), `psd` (Cholesky certificates), `conv_gram` (tap-assembled Gram
  matrices), `kernel_shapes` (reshaped and polyphase kernels);
- `method`: the contract, the `METHODS` registry and `AutoRole`;
- `methods/`: one thin module per method, loaded by the registry itself; none imports another;
- `auto`: `layer_norms` and the `auto` strategy, built from the roles the methods declare;
- `catalog`: the methods' names and summaries without importing torch (CLI help), and the generated
  docs table.
"""

from __future__ import annotations

from speccert.norms.auto import AUTO, layer_norms, linear_layers
from speccert.norms.layer_norm import LayerNorm
from speccert.norms.method import (
    METHODS,
    AutoRole,
    NormContext,
    NormMethod,
    Refusal,
    load_methods,
    register_method,
)
from speccert.norms.result import Estimate, LowerBound, NormResult, UpperBound


def method_names() -> list[str]:
    """`auto` followed by every registered method, sorted: the choices of `--method`."""
    return [AUTO, *sorted(load_methods().keys())]


__all__ = [
    "AUTO",
    "METHODS",
    "AutoRole",
    "Estimate",
    "LayerNorm",
    "LowerBound",
    "NormContext",
    "NormMethod",
    "NormResult",
    "Refusal",
    "UpperBound",
    "layer_norms",
    "linear_layers",
    "load_methods",
    "method_names",
    "register_method",
]
